"""The Caffe-style ResNet-101 of DeepLab-v2 as the DA papers run it (AdaptSegNet, ProDA, DiGA): backbone
``resnet101_caffe``.

It differs from torchvision's ResNet-101 in three ways that change the weights' meaning, so
torchvision weights do not fit it and its weights do not fit torchvision's:

- a bottleneck's stride sits in its first 1x1 conv (torchvision: in the 3x3);
- the stem's max-pool rounds up (``ceil_mode=True``: a 65 x 65 map pools to 33 x 33, not 32 x 32);
- layer3 and layer4 run every block, the first included, at dilation 2 and 4 with stride 1
  (torchvision's ``replace_stride_with_dilation`` keeps the first block of a stage at the previous
  dilation), so the output stride is 8.

BatchNorm affine parameters are frozen (``requires_grad=False``), as in AdaptSegNet's and DiGA's
``Bottleneck``: the pretrained scale/shift never train. Whether the running statistics are kept too is
``freeze_bn`` (DiGA trains with the student in train mode, i.e. batch statistics: ``freeze_bn: false``).

``pretrained: PATH`` loads AdaptSegNet's ``DeepLab_resnet_pretrained_init-f81d91e8.pth`` (the Caffe DeepLab
ResNet-101 converted to PyTorch) by its published key names (``Scale.conv1.weight``, ``Scale.bn1.*``,
``Scale.layer1.0.conv1.weight`` ... ``Scale.layer4.2.bn3.*``). Its ``Scale.layer5.*`` classifier (DeepLab's
summed ASPP for another label space) is skipped, as AdaptSegNet and DiGA skip it for 19 classes (for other
class counts their loop copies it and the strict load fails; here it is skipped always); every other key
must be present and fit. The network was trained on BGR 0..255 minus the Caffe mean, hence the
``input_norm`` defaults of ``resnet101_caffe`` (see ``deeplabv2``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from segadapt.errors import DataError
from segadapt.models.backbones import ResNetStages, _read_state_file

INIT_FILE = "DeepLab_resnet_pretrained_init-f81d91e8.pth"
BLOCKS = (3, 4, 23, 3)


class CaffeBottleneck(nn.Module):
    """1x1 (stride) -> 3x3 (dilation) -> 1x1, BN after each, identity or 1x1-conv+BN shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _stage(cin: int, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    # every stage's first block changes the width (64 -> 256 ...), so it always has a projection shortcut
    downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
    layers = [CaffeBottleneck(cin, planes, stride, dilation, downsample)]
    layers += [CaffeBottleneck(planes * 4, planes, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CaffeResNet101(ResNetStages):
    """``forward(x) -> list`` of the four stage outputs (strides 4, 8, 8, 8; 256/512/1024/2048 channels)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = _stage(64, 64, BLOCKS[0], 1, 1)
        self.layer2 = _stage(256, 128, BLOCKS[1], 2, 1)
        self.layer3 = _stage(512, 256, BLOCKS[2], 1, 2)
        self.layer4 = _stage(1024, 512, BLOCKS[3], 1, 4)
        self.stage_channels = (256, 512, 1024, 2048)
        self.out_channels = 2048
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)  # the official init (it matters only without `pretrained`)
            elif isinstance(m, nn.BatchNorm2d):
                m.requires_grad_(False)  # frozen affine, as the official Bottleneck and stem


def load_caffe_init(backbone: CaffeResNet101, path: str) -> None:
    """Load AdaptSegNet's DeepLab init file into ``backbone`` by its published ``Scale.*`` names.

    ``Scale.layer5.*`` (the file's own classifier) is skipped; any other missing or unexpected key, or a
    shape mismatch, is a one-line DataError naming the file and the first offending key."""

    state = _read_state_file(path)
    fix = f"pass AdaptSegNet's {INIT_FILE} (keys 'Scale.conv1.weight', 'Scale.layer1.0.conv1.weight' ...)"
    if not any(k.startswith("Scale.") for k in state):
        hint = " (it looks like a torchvision ResNet: use backbone resnet101 for it)" if "fc.weight" in state else ""
        raise DataError(f"{path} is not the Caffe DeepLab init{hint}; {fix}")
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("Scale.layer5."):
            continue
        if not key.startswith("Scale."):
            raise DataError(f"{path}: unexpected key {key!r} (not in the Caffe DeepLab init's layout); {fix}")
        mapped[key[len("Scale."):]] = value
    load_exact(backbone, mapped, path, rename=lambda k: "Scale." + k, fix=fix)


def load_exact(module: nn.Module, state: Mapping[str, torch.Tensor], origin: str,
               rename: Callable[[str], str] = lambda k: k, fix: str = "") -> None:
    """``module.load_state_dict(state)`` where every key of both sides must match (BatchNorm's
    ``num_batches_tracked`` counter may be absent: old files predate it, and it is no weight).

    The first missing or unexpected key, or shape mismatch, is a one-line DataError naming ``origin``;
    ``rename`` turns a module key into the name the file spells it with, for the message."""
    own = module.state_dict()
    tail = f"; {fix}" if fix else ""
    for key in own:
        if key not in state and not key.endswith("num_batches_tracked"):
            raise DataError(f"{origin}: missing key {rename(key)!r}{tail}")
    for key, value in state.items():
        if key not in own:
            raise DataError(f"{origin}: unexpected key {rename(key)!r}{tail}")
        if tuple(value.shape) != tuple(own[key].shape):
            raise DataError(f"{origin}: {rename(key)!r} has shape {tuple(value.shape)}, the model needs "
                            f"{tuple(own[key].shape)}{tail}")
    full = dict(state)
    for key in own:  # keep the model's own counter where the file has none
        full.setdefault(key, own[key])
    module.load_state_dict(full)
