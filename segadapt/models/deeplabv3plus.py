"""DeepLab-v3+ (Chen et al. 2018) on a dilated torchvision ResNet (or EfficientNet-Lite0, ``efficientnet.py``).

- Encoder: ResNet-18/50/101 at output stride 8 (default: layer3/layer4 dilated 2/4, as DAFormer's
  DeepLab-v3+ baselines and our DeepLab-v2, so all CNN baselines see the same resolution) or 16
  (layer4 dilated 2: the paper's training setting, ~3x cheaper).
- ASPP on layer4: image pooling, a 1x1 conv and three dilated 3x3 convs (rates 6, 12, 18 at
  stride 16, doubled to 12, 24, 36 at stride 8 so they cover the same image area), 256 channels
  each, concatenated and projected by a 1x1 conv to 256.
- Decoder: layer1 (stride 4) reduced to 48 channels by a 1x1 conv, concatenated with the
  upsampled ASPP output, two 3x3 convs of ``feat_dim`` (256) -> ``feat``; dropout + 1x1 classifier.
  Every conv is followed by BN + ReLU. Outputs are at ceil(H/4) x ceil(W/4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segadapt.errors import UsageError
from segadapt.models.backbones import RESNETS, ResNetBackbone, _dilate_basic_layer, build_resnet, load_pretrained
from segadapt.models import efficientnet
from segadapt.models.base import (BACKBONE_INPUT_NORMS, SegmentationNet, check_conv_head_spec, check_input_norm,
                                  register_arch, spec_choice)

KEYS = ("arch", "backbone", "output_stride", "aspp_rates", "feat_dim", "dropout", "pretrained", "freeze_bn",
        "input_norm")
_RATES = {8: [12, 24, 36], 16: [6, 12, 18]}
ASPP_DIM = 256      # paper
LOW_LEVEL_DIM = 48  # paper: few channels so the low-level map does not outweigh the ASPP context


def resolve_spec(spec: dict) -> dict:
    """Validate a deeplabv3plus spec (keys: see ``segadapt.models.build_model``) and fill defaults."""
    backbone = spec_choice(spec, "backbone", "resnet101", RESNETS + efficientnet.NAMES, "deeplabv3plus")
    os_ = spec.get("output_stride", 8)
    if isinstance(os_, bool) or not isinstance(os_, int) or os_ not in _RATES:
        raise UsageError(f"output_stride must be 8 or 16, got {os_!r}")
    out = {
        "arch": "deeplabv3plus",
        "backbone": backbone,
        "output_stride": os_,
        "aspp_rates": spec.get("aspp_rates", list(_RATES[os_])),
        "feat_dim": spec.get("feat_dim", 256),
        "dropout": spec.get("dropout", 0.1),
        "pretrained": spec.get("pretrained"),
        "freeze_bn": spec.get("freeze_bn", False),
        # how the Segmenter normalises the input (base.INPUT_NORMS): what the backbone's weights expect
        "input_norm": check_input_norm(spec.get("input_norm", BACKBONE_INPUT_NORMS.get(backbone, "imagenet"))),
    }
    check_conv_head_spec(out)
    return out


def build_resnet_os(name: str, output_stride: int) -> ResNetBackbone:
    """Randomly initialised ResNet at output stride 8 (``backbones.build_resnet``) or 16 (only
    layer4 dilated, by 2). Same parameter names and shapes either way, so weights load into both."""
    if output_stride == 8:
        return build_resnet(name)
    import torchvision  # here, not at the top: only a torchvision ResNet needs it

    ctor = getattr(torchvision.models, name)
    if name == "resnet18":
        net = ctor(weights=None)
        _dilate_basic_layer(net.layer4, 2)
    else:
        net = ctor(weights=None, replace_stride_with_dilation=[False, False, True])
    return ResNetBackbone(net)


def _conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    def __init__(self, cin: int, rates, dim: int = ASPP_DIM):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, dim, 1)] + [_conv_bn_relu(cin, dim, 3, r) for r in rates])
        # Image pooling without BatchNorm: BN over B pooled vectors fails at batch 1 and is noise at
        # batch 2, the DA papers' batch sizes. A biased conv + ReLU keeps the branch's role.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, dim, 1), nn.ReLU(inplace=True))
        self.project = _conv_bn_relu((len(rates) + 2) * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])  # bilinear upsampling of a 1x1 map = broadcast
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3Plus(SegmentationNet):
    """``forward(x) -> {"logits": [B, C, h, w], "feat": [B, feat_dim, h, w]}``, h, w = ceil(H/4), ceil(W/4)."""

    def __init__(self, backbone: ResNetBackbone, num_classes: int, aspp_rates=(12, 24, 36), feat_dim: int = 256,
                 dropout: float = 0.1, freeze_bn: bool = False):
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, aspp_rates)
        self.low_level = _conv_bn_relu(backbone.stage_channels[0], LOW_LEVEL_DIM, 1)
        self.decoder = nn.Sequential(_conv_bn_relu(ASPP_DIM + LOW_LEVEL_DIM, feat_dim, 3),
                                     _conv_bn_relu(feat_dim, feat_dim, 3))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(feat_dim, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)  # near-uniform initial predictions
        nn.init.zeros_(self.classifier.bias)
        self.set_freeze_bn(freeze_bn)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``feat_dim`` decoder map before the classifier, at stride 4."""
        stages = self.backbone(x)
        low = self.low_level(stages[0])
        ctx = F.interpolate(self.aspp(stages[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(torch.cat([ctx, low], dim=1))


@register_arch("deeplabv3plus", keys=KEYS, resolve_spec=resolve_spec)
def build(spec: dict, num_classes: int) -> DeepLabV3Plus:
    """Build from a spec already resolved by :func:`resolve_spec`."""
    if spec["backbone"] in efficientnet.NAMES:  # low-level map: stride-4 stage 2 (24 ch)
        backbone = efficientnet.build_backbone(spec["backbone"], spec["pretrained"], spec["output_stride"])
    else:
        backbone = build_resnet_os(spec["backbone"], spec["output_stride"])
        if spec["pretrained"] is not None:
            load_pretrained(backbone, spec["backbone"], spec["pretrained"])
    return DeepLabV3Plus(backbone, num_classes, aspp_rates=spec["aspp_rates"], feat_dim=spec["feat_dim"],
                         dropout=spec["dropout"], freeze_bn=spec["freeze_bn"])
