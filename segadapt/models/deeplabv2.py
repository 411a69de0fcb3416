"""DeepLab-v2 (dilated ResNet + ASPP), the network of the DA-segmentation papers (DiGA, PLCA, ProDA).

Two heads (``head``):

- ``aspp_sum`` (default): DeepLab-v2's own ASPP, parallel 3x3 dilated convolutions from the backbone
  output *summed* (v2 sums its branches, v3 concatenates); here followed by BatchNorm + ReLU to give the
  ``feat_dim``-channel map the methods work on, then dropout + a 1x1 convolution classify it. This is
  our light head for CPU runs, not the head of ProDA's or DiGA's code.
- ``proda``: the head of ProDA's and DiGA's ``deeplabv2`` (``Classifier_Module2``): a 1x1 and one 3x3
  branch per ``aspp_rates`` dilation (6, 12, 18, 24), each conv (with bias) + GroupNorm(32) + ReLU to
  ``feat_dim`` (256), concatenated (5 x 256), squeeze-and-excitation (global average pool, Linear to
  1/16, ReLU, Linear back, sigmoid, channel re-weighting), a 3x3 conv (with bias) to ``feat_dim`` +
  GroupNorm(32) (no ReLU), channel dropout (p = ``dropout``, 0.1), and a bias-free 1x1 classifier.
  ``feat`` is the map after that dropout, as the official head returns it (``out_dict['feat']``), so
  ``classify(feat)`` is the classifier alone; the two readings agree in eval mode. Initialised as the
  official code ends up doing: every conv N(0, 0.01) (the ResNet's final init loop overrides the head's
  Kaiming/0.001 inits), the fusion conv's bias 0, the branch biases and SE layers PyTorch's defaults.

``input_norm`` says how the network wants its input (see ``segadapt.models.base.INPUT_NORMS``):
``imagenet`` (default; torchvision weights), ``caffe`` (default of ``resnet101_caffe``: BGR 0..255 minus
the Caffe mean, what its init file was trained on), ``diga`` (that divided by 128, DiGA's loaders) or
``proda`` (RGB in [0, 1], ProDA's loaders).

``post_backbone_bn: true`` adds a BatchNorm (affine, trained with the head) on the backbone output before
the head: ProDA's ``bn_clr`` option (``bn_pretrain``), used with its SimCLR-distilled stages 2 and 3.
"""

from __future__ import annotations

import torch
from torch import nn

from segadapt.errors import UsageError
from segadapt.models.backbones import BACKBONES, _looks_like_path, build_backbone
from segadapt.models.base import (BACKBONE_INPUT_NORMS, SegmentationNet, check_conv_head_spec, check_input_norm,
                                  is_pos_int, register_arch, spec_choice)

# Per-backbone defaults: tiny runs on 16x32 maps and must stay small (the ASPP dominates its
# parameter count), the ResNets use the papers' settings.
_DEFAULTS = {
    "resnet": {"feat_dim": 256, "aspp_rates": [6, 12, 18, 24], "width": None},
    "tiny": {"feat_dim": 64, "aspp_rates": [1, 2, 3, 4], "width": 16},
    # CPU benchmarks' maps (16x16 crops, 30x23 images): tiny's rates; 320 input channels.
    "efficientnet_lite0": {"feat_dim": 128, "aspp_rates": [1, 2, 3, 4], "width": None},
}
KEYS = ("arch", "backbone", "head", "feat_dim", "aspp_rates", "dropout", "pretrained", "freeze_bn", "width",
        "input_norm", "post_backbone_bn")
HEADS = ("aspp_sum", "proda")
GN_GROUPS = 32  # GroupNorm groups of the proda head (official)
SE_REDUCTION = 16  # squeeze-and-excitation reduction of the proda head (official)


def resolve_spec(spec: dict) -> dict:
    """Validate a deeplabv2 spec (keys as in ``segadapt.models.build_model``) and fill defaults."""
    backbone = spec_choice(spec, "backbone", "resnet101", BACKBONES)
    defaults = _DEFAULTS.get(backbone, _DEFAULTS["resnet"])
    head = spec_choice(spec, "head", "aspp_sum", HEADS, "deeplabv2")
    out = {
        "arch": "deeplabv2",
        "backbone": backbone,
        "head": head,
        "feat_dim": spec.get("feat_dim", defaults["feat_dim"]),
        "aspp_rates": spec.get("aspp_rates", defaults["aspp_rates"]),
        "dropout": spec.get("dropout", 0.1),
        "pretrained": spec.get("pretrained"),
        "freeze_bn": spec.get("freeze_bn", False),
        "width": spec.get("width", defaults["width"]),
        "input_norm": check_input_norm(spec.get("input_norm", BACKBONE_INPUT_NORMS.get(backbone, "imagenet"))),
        "post_backbone_bn": spec.get("post_backbone_bn", False),
    }
    if not isinstance(out["post_backbone_bn"], bool):
        raise UsageError(f"post_backbone_bn must be true or false, got {out['post_backbone_bn']!r}")
    check_conv_head_spec(out)
    if head == "proda" and out["feat_dim"] % GN_GROUPS:
        raise UsageError(f"head 'proda' needs feat_dim divisible by its {GN_GROUPS} GroupNorm groups, "
                         f"got {out['feat_dim']}")
    if backbone == "resnet101_caffe" and out["pretrained"] is not None and not _looks_like_path(out["pretrained"]):
        raise UsageError(f"backbone 'resnet101_caffe' loads a local file (AdaptSegNet's "
                         f"DeepLab_resnet_pretrained_init-f81d91e8.pth), not {out['pretrained']!r}")
    if backbone == "tiny":
        if not is_pos_int(out["width"]):
            raise UsageError(f"width must be a positive integer, got {out['width']!r}")
        if out["pretrained"] is not None:
            raise UsageError("backbone 'tiny' has no pretrained weights; set pretrained: null")
        if out["freeze_bn"]:
            # freeze_bn keeps *pretrained* statistics; frozen random-init BN would make tiny's
            # zero-initialised residual branches stay dead.
            raise UsageError("freeze_bn needs a pretrained backbone; 'tiny' has none")
    elif out["width"] is not None:
        raise UsageError(f"width applies to backbone 'tiny' only, not {backbone!r}")
    return out


class SqueezeExcite(nn.Module):
    """Channel re-weighting by a gate computed from the global average (Hu et al.): fc1 -> ReLU -> fc2 -> sigmoid."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * gate[:, :, None, None]


class ProDAHead(nn.Module):
    """ProDA/DiGA's ``Classifier_Module2`` up to (not including) its dropout and classifier; see the module doc."""

    def __init__(self, cin: int, dim: int = 256, rates=(6, 12, 18, 24)):
        super().__init__()
        convs = [nn.Conv2d(cin, dim, 1)] + [nn.Conv2d(cin, dim, 3, padding=r, dilation=r) for r in rates]
        self.branches = nn.ModuleList(
            nn.Sequential(conv, nn.GroupNorm(GN_GROUPS, dim), nn.ReLU(inplace=True)) for conv in convs)
        width = dim * len(convs)
        self.se = SqueezeExcite(width)
        self.fuse = nn.Conv2d(width, dim, 3, padding=1)
        self.fuse_norm = nn.GroupNorm(GN_GROUPS, dim)
        for conv in [*convs, self.fuse]:
            nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.fuse_norm(self.fuse(self.se(out)))


class DeepLabV2(SegmentationNet):
    """``forward(x) -> {"logits": [B, C, h, w], "feat": [B, feat_dim, h, w]}``, h, w = ceil(H/8), ceil(W/8)."""

    def __init__(self, backbone: nn.Module, num_classes: int, feat_dim: int = 256,
                 aspp_rates=(6, 12, 18, 24), dropout: float = 0.1, freeze_bn: bool = False, head: str = "aspp_sum",
                 post_backbone_bn: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head_kind = head
        cin = backbone.out_channels
        # outside self.backbone: it belongs to the head's parameter group and is never frozen (as bn_pretrain)
        self.post_backbone_bn = nn.BatchNorm2d(cin) if post_backbone_bn else None
        if head == "proda":
            self.head = ProDAHead(cin, feat_dim, aspp_rates)
            self.feat_dropout = nn.Dropout2d(dropout)  # inside features(): feat is the dropped-out map (official)
            self.dropout = nn.Identity()
            self.classifier = nn.Conv2d(feat_dim, num_classes, 1, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.01)
            self.set_freeze_bn(freeze_bn)
            return
        # bias=False: the BatchNorm after the sum makes conv biases redundant.
        self.aspp = nn.ModuleList(
            nn.Conv2d(cin, feat_dim, 3, padding=r, dilation=r, bias=False) for r in aspp_rates
        )
        self.aspp_bn = nn.BatchNorm2d(feat_dim)
        self.relu = nn.ReLU(inplace=True)
        # Channel dropout, as in ProDA/DiGA's head.
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(feat_dim, num_classes, 1)
        for conv in self.aspp:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        # DeepLab's classifier init: small weights so initial predictions are near uniform.
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.set_freeze_bn(freeze_bn)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``feat_dim`` feature map before the classifier."""
        f = self.backbone(x)[-1]
        if self.post_backbone_bn is not None:
            f = self.post_backbone_bn(f)
        if self.head_kind == "proda":
            return self.feat_dropout(self.head(f))
        out = self.aspp[0](f)
        for conv in self.aspp[1:]:
            out = out + conv(f)
        return self.relu(self.aspp_bn(out))


@register_arch("deeplabv2", keys=KEYS, resolve_spec=resolve_spec)
def build(spec: dict, num_classes: int) -> DeepLabV2:
    """Build from a spec already resolved by :func:`resolve_spec`."""
    backbone = build_backbone(spec["backbone"], pretrained=spec["pretrained"], width=spec["width"])
    return DeepLabV2(backbone, num_classes, feat_dim=spec["feat_dim"], aspp_rates=spec["aspp_rates"],
                     dropout=spec["dropout"], freeze_bn=spec["freeze_bn"], head=spec["head"],
                     post_backbone_bn=spec["post_backbone_bn"])
