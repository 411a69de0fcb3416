"""DeepLab-v2 (dilated ResNet + ASPP), the network of the DA-segmentation papers (DiGA, PLCA, ProDA).

The head follows the DA papers' code: parallel 3x3 dilated convolutions from the backbone
output, *summed* (DeepLab-v2 sums its branches, v3 concatenates), then BatchNorm + ReLU give the
``feat_dim``-channel feature map the methods work on (prototypes, contrastive and association
losses); a dropout + 1x1 convolution classifies it.
"""

from __future__ import annotations

import torch
from torch import nn

from segadapt.errors import UsageError
from segadapt.models.backbones import BACKBONES, build_backbone
from segadapt.models.base import SegmentationNet, check_conv_head_spec, is_pos_int

# Per-backbone defaults: tiny runs on 16x32 maps and must stay small (the ASPP dominates its
# parameter count), the ResNets use the papers' settings.
_DEFAULTS = {
    "resnet": {"feat_dim": 256, "aspp_rates": [6, 12, 18, 24], "width": None},
    "tiny": {"feat_dim": 64, "aspp_rates": [1, 2, 3, 4], "width": 16},
    # CPU benchmarks' maps (16x16 crops, 30x23 images): tiny's rates; 320 input channels.
    "efficientnet_lite0": {"feat_dim": 128, "aspp_rates": [1, 2, 3, 4], "width": None},
}
KEYS = ("arch", "backbone", "feat_dim", "aspp_rates", "dropout", "pretrained", "freeze_bn", "width")


def resolve_spec(spec: dict) -> dict:
    """Validate a deeplabv2 spec (keys as in ``segadapt.models.build_model``) and fill defaults."""
    backbone = spec.get("backbone", "resnet101")
    if backbone not in BACKBONES:
        raise UsageError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    defaults = _DEFAULTS.get(backbone, _DEFAULTS["resnet"])
    out = {
        "arch": "deeplabv2",
        "backbone": backbone,
        "feat_dim": spec.get("feat_dim", defaults["feat_dim"]),
        "aspp_rates": spec.get("aspp_rates", defaults["aspp_rates"]),
        "dropout": spec.get("dropout", 0.1),
        "pretrained": spec.get("pretrained"),
        "freeze_bn": spec.get("freeze_bn", False),
        "width": spec.get("width", defaults["width"]),
    }
    check_conv_head_spec(out)
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


class DeepLabV2(SegmentationNet):
    """``forward(x) -> {"logits": [B, C, h, w], "feat": [B, feat_dim, h, w]}``, h, w = ceil(H/8), ceil(W/8)."""

    def __init__(self, backbone: nn.Module, num_classes: int, feat_dim: int = 256,
                 aspp_rates=(6, 12, 18, 24), dropout: float = 0.1, freeze_bn: bool = False):
        super().__init__()
        self.backbone = backbone
        cin = backbone.out_channels
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
        out = self.aspp[0](f)
        for conv in self.aspp[1:]:
            out = out + conv(f)
        return self.relu(self.aspp_bn(out))


def build(spec: dict, num_classes: int) -> DeepLabV2:
    """Build from a spec already resolved by :func:`resolve_spec`."""
    backbone = build_backbone(spec["backbone"], pretrained=spec["pretrained"], width=spec["width"])
    return DeepLabV2(backbone, num_classes, feat_dim=spec["feat_dim"], aspp_rates=spec["aspp_rates"],
                     dropout=spec["dropout"], freeze_bn=spec["freeze_bn"])
