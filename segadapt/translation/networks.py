"""Translator networks (CycleGAN, Zhu et al. 2017; multi-scale discriminator of pix2pixHD / DiGA).

Generator (Johnson et al.'s ResNet generator, CycleGAN's notation):
    c7s1-ngf, d(2 ngf), d(4 ngf), R(4 ngf) x n_res, u(2 ngf), u(ngf), c7s1-3 -> sigmoid (or (tanh + 1) / 2)
    c7s1-k: 7x7 conv stride 1 (reflection padding), instance norm, ReLU; d: 3x3 conv stride 2; R: residual
    block of two 3x3 convs; u: x2 upsampling. Images enter and leave as RGB in [0, 1] (the toolkit's
    convention); inside, the input is mapped to [-1, 1].
    ``residual`` (ours, off in CycleGAN): G(x) = sigmoid(logit(x) + c7s1-3([features, x])), the last conv
    zero-initialised and also fed the input image. G starts as the identity, so the cycle and edge terms
    hold from the first iteration and the adversarial term only has to learn the style; and the global,
    local-linear part of a style (colour cast, contrast, haze, blur) is one layer away from the input
    instead of having to pass the instance norms, which wash out exactly those image-wide statistics.
    Together they make a short CPU training usable (``output`` is then unused).
Discriminator: ``scales`` 70x70 PatchGANs (C64-C128-C256-C512, 4x4 convs, LeakyReLU 0.2, instance norm
    from the second layer) on the image average-pooled by 2 for each further scale; a list of patch maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from segadapt import schema
from segadapt.errors import UsageError
from segadapt.schema import setting

GENERATOR_OUTPUTS = ("sigmoid", "tanh")
UPSAMPLE_MODES = ("resize", "deconv")


# the config sections `generator` and `discriminator`; defaults are the paper-scale CycleGAN networks
@dataclass
class GeneratorConfig:
    ngf: int = setting(64, "channels of the first layer (CycleGAN: 64); x2 and x4 after the downsamplings", lo=1)
    n_res: int = setting(9, "residual blocks at 1/4 resolution (CycleGAN: 9)", lo=0)
    output: str = setting("sigmoid", "how the last conv maps to RGB in [0, 1]: sigmoid or (tanh + 1) / 2",
                          choices=GENERATOR_OUTPUTS)
    upsample: str = setting("resize", "resize (nearest x2 + conv) or deconv (CycleGAN's transposed conv)",
                            choices=UPSAMPLE_MODES)
    residual: bool = setting(False, "ours: G(x) = sigmoid(logit(x) + net([features, x])), starts as the identity")


@dataclass
class DiscriminatorConfig:
    ndf: int = setting(64, "channels of the first layer (CycleGAN: 64)", lo=1)
    layers: int = setting(3, "strided layers of each PatchGAN; 3 = 70x70 receptive field (CycleGAN)", lo=1)
    scales: int = setting(3, "PatchGANs on the image and its 2x, 4x ... average-pooled copies (DiGA: 3)", lo=1)


def _conv_in_relu(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    pad = k // 2
    return [nn.ReflectionPad2d(pad) if stride == 1 else nn.ZeroPad2d(pad), nn.Conv2d(cin, cout, k, stride),
            nn.InstanceNorm2d(cout), nn.ReLU(inplace=True)]


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim),
                                  nn.ReLU(inplace=True), nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3),
                                  nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.body(x)


class _Up(nn.Module):
    """x2 upsampling. 'resize' (nearest x2 then a 3x3 conv) avoids the checkerboard artefacts of
    CycleGAN's stride-2 transposed conv ('deconv'); DiGA's decoder also resizes then convolves."""

    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "resize":
            self.conv = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3))
        else:
            self.conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        self.post = nn.Sequential(nn.InstanceNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.mode == "resize":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.post(self.conv(x))


class Generator(nn.Module):
    """RGB [0, 1] -> RGB [0, 1], same size (H and W are padded to a multiple of 4 internally)."""

    def __init__(self, ngf: int = 64, n_res: int = 9, output: str = "sigmoid", upsample: str = "resize",
                 residual: bool = False):
        super().__init__()
        if output not in GENERATOR_OUTPUTS:
            raise UsageError(f"translator generator output must be sigmoid or tanh, got '{output}'")
        if upsample not in UPSAMPLE_MODES:
            raise UsageError(f"translator generator upsample must be resize or deconv, got '{upsample}'")
        if int(ngf) < 1 or int(n_res) < 0:
            raise UsageError(f"translator generator needs ngf >= 1 and n_res >= 0, got {ngf}, {n_res}")
        ngf, n_res = int(ngf), int(n_res)
        self.spec = {"ngf": ngf, "n_res": n_res, "output": output, "upsample": upsample, "residual": bool(residual)}
        layers = _conv_in_relu(3, ngf, 7)
        layers += _conv_in_relu(ngf, 2 * ngf, 3, stride=2) + _conv_in_relu(2 * ngf, 4 * ngf, 3, stride=2)
        layers += [ResBlock(4 * ngf) for _ in range(n_res)]
        layers += [_Up(4 * ngf, 2 * ngf, upsample), _Up(2 * ngf, ngf, upsample)]
        self.output, self.residual = output, bool(residual)
        self.net = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf + 3 * self.residual, 3, 7))
        if self.residual:
            nn.init.zeros_(self.head[1].weight)
            nn.init.zeros_(self.head[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4  # two stride-2 steps: pad so the decoder returns the input size
        z = x * 2 - 1
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph), mode="replicate")
        feat = self.net(z)
        out = self.head(torch.cat([feat, z], 1) if self.residual else feat)[..., :h, :w]
        if self.residual:
            eps = 1e-3  # logit(0) is -inf: pure black/white inputs start at 0.001 / 0.999
            return torch.sigmoid(torch.logit(x.float().clamp(eps, 1 - eps)) + out.float()).to(out.dtype)
        if self.output == "tanh":
            return (torch.tanh(out) + 1) / 2
        return torch.sigmoid(out)


class PatchDiscriminator(nn.Module):
    """PatchGAN: with ``layers`` = 3 each output value sees a 70x70 patch of its input."""

    def __init__(self, ndf: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        ch = ndf
        for i in range(1, layers + 1):
            out = ndf * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(ch, out, 4, stride, 1), nn.InstanceNorm2d(out), nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        seq += [nn.Conv2d(ch, 1, 4, 1, 1)]
        self.net = nn.Sequential(*seq)

    def forward(self, x):
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """``scales`` PatchGANs; scale k sees the image average-pooled k times by 2 (coarser scales judge
    larger regions: global colour and layout; the finest judges texture). Returns a list of maps."""

    def __init__(self, ndf: int = 64, layers: int = 3, scales: int = 3):
        super().__init__()
        if int(scales) < 1 or int(layers) < 1 or int(ndf) < 1:
            raise UsageError(f"translator discriminator needs ndf, layers, scales >= 1, got {ndf}, {layers}, {scales}")
        self.spec = {"ndf": int(ndf), "layers": int(layers), "scales": int(scales)}
        self.nets = nn.ModuleList(PatchDiscriminator(int(ndf), int(layers)) for _ in range(int(scales)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = x * 2 - 1
        outs = []
        for k, net in enumerate(self.nets):
            if k:
                z = F.avg_pool2d(z, 3, stride=2, padding=1, count_include_pad=False)
            outs.append(net(z))
        return outs


def build_generator(spec: dict | GeneratorConfig | None) -> Generator:
    """The generator of a config section or a checkpoint's ``generator_spec`` (checked as the section)."""
    return Generator(**schema.to_dict(schema.as_config(GeneratorConfig, spec, "generator")))


def build_discriminator(spec: dict | DiscriminatorConfig | None) -> MultiScaleDiscriminator:
    return MultiScaleDiscriminator(**schema.to_dict(schema.as_config(DiscriminatorConfig, spec, "discriminator")))
