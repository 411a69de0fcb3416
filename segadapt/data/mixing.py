"""Image-level mixing used by the methods: Fourier domain adaptation, ClassMix and CDMix masks,
and the photometric augmentation of DiGA. All act on float RGB batches in [0, 1] (B, 3, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from segadapt.data.labelspace import IGNORE


FDA_WINDOWS = ("centre", "corner")


def fda(source: torch.Tensor, target: torch.Tensor, beta: float, window: str = "centre") -> torch.Tensor:
    """Fourier domain adaptation (Yang & Soatto, 2020): give ``source`` the low-frequency amplitude
    spectrum of ``target`` while keeping its phase; b = floor(min(H, W) * beta), beta = 0 (or b = 0)
    returns the source unchanged.

    ``window`` says which frequencies are swapped (u, v: signed frequencies of the un-shifted FFT):
    - ``centre``: |u| <= b and |v| <= b, the (2b+1)^2 square centred on the zero frequency of the
      shifted spectrum (FDA's numpy version, ``low_freq_mutate_np``, used by its demo). The result is
      clamped to [0, 1]: the demo writes it as an image, which clips it.
    - ``corner``: the four b x b corner blocks of the un-shifted spectrum, u, v in {0..b-1} U {-b..-1}
      (FDA's training code, ``low_freq_mutate`` in ``utils/__init__.py``, and DiGA's ``fourier_exchange``;
      not symmetric: +b is left out, -b is in). Not clamped, as there: the network sees the values as
      they come out of the inverse FFT (a little outside [0, 1] near strong edges).
    """
    if window not in FDA_WINDOWS:
        raise ValueError(f"fda window must be one of {FDA_WINDOWS}, got {window!r}")
    if beta <= 0:
        return source
    h, w = source.shape[-2:]
    b = int(math.floor(min(h, w) * beta))
    if b == 0:
        return source
    fs = torch.fft.fft2(source.float())
    ft = torch.fft.fft2(target.float())
    amp_s, pha_s, amp_t = fs.abs(), fs.angle(), ft.abs()
    # low frequencies sit in the four corners of the unshifted spectrum
    if window == "centre":
        rows = torch.cat([torch.arange(0, b + 1), torch.arange(h - b, h)]).unique()
        cols = torch.cat([torch.arange(0, b + 1), torch.arange(w - b, w)]).unique()
    else:
        rows = torch.cat([torch.arange(0, min(b, h)), torch.arange(max(h - b, 0), h)]).unique()
        cols = torch.cat([torch.arange(0, min(b, w)), torch.arange(max(w - b, 0), w)]).unique()
    sel = torch.zeros(h, w, dtype=torch.bool, device=source.device)
    sel[rows.to(source.device)[:, None], cols.to(source.device)[None, :]] = True
    amp = torch.where(sel, amp_t, amp_s)
    out = torch.fft.ifft2(torch.polar(amp, pha_s)).real
    if window == "centre":
        out = out.clamp_(0.0, 1.0)
    return out.to(source.dtype)


CLASS_MIX_RULES = ("diga", "dacs")


def class_mix_mask(label: torch.Tensor, generator: torch.Generator | None = None, rule: str = "diga") -> torch.Tensor:
    """ClassMix mask per image: 1 where the source label is one of a random half of its classes.

    label (B, H, W) int64 -> mask (B, 1, H, W) float. Both rules count the label values present in
    the image WITH the ignore value (when present), n of them, and draw a uniformly random subset
    without replacement (a prefix of ``torch.randperm``, the same law as the official ``random.sample``
    / ``np.random.choice(replace=False)``):
    - ``diga`` (DiGA's CDMix and self-training ClassMix): floor(n / 2) values, and the ignore region
      is then always added, so it is pasted (its label stays ignore);
    - ``dacs`` (DACS's ``trainUDA.py``): ceil(n / 2) values; the ignore region is pasted (as ignore)
      only when drawn. (DAFormer's ``get_class_masks`` takes the values of the whole batch; DACS's and
      ours those of each image.)"""
    if rule not in CLASS_MIX_RULES:
        raise ValueError(f"class-mix rule must be one of {CLASS_MIX_RULES}, got {rule!r}")
    masks = []
    for lab in label:
        values = lab.unique()
        n = values.numel()
        k = n // 2 if rule == "diga" else (n + 1) // 2
        chosen = values[torch.randperm(n, generator=generator)[:k].to(values.device)]
        m = torch.isin(lab, chosen)
        if rule == "diga":
            m = m | (lab == IGNORE)  # "maintaining source don't care region"
        masks.append(m)
    return torch.stack(masks).unsqueeze(1).float()


def mix(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mask * a + (1 - mask) * b, with mask (B, 1, H, W) broadcast over channels."""
    if a.dim() == 3:  # labels (B, H, W)
        return torch.where(mask[:, 0].bool(), a, b)
    return mask * a + (1 - mask) * b


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _per_sample(n: int, p: float, lo: float, hi: float, generator, device) -> torch.Tensor:
    """Per-image factors: uniform in [lo, hi] where a coin with probability p came up, else neutral (NaN)."""
    on = torch.rand(n, generator=generator) < p
    f = torch.empty(n).uniform_(lo, hi, generator=generator)
    return torch.where(on, f, torch.full_like(f, float("nan"))).to(device).view(n, 1, 1, 1)


def _apply(factor: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(factor), old, new)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma plane of YIQ by ``shift`` turns: a batched stand-in for an HSV hue shift."""
    m = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
    yiq = torch.einsum("ij,bjhw->bihw", m, x)
    theta = torch.nan_to_num(shift, 0.0).view(-1) * 2 * math.pi
    c, s = theta.cos().view(-1, 1, 1), theta.sin().view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), yiq)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (NaN = no blur), as one grouped convolution."""
    b, ch, h, w = x.shape
    sig = torch.nan_to_num(sigma.view(-1), 0.0)
    radius = int(math.ceil(2 * float(sig.max()))) if b else 0
    if radius == 0:
        return x
    r = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(r[None] ** 2) / (2 * sig.clamp(min=1e-3)[:, None] ** 2))
    k = torch.where(sig[:, None] > 0, k, (r[None] == 0).to(x.dtype))  # identity kernel where no blur
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * ch, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b * ch, 1, 1, -1), groups=b * ch)
    y = F.conv2d(y, k.view(b * ch, 1, -1, 1), groups=b * ch)
    return y.view(b, ch, h, w)


def _sharpen(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL/torchvision sharpness: blend with a 3x3-smoothed image (borders kept)."""
    b, ch, h, w = x.shape
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device, dtype=x.dtype) / 13
    smooth = F.conv2d(x.reshape(b * ch, 1, h, w), k.view(1, 1, 3, 3)).view(b, ch, h - 2, w - 2)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    f = torch.nan_to_num(factor, 1.0)
    return (degenerate + f * (x - degenerate)).clamp(0, 1)


def photometric(x: torch.Tensor, generator: torch.Generator | None = None, jitter=(0.4, 0.4, 0.2, 0.1),
                p_jitter: float = 0.5, p_gray: float = 0.3, p_blur: float = 0.8, p_sharp: float = 0.3,
                blend: float = 1.0) -> torch.Tensor:
    """DiGA's photometric view ``blend * aug(x) + (1 - blend) * x`` (b = 0.4 in the paper), each image
    drawing its own parameters: colour jitter (brightness, contrast, saturation, hue; applied in that
    fixed order) with p_jitter, grayscale p_gray, Gaussian blur p_blur (sigma in [0.1, 2.0]),
    sharpness (factor in [1, 2]) p_sharp. Batched, so it costs a few convolutions on any device."""
    n, dev = x.shape[0], x.device
    br, co, sa, hu = jitter
    jit = torch.rand(n, generator=generator) < p_jitter
    a = x

    def factors(lo, hi):
        f = torch.empty(n).uniform_(lo, hi, generator=generator)
        return torch.where(jit, f, torch.full_like(f, float("nan"))).to(dev).view(n, 1, 1, 1)

    f = factors(max(0.0, 1 - br), 1 + br)
    a = _apply(f, (a * f).clamp(0, 1), a)
    f = factors(max(0.0, 1 - co), 1 + co)
    mean = _gray(a).mean((2, 3), keepdim=True)
    a = _apply(f, ((a - mean) * f + mean).clamp(0, 1), a)
    f = factors(max(0.0, 1 - sa), 1 + sa)
    g = _gray(a)
    a = _apply(f, ((a - g) * f + g).clamp(0, 1), a)
    f = factors(-hu, hu)
    a = _apply(f, _hue_shift(a, f).clamp(0, 1), a)
    gray = _per_sample(n, p_gray, 0, 1, generator, dev)
    a = _apply(gray, _gray(a).expand_as(a), a)
    sigma = _per_sample(n, p_blur, 0.1, 2.0, generator, dev)
    a = _gaussian_blur(a, sigma)
    sharp = _per_sample(n, p_sharp, 1.0, 2.0, generator, dev)
    a = _apply(sharp, _sharpen(a, sharp), a)
    return blend * a.clamp(0, 1) + (1 - blend) * x
