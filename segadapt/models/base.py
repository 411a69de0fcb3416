"""What every segmentation architecture shares: ``forward`` = ``classify(features(x))``, the
backbone/head parameter split, and optionally frozen backbone BatchNorm. An architecture sets
``self.backbone``, ``self.dropout`` and ``self.classifier`` and defines ``features``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from segadapt.errors import UsageError
from segadapt.registry import Registry, close_matches


@dataclass(frozen=True)
class Arch:
    """One architecture (``model.arch``): the spec keys it accepts, ``resolve_spec(spec)`` that checks them
    and fills in its defaults, and ``build(resolved_spec, num_classes)``."""
    keys: tuple[str, ...]
    resolve_spec: Callable[[dict], dict]
    build: Callable[[dict, int], nn.Module]


ARCHS: Registry[Arch] = Registry("model arch")


def register_arch(name: str, *, keys, resolve_spec: Callable[[dict], dict]):
    """Decorator of an architecture module's ``build``: ``@register_arch("deeplabv2", keys=KEYS,
    resolve_spec=resolve_spec)`` registers the architecture as ``name``."""
    def add(build):
        ARCHS.register(name)(Arch(tuple(keys), resolve_spec, build))
        return build
    return add


def is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


# How a network wants its input, from RGB in [0, 1]: x' = (x[channels] - mean) / std. The Caffe-converted
# DeepLab init was trained on BGR 0..255 minus the mean; DiGA feeds that divided by 128 (CityLoader), ProDA
# feeds RGB in [0, 1] as is; torchvision and mmseg (DAFormer) use the ImageNet mean/std.
_CAFFE_MEAN_BGR = (104.00698793 / 255, 116.66876762 / 255, 122.67891434 / 255)
INPUT_NORMS = {
    "imagenet": {"bgr": False, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "caffe": {"bgr": True, "mean": _CAFFE_MEAN_BGR, "std": (1 / 255,) * 3},
    "diga": {"bgr": True, "mean": _CAFFE_MEAN_BGR, "std": (128 / 255,) * 3},
    "proda": {"bgr": False, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)},
    "lite": {"bgr": False, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},  # EfficientNet-Lite's TF weights
}
#: the normalisation a backbone's pretrained weights were trained with, when it is not ImageNet's
BACKBONE_INPUT_NORMS = {"resnet101_caffe": "caffe", "efficientnet_lite0": "lite"}


def spec_choice(spec: dict, key: str, default: str, choices, arch: str | None = None) -> str:
    """``spec[key]`` (``default`` when absent), which must be one of ``choices`` (names, or a Registry):
    a one-line UsageError with the close matches otherwise."""
    value = spec.get(key, default)
    names = choices.names() if isinstance(choices, Registry) else list(choices)
    if value not in names:
        where = f" for arch '{arch}'" if arch else ""
        raise UsageError(f"unknown {key} {value!r}{where}{close_matches(value, names)}; choose one of "
                         f"{', '.join(names)}")
    return value


def check_input_norm(value) -> str:
    if value not in INPUT_NORMS:
        raise UsageError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {value!r}")
    return value


def check_conv_head_spec(out: dict) -> None:
    """Validates, in place, the keys the DeepLab heads share: feat_dim, aspp_rates (made ints),
    dropout (made float), freeze_bn and pretrained."""
    if not is_pos_int(out["feat_dim"]):
        raise UsageError(f"feat_dim must be a positive integer, got {out['feat_dim']!r}")
    rates = out["aspp_rates"]
    if not isinstance(rates, (list, tuple)) or not rates or not all(is_pos_int(r) for r in rates):
        raise UsageError(f"aspp_rates must be a non-empty list of positive integers, got {rates!r}")
    out["aspp_rates"] = [int(r) for r in rates]
    drop = out["dropout"]
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop < 1:
        raise UsageError(f"dropout must be a number in [0, 1), got {drop!r}")
    out["dropout"] = float(drop)
    if not isinstance(out["freeze_bn"], bool):
        raise UsageError(f"freeze_bn must be true or false, got {out['freeze_bn']!r}")
    if out["pretrained"] is not None and not (isinstance(out["pretrained"], str) and out["pretrained"]):
        raise UsageError(f"pretrained must be null, a torchvision weights name or a file path, "
                         f"got {out['pretrained']!r}")


class SegmentationNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.freeze_bn = False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.features(x)
        return {"logits": self.classify(feat), "feat": feat}

    def classify(self, feat: torch.Tensor) -> torch.Tensor:
        """Logits from a feature map (dropout, active in train mode only, then the 1x1 classifier).

        ``forward`` uses exactly this, so methods may pass mixed/aggregated features through it.
        """
        return self.classifier(self.dropout(feat))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": [...], "head": [...]}``, every parameter exactly once (frozen BN ones
        included with ``requires_grad=False``); the optimiser gives the head a 10x learning rate."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if id(p) not in ids]}

    def set_freeze_bn(self, freeze: bool) -> None:
        """Keep backbone BatchNorm in eval mode with frozen affine parameters."""
        self.freeze_bn = freeze
        if freeze:
            for m in self._backbone_bns():
                for p in m.parameters():
                    p.requires_grad_(False)
            self.train(self.training)

    def _backbone_bns(self):
        # _BatchNorm also matches SyncBatchNorm, which DDP conversion may substitute.
        return [m for m in self.backbone.modules() if isinstance(m, _BatchNorm)]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            # Batches of 1-2 crops give useless BN statistics: keep the pretrained ones.
            for m in self._backbone_bns():
                m.eval()
        return self
