"""Translator losses: CycleGAN's objective plus DiGA's semantic-edge term.

With G: S -> T, F: T -> S, discriminators D_T (target images vs G(x_s)) and D_S (source vs F(x_t)), each a
list of K PatchGAN maps (one per scale):
    L_lsgan(D(.), c)  = 1/K sum_k mean((D_k(.) - c)^2)                     least-squares GAN (Mao et al.)
    L_D               = 1/2 [L_lsgan(D(real), 1) + L_lsgan(D(fake), 0)]    each discriminator, fakes detached
    L_adv             = L_lsgan(D_T(G(x_s)), 1) + L_lsgan(D_S(F(x_t)), 1)
    L_cyc             = |F(G(x_s)) - x_s|_1 + |G(F(x_t)) - x_t|_1          cycle consistency (mean over pixels)
    L_idt             = |G(x_t) - x_t|_1 + |F(x_s) - x_s|_1                CycleGAN's optional identity term
    E(y)              = 1 where a 4-neighbour of the pixel has another label value (ignore counts as a value),
                        optionally dilated by r pixels
    L_edge (sobel)    = sum(E * |S~(G(x_s)) - S~(x_s)|) / sum(E)           S~ = Sobel gradient magnitude / its image mean
    L_edge (pixel)    = sum(E * |G(x_s) - x_s|) / (3 sum(E))               DiGA's published code
    L_G = w_adv L_adv + w_cyc L_cyc + w_idt L_idt + w_edge L_edge

DiGA's code (``seg_edge_loss`` in fy-vision/DiGA util/loss.py) marks semantic edges with |5x5 Laplacian
of the label| > 0.1 (a band about two pixels wide on each side of a class boundary) and asks the
translated image to keep the source *pixel values* on that band, averaging over all pixels. 'pixel'
reproduces that with our 4-neighbour mask (radius 1 gives DiGA's band width) and a mean over the band
only, so the weight does not depend on how many boundaries a crop has. 'sobel' (the default) asks for
the same *relative edge strength* instead: each Sobel map is divided by its own image mean, so a global
change of contrast, colour or sharpness (what a hazy, low-contrast target style needs) costs nothing,
while a label boundary that fades into its surroundings, or moves, does. The colours on the boundary
stay free to change with the style.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segadapt.errors import UsageError

EDGE_MODES = ("sobel", "pixel")


def lsgan_loss(preds: list[torch.Tensor] | torch.Tensor, target: float) -> torch.Tensor:
    """Mean over scales of mean((D_k - target)^2)."""
    if isinstance(preds, torch.Tensor):
        preds = [preds]
    return sum(((p.float() - target) ** 2).mean() for p in preds) / len(preds)


def discriminator_loss(real_preds, fake_preds) -> torch.Tensor:
    """1/2 [L_lsgan(real, 1) + L_lsgan(fake, 0)] (CycleGAN halves it so D learns slower than G)."""
    return 0.5 * (lsgan_loss(real_preds, 1.0) + lsgan_loss(fake_preds, 0.0))


def cycle_loss(x: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """|x - F(G(x))|_1, mean over pixels and channels."""
    return (reconstructed.float() - x.float()).abs().mean()


def semantic_edge_mask(label: torch.Tensor, radius: int = 0) -> torch.Tensor:
    """(B, H, W) label -> (B, 1, H, W) float: 1 on pixels with a 4-neighbour of another value (both sides
    of every boundary, the ignore region included: its border is an object outline too), dilated by
    ``radius`` pixels (square)."""
    lab = label
    m = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
    dv = lab[:, 1:, :] != lab[:, :-1, :]
    m[:, 1:, :] |= dv
    m[:, :-1, :] |= dv
    dh = lab[:, :, 1:] != lab[:, :, :-1]
    m[:, :, 1:] |= dh
    m[:, :, :-1] |= dh
    out = m.unsqueeze(1).float()
    if radius > 0:
        out = F.max_pool2d(out, 2 * radius + 1, stride=1, padding=radius)
    return out


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Colour Sobel gradient magnitude sqrt(sum_c gx_c^2 + gy_c^2 + eps), (B, 1, H, W); replicate padding so
    the image border is no edge. Colour, not luminance: two classes of equal brightness stay apart."""
    b, c, h, w = x.shape
    k = torch.stack([_SOBEL_X, _SOBEL_X.t()]).unsqueeze(1).to(x.device, torch.float32)  # (2, 1, 3, 3)
    z = F.pad(x.float().reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    g = F.conv2d(z, k).reshape(b, c * 2, h, w)
    return (g.pow(2).sum(1, keepdim=True) + eps).sqrt()


def _relative(edges: torch.Tensor) -> torch.Tensor:
    """Edge map divided by its per-image mean: invariant to the image's overall contrast."""
    return edges / edges.mean((1, 2, 3), keepdim=True)


def semantic_edge_loss(translated: torch.Tensor, source: torch.Tensor, label: torch.Tensor, mode: str = "sobel",
                       radius: int = 0) -> torch.Tensor:
    """Keep the source label's boundaries in the translated image (see the module docstring); 0 when
    the crop has no boundary."""
    mask = semantic_edge_mask(label, radius).to(translated.device)
    if mode == "sobel":
        diff = (_relative(sobel_magnitude(translated)) - _relative(sobel_magnitude(source.detach()))).abs()
    elif mode == "pixel":
        diff = (translated.float() - source.detach().float()).abs().mean(1, keepdim=True)
    else:
        raise UsageError(f"unknown semantic-edge mode '{mode}' ({', '.join(EDGE_MODES)})")
    total = mask.sum()
    if total == 0:
        return translated.sum() * 0.0
    return (diff * mask).sum() / total
