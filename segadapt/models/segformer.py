"""SegFormer's Mix Transformer encoders (MiT-B0..B5, Xie et al. 2021) with two decoders:

- ``head: segformer``: the all-MLP decoder of SegFormer (per-level linear embeddings to
  ``feat_dim``, upsampled to 1/4, concatenated, fused by a 1x1 conv + BN + ReLU);
- ``head: daformer``: DAFormer's context-aware fusion (Hoyer et al. 2022): per-level linear
  embeddings to ``feat_dim``, upsampled to 1/4, concatenated, then an ASPP of a 1x1 conv and
  depthwise-separable 3x3 convs with dilations 6, 12, 18 (DAFormer's "dilations (1, 6, 12, 18)",
  dilation 1 being the 1x1 branch), concatenated and fused by a 3x3 conv + BN + ReLU.

The fused map is ``feat`` (the methods' feature space); dropout + a 1x1 conv classify it.
Outputs are at 1/4 resolution: ceil(H/4) x ceil(W/4).

Module and parameter names follow NVlabs' ``mix_transformer.py`` (``patch_embed1.proj``,
``block1.0.attn.q``, ``block1.0.attn.kv``, ``block1.0.attn.sr``, ``block1.0.mlp.dwconv.dwconv``,
``norm1`` ...) so the published ImageNet checkpoints ``mit_b0.pth`` ... ``mit_b5.pth`` load key
for key; mmseg-converted checkpoints (``layers.0.1.0.attn.attn.in_proj_weight`` ...) are mapped
back. Decoder modules mirror mmseg's names (``linear_c1.proj``, ``linear_fuse.conv``,
``embed_layers.0.proj``, ``fuse_layer.aspp_modules.1.depthwise_conv.conv`` ...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from segadapt.errors import DataError, UsageError
from segadapt.models.backbones import _looks_like_path, _read_state_file, _strip_prefixes, load_state_into
from segadapt.models.base import SegmentationNet, check_input_norm, register_arch, spec_choice

# Per-variant depths and widths as in the paper (Table 6) and NVlabs' code; all share heads
# [1, 2, 5, 8], MLP ratio 4, spatial-reduction ratios [8, 4, 2, 1].
VARIANTS = {
    "mit_b0": {"depths": (2, 2, 2, 2), "dims": (32, 64, 160, 256)},
    "mit_b1": {"depths": (2, 2, 2, 2), "dims": (64, 128, 320, 512)},
    "mit_b2": {"depths": (3, 4, 6, 3), "dims": (64, 128, 320, 512)},
    "mit_b3": {"depths": (3, 4, 18, 3), "dims": (64, 128, 320, 512)},
    "mit_b4": {"depths": (3, 8, 27, 3), "dims": (64, 128, 320, 512)},
    "mit_b5": {"depths": (3, 6, 40, 3), "dims": (64, 128, 320, 512)},
}
NUM_HEADS = (1, 2, 5, 8)
SR_RATIOS = (8, 4, 2, 1)
MLP_RATIO = 4
HEADS = ("segformer", "daformer")
DAFORMER_DILATIONS = (1, 6, 12, 18)

KEYS = ("arch", "backbone", "head", "feat_dim", "dropout", "drop_path", "pretrained", "freeze_bn", "input_norm")


# ---------------------------------------------------------------------------------------------
# Spec


def _default_feat_dim(backbone: str, head: str) -> int:
    # SegFormer's Cityscapes settings: C_e = 256 for B0, 768 for B1-B5; DAFormer uses 256 throughout.
    if head == "segformer" and backbone != "mit_b0":
        return 768
    return 256


def resolve_spec(spec: dict) -> dict:
    """Validate a segformer spec (keys: see ``segadapt.models.build_model``) and fill defaults."""
    backbone = spec_choice(spec, "backbone", "mit_b5", VARIANTS, "segformer")
    head = spec_choice(spec, "head", "segformer", HEADS, "segformer")
    out = {
        "arch": "segformer",
        "backbone": backbone,
        "head": head,
        "feat_dim": spec.get("feat_dim", _default_feat_dim(backbone, head)),
        "dropout": spec.get("dropout", 0.1),
        "drop_path": spec.get("drop_path", 0.1),
        "pretrained": spec.get("pretrained"),
        "freeze_bn": spec.get("freeze_bn", False),
        "input_norm": check_input_norm(spec.get("input_norm", "imagenet")),  # DAFormer's (mmseg) normalisation
    }
    fd = out["feat_dim"]
    if not (isinstance(fd, int) and not isinstance(fd, bool) and fd > 0):
        raise UsageError(f"feat_dim must be a positive integer, got {fd!r}")
    for key in ("dropout", "drop_path"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise UsageError(f"{key} must be a number in [0, 1), got {v!r}")
        out[key] = float(v)
    if not isinstance(out["freeze_bn"], bool):
        raise UsageError(f"freeze_bn must be true or false, got {out['freeze_bn']!r}")
    if out["freeze_bn"]:
        # Accepted as false so configs derived from the DeepLab ones (which set it) still work.
        raise UsageError("freeze_bn does not apply to MiT encoders (they use LayerNorm); set freeze_bn: false")
    pre = out["pretrained"]
    if pre is not None:
        if not (isinstance(pre, str) and pre):
            raise UsageError(f"pretrained must be null or a path to a MiT weights file, got {pre!r}")
        if not _looks_like_path(pre):
            raise UsageError(f"pretrained {pre!r} is not a file path; MiT weights come from a local file "
                             f"(NVlabs SegFormer {backbone}.pth, ImageNet-1k)")
    return out


# ---------------------------------------------------------------------------------------------
# Encoder


def _init_weights(m: nn.Module) -> None:
    # NVlabs' initialisation, so training from scratch behaves like the reference.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)  # MiT's eps (PyTorch's default is 1e-5)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples (scaled to keep the mean)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided conv (7x7/4 or 3x3/2) then LayerNorm; tokens out."""

    def __init__(self, cin: int, dim: int, patch: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride=stride, padding=patch // 2)
        self.norm = _layer_norm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class Attention(nn.Module):
    """Efficient self-attention: keys/values from a map shrunk by ``sr_ratio`` (strided conv + LN),
    cutting the cost from O(N^2) to O(N^2 / R^2)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = _layer_norm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = x.transpose(1, 2).reshape(b, c, h, w)
            r = self.sr_ratio
            if h < r or w < r:
                # Tiny inputs (e.g. a 0.5x test scale of a small image) would make the strided conv
                # fail; zero-pad up to one kernel. Never triggers at the papers' sizes.
                x = F.pad(x, (0, max(r - w, 0), 0, max(r - h, 0)))
            x = self.norm(self.sr(x).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        # Same maths as softmax(q k^T / sqrt(d)) v; the fused kernel saves memory on GPUs.
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Mix-FFN: the 3x3 depthwise conv between the two linears leaks position information, which
    is why MiT needs no positional encoding (and so takes any input size)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = _layer_norm(dim)
        self.attn = Attention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = _layer_norm(dim)
        self.mlp = Mlp(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixTransformer(nn.Module):
    """MiT encoder; ``forward(x)`` returns four maps at strides 4, 8, 16, 32 with ``stage_channels``."""

    def __init__(self, depths, dims, drop_path: float = 0.1):
        super().__init__()
        self.depths, self.stage_channels = tuple(depths), tuple(dims)
        self.out_channels = dims[-1]
        # Stochastic depth grows linearly with block index, from 0 to drop_path at the last block.
        n = sum(depths)
        rates = [drop_path * i / max(n - 1, 1) for i in range(n)]  # plain floats: buildable on the meta device
        cur, cin = 0, 3
        for i, (depth, dim) in enumerate(zip(depths, dims), start=1):
            patch, stride = (7, 4) if i == 1 else (3, 2)
            setattr(self, f"patch_embed{i}", OverlapPatchEmbed(cin, dim, patch, stride))
            setattr(self, f"block{i}", nn.ModuleList(
                Block(dim, NUM_HEADS[i - 1], SR_RATIOS[i - 1], rates[cur + j]) for j in range(depth)))
            setattr(self, f"norm{i}", _layer_norm(dim))
            cur, cin = cur + depth, dim
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = getattr(self, f"norm{i}")(x)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            outs.append(x)
        return outs


def build_mit(name: str, drop_path: float = 0.1) -> MixTransformer:
    if name not in VARIANTS:
        raise UsageError(f"unknown MiT variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return MixTransformer(VARIANTS[name]["depths"], VARIANTS[name]["dims"], drop_path=drop_path)


# ---------------------------------------------------------------------------------------------
# Decoders


class ConvModule(nn.Sequential):
    """conv (no bias: BN follows) + BN + ReLU, named like mmcv's ConvModule (conv, bn, activate)."""

    def __init__(self, cin: int, cout: int, k: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class SeparableConvModule(nn.Sequential):
    """Depthwise 3x3 (dilated) + BN + ReLU, then pointwise 1x1 + BN + ReLU (mmcv's
    DepthwiseSeparableConvModule with its default norm/act on both convs)."""

    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, 3, dilation=dilation, groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)


class LinearEmbed(nn.Module):
    """Per-pixel linear projection of a [B, C, H, W] map (SegFormer's "MLP"; a 1x1 conv with a
    Linear's weight layout so the names and shapes match mmseg's)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SegFormerHead(nn.Module):
    """All-MLP decoder: embed each level to ``dim``, upsample to 1/4, concat (c4, c3, c2, c1, as
    the reference), fuse with 1x1 conv + BN + ReLU -> ``dim`` channels."""

    def __init__(self, in_channels, dim: int):
        super().__init__()
        for i, cin in enumerate(in_channels, start=1):
            setattr(self, f"linear_c{i}", LinearEmbed(cin, dim))
        self.linear_fuse = ConvModule(4 * dim, dim, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        embedded = [_resize(getattr(self, f"linear_c{i}")(f), size) for i, f in enumerate(feats, start=1)]
        return self.linear_fuse(torch.cat(embedded[::-1], dim=1))


class ASPPFusion(nn.Module):
    """DAFormer's fusion: parallel 1x1 and depthwise-separable dilated 3x3 branches over the
    concatenated embeddings (context at several ranges without a large dense kernel), concatenated
    and fused by a 3x3 conv + BN + ReLU (the bottleneck)."""

    def __init__(self, cin: int, dim: int, dilations=DAFORMER_DILATIONS):
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvModule(cin, dim, 1) if d == 1 else SeparableConvModule(cin, dim, d) for d in dilations)
        self.bottleneck = ConvModule(len(dilations) * dim, dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([m(x) for m in self.aspp_modules], dim=1))


class DAFormerHead(nn.Module):
    """Embed each level to ``dim`` (linear, no norm/act), upsample to 1/4, concat (c1..c4, as the
    reference), then the ASPP fusion -> ``dim`` channels."""

    def __init__(self, in_channels, dim: int):
        super().__init__()
        self.embed_layers = nn.ModuleDict({str(i): LinearEmbed(cin, dim) for i, cin in enumerate(in_channels)})
        self.fuse_layer = ASPPFusion(len(in_channels) * dim, dim)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        embedded = [_resize(self.embed_layers[str(i)](f), size) for i, f in enumerate(feats)]
        return self.fuse_layer(torch.cat(embedded, dim=1))


# ---------------------------------------------------------------------------------------------
# Model


class SegFormer(SegmentationNet):
    """``forward(x) -> {"logits": [B, C, h, w], "feat": [B, feat_dim, h, w]}``, h, w = ceil(H/4), ceil(W/4)."""

    def __init__(self, backbone: MixTransformer, num_classes: int, head: str = "segformer", feat_dim: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        head_cls = {"segformer": SegFormerHead, "daformer": DAFormerHead}[head]
        self.decode_head = head_cls(backbone.stage_channels, feat_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(feat_dim, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)  # mmseg's cls_seg init: near-uniform start
        nn.init.zeros_(self.classifier.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``feat_dim`` fused decoder map before the classifier."""
        return self.decode_head(self.backbone(x))


@register_arch("segformer", keys=KEYS, resolve_spec=resolve_spec)
def build(spec: dict, num_classes: int) -> SegFormer:
    """Build from a spec already resolved by :func:`resolve_spec`."""
    encoder = build_mit(spec["backbone"], drop_path=spec["drop_path"])
    if spec["pretrained"] is not None:
        load_mit_pretrained(encoder, spec["pretrained"], spec["backbone"])
    return SegFormer(encoder, num_classes, head=spec["head"], feat_dim=spec["feat_dim"], dropout=spec["dropout"])


# ---------------------------------------------------------------------------------------------
# Pretrained weights


def load_mit_pretrained(encoder: MixTransformer, path: str, name: str = "MiT") -> None:
    """Load a MiT encoder file: NVlabs' ImageNet ``mit_bX.pth`` (a plain state_dict; ``head.*``,
    the ImageNet classifier, is ignored) or an mmseg-converted one (``layers.*`` keys), optionally
    wrapped in ``state_dict``/``model`` with ``module.``/``backbone.`` prefixes."""
    state = {_strip_prefixes(k): v for k, v in _read_state_file(path).items()}
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    if any(k.startswith("layers.") for k in state):
        state = mmseg_to_official(state)
    try:
        load_state_into(encoder, state, path)
    except DataError as exc:
        guess = guess_variant(state)
        hint = f" (the file looks like {guess}, the model is {name})" if guess and guess != name else ""
        raise DataError(f"{exc}{hint}") from None


def mmseg_to_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Invert mmseg's ``tools/model_converters/mit2mmseg.py``. Keys it does not know pass through
    unchanged so the loader reports them as unexpected."""
    out: dict[str, torch.Tensor] = {}
    ffn = {"0": "mlp.fc1", "1": "mlp.dwconv.dwconv", "4": "mlp.fc2"}
    for key, v in state.items():
        m = re.fullmatch(r"layers\.(\d+)\.([012])\.(.+)", key)
        if m is None:
            out[key] = v
            continue
        stage, part, rest = int(m[1]) + 1, m[2], m[3]
        if part == "0":  # patch embedding
            out[f"patch_embed{stage}.{rest.replace('projection.', 'proj.', 1)}"] = v
            continue
        if part == "2":  # stage norm
            out[f"norm{stage}.{rest}"] = v
            continue
        bm = re.fullmatch(r"(\d+)\.(.+)", rest)
        if bm is None:
            out[key] = v
            continue
        prefix, sub = f"block{stage}.{bm[1]}.", bm[2]
        if sub.startswith("attn.attn.in_proj_"):
            # mmseg fuses q and kv into nn.MultiheadAttention's in_proj: rows [q; k; v].
            kind, c = sub[len("attn.attn.in_proj_"):], v.shape[0] // 3
            out[f"{prefix}attn.q.{kind}"], out[f"{prefix}attn.kv.{kind}"] = v[:c], v[c:]
        elif sub.startswith("attn.attn.out_proj."):
            out[f"{prefix}attn.proj.{sub.rsplit('.', 1)[1]}"] = v
        elif (fm := re.fullmatch(r"ffn\.layers\.(\d+)\.(weight|bias)", sub)) and fm[1] in ffn:
            # mmseg's Mix-FFN uses 1x1 convs where NVlabs uses Linear: drop the 1x1 dims.
            if fm[1] in ("0", "4") and fm[2] == "weight":
                v = v.flatten(1)
            out[f"{prefix}{ffn[fm[1]]}.{fm[2]}"] = v
        else:  # norm1, norm2, attn.sr.*, attn.norm.*: same names
            out[prefix + sub] = v
    return out


def guess_variant(state: Mapping[str, torch.Tensor]) -> str | None:
    """The MiT variant whose depths and widths a (official-key) state_dict has, if any."""
    depths, dims = [0, 0, 0, 0], [0, 0, 0, 0]
    for key, v in state.items():
        if m := re.match(r"block([1-4])\.(\d+)\.", key):
            depths[int(m[1]) - 1] = max(depths[int(m[1]) - 1], int(m[2]) + 1)
        if m := re.fullmatch(r"patch_embed([1-4])\.proj\.weight", key):
            dims[int(m[1]) - 1] = v.shape[0]
    for name, var in VARIANTS.items():
        if tuple(depths) == var["depths"] and tuple(dims) == var["dims"]:
            return name
    return None
