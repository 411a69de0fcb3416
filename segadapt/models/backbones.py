"""Dilated backbones with output stride 8: torchvision ResNets and a small CPU-friendly ``tiny`` net.

Every backbone keeps torchvision's attribute names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``) so a
torchvision ResNet state_dict loads into it key for key, and exposes:

- ``forward(x) -> list`` of the four stage outputs (strides 4, 8, 8, 8 for ``x`` of size H x W;
  the last has spatial size ceil(H/8) x ceil(W/8)). Heads that need low-level features
  (DeepLab-v3+) take ``[0]``; DeepLab-v2 takes ``[-1]``.
- ``stage_channels``: channels of those four outputs; ``out_channels``: channels of the last.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from segadapt.errors import DataError, UsageError
from segadapt.models import efficientnet
from segadapt.registry import Registry

# torchvision (as long to import as torch itself) is imported only where a torchvision ResNet is built
# or its weights looked up, so the tiny backbone and every --help do not pay for it
if TYPE_CHECKING:
    import torchvision

RESNETS = ("resnet18", "resnet50", "resnet101")


class ResNetStages(nn.Module):
    """Stem (conv1, bn1, relu, maxpool) then layer1..layer4; ``forward(x)`` returns the four stage
    outputs. Shared by the torchvision ResNets and the Caffe-style ResNet-101 (caffe_resnet.py)."""

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in self.stages():
            x = layer(x)
            outs.append(x)
        return outs


class ResNetBackbone(ResNetStages):
    """A torchvision ResNet without ``avgpool``/``fc``; forward returns the four stage outputs."""

    def __init__(self, net: torchvision.models.ResNet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.stage_channels = tuple(_out_channels(layer) for layer in self.stages())
        self.out_channels = self.stage_channels[-1]


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    bn = last.bn3 if hasattr(last, "bn3") else last.bn2  # Bottleneck ends in bn3, BasicBlock in bn2
    return bn.num_features


def _dilate_basic_layer(layer: nn.Sequential, dilation: int) -> None:
    """Turn a stride-2 BasicBlock stage into a stride-1 stage with the given dilation.

    torchvision refuses ``replace_stride_with_dilation`` for BasicBlock, so patch the convs:
    remove the stride of the first block (and of its downsample 1x1 conv) and dilate every 3x3
    conv with padding = dilation so spatial size is kept (DeepLab's "atrous" conversion).
    """
    for block in layer:
        for conv in (block.conv1, block.conv2):
            conv.stride = (1, 1)
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation, dilation)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        block.stride = 1


def build_resnet(name: str) -> ResNetBackbone:
    """Randomly initialised dilated ResNet (layer3 dilation 2, layer4 dilation 4, output stride 8)."""
    if name not in RESNETS:
        raise UsageError(f"unknown ResNet {name!r}; choose one of {', '.join(RESNETS)}")
    import torchvision

    ctor = getattr(torchvision.models, name)
    if name == "resnet18":
        net = ctor(weights=None)
        _dilate_basic_layer(net.layer3, 2)
        _dilate_basic_layer(net.layer4, 4)
    else:
        net = ctor(weights=None, replace_stride_with_dilation=[False, True, True])
    return ResNetBackbone(net)


class BasicBlock(nn.Module):
    """ResNet's basic residual block (two 3x3 conv-BN, ReLU, identity or 1x1 shortcut), built like
    torchvision's ``resnet.BasicBlock``: same attributes in the same creation order (so the same
    parameter names and, from one seed, the same initial values) and the same forward. The tiny
    backbone uses it instead of torchvision's so that building it does not import torchvision;
    tests/test_models.py checks the two agree."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyBackbone(nn.Module):
    """Small ResNet-like net for CPU demos and tests (~0.4M backbone params at ``width=16``).

    Stem: two 3x3 convs (the first stride 2) -> /2. Stages of BasicBlocks with widths
    w, 2w, 4w, 8w: layer1 stride 2 (/4), layer2 stride 2 (/8), layer3 dilation 2, layer4
    dilation 4 (both /8), mirroring the dilated ResNets so heads behave the same. A 3x3 stem
    instead of ResNet's 7x7 + max-pool keeps the early detail that small inputs need.
    """

    def __init__(self, width: int = 16, blocks: tuple[int, int, int, int] = (2, 2, 2, 1)):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w)
        widths = (w, 2 * w, 4 * w, 8 * w)
        strides = (2, 2, 1, 1)
        dilations = (1, 1, 2, 4)
        layers, cin = [], w
        for cout, n, s, d in zip(widths, blocks, strides, dilations):
            layers.append(_basic_stage(cin, cout, n, s, d))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.stage_channels = widths
        self.out_channels = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: every block starts as identity, which
        # makes training from scratch (no pretrained weights exist for tiny) converge faster.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        outs = []
        for layer in self.stages():
            x = layer(x)
            outs.append(x)
        return outs


def _basic_stage(cin: int, cout: int, n: int, stride: int, dilation: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or cin != cout:
        downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    blocks = [BasicBlock(cin, cout, stride=stride, downsample=downsample)]
    blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
    stage = nn.Sequential(*blocks)
    if dilation > 1:
        _dilate_basic_layer(stage, dilation)
    return stage


#: the backbones of ``model.backbone`` (deeplabv2), name -> randomly initialised network
BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
BACKBONES.register("resnet18")(lambda **_: build_resnet("resnet18"))
BACKBONES.register("resnet50")(lambda **_: build_resnet("resnet50"))
BACKBONES.register("resnet101")(lambda **_: build_resnet("resnet101"))
BACKBONES.register("tiny")(lambda width=16, **_: TinyBackbone(width=width))
BACKBONES.register("resnet101_caffe")(lambda **_: _caffe_resnet().CaffeResNet101())
BACKBONES.register("efficientnet_lite0")(lambda **_: efficientnet.build_backbone("efficientnet_lite0"))  # own loader


def _caffe_resnet():
    from segadapt.models import caffe_resnet  # imported late: it builds on this module (ResNetStages, the file reader)

    return caffe_resnet


def build_backbone(name: str, pretrained: str | None = None, width: int | None = None) -> nn.Module:
    """Backbone ``name`` with optional weights (see :func:`load_pretrained`)."""
    make = BACKBONES.get(name)
    if name == "tiny":
        if pretrained is not None:
            raise UsageError("backbone 'tiny' has no pretrained weights; set pretrained: null")
        return make(width=16 if width is None else width)
    if name in efficientnet.NAMES:  # timm network + the packaged ImageNet weights, own key map
        return efficientnet.build_backbone(name, pretrained)
    backbone = make()
    if pretrained is not None and name == "resnet101_caffe":
        _caffe_resnet().load_caffe_init(backbone, pretrained)
    elif pretrained is not None:
        load_pretrained(backbone, name, pretrained)
    return backbone


# ---------------------------------------------------------------------------------------------
# Pretrained weights


def _looks_like_path(source: str) -> bool:
    return os.sep in source or "/" in source or source.endswith((".pth", ".pt")) or os.path.exists(source)


def load_pretrained(backbone: nn.Module, name: str, source: str) -> None:
    """Load ``source`` into ``backbone``: a torchvision weights name of ResNet ``name``
    (``IMAGENET1K_V1``, ``DEFAULT`` ...; downloaded unless in the torch hub cache) or a local
    file holding a torchvision-style ResNet state_dict.
    """
    if not isinstance(source, str) or not source:
        raise UsageError(f"pretrained must be null, a torchvision weights name or a file path, got {source!r}")
    if _looks_like_path(source):
        state = _read_state_file(source)
        origin = source
    else:
        import torchvision

        enum = torchvision.models.get_model_weights(name)
        if source not in enum.__members__:
            raise UsageError(
                f"unknown pretrained weights {source!r} for {name}; choose a file path or one of "
                f"{', '.join(enum.__members__)}"
            )
        weights = enum[source]
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; hash mismatch a RuntimeError
            raise DataError(f"could not fetch {weights} ({exc}); put the file in the torch hub cache "
                            "or pass a local path") from None
        origin = str(weights)
    load_state_into(backbone, state, origin)


def _read_state_file(path: str) -> Mapping[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise DataError(f"pretrained weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types; all mean "not a weights file"
        raise DataError(f"cannot read pretrained weights {path}: {str(exc).splitlines()[0]}") from None
    # Training scripts wrap the weights; unwrap the common containers.
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    return obj


def _strip_prefixes(key: str) -> str:
    # DDP adds "module.", segmentation checkpoints often "backbone."; they can be nested.
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_state_into(backbone: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Copy a torchvision-style ResNet state_dict into ``backbone``; ``fc.*`` is ignored.

    Any missing or unexpected key, or a shape mismatch, is a DataError: silently training from a
    half-loaded backbone would waste a whole run.
    """
    state = {_strip_prefixes(k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    # Old checkpoints predate BatchNorm's num_batches_tracked buffer; it is not a weight.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise DataError(f"pretrained weights {origin} do not fit this backbone; " + "; ".join(problems))
    backbone.load_state_dict(state, strict=False)
