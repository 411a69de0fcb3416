"""The model the engine and methods use: takes RGB in [0, 1] and normalises it inside, so every caller
(training augmentation, FDA, mixing, inference) works on real colours and none can forget the
normalisation."""

from __future__ import annotations

import torch
from torch import nn

from segadapt.models import build_model
from segadapt.models.base import INPUT_NORMS

IMAGENET_MEAN = INPUT_NORMS["imagenet"]["mean"]
IMAGENET_STD = INPUT_NORMS["imagenet"]["std"]


class Segmenter(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        # the spec's input_norm (default imagenet): a network is only right on the inputs it was trained on
        norm = INPUT_NORMS[getattr(net, "spec", {}).get("input_norm", "imagenet")]
        self.bgr = norm["bgr"]
        # constants as plain tensors, deliberately not buffers: the EMA teacher update averages every
        # buffer, which moved them by rounding (0.229 by 1.5e-8 after 3 updates), and as non-persistent
        # buffers they came back as the exact constants after --resume: the resumed run drifted (issue 15)
        self.mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(norm["std"]).view(1, 3, 1, 1)

    def _apply(self, fn, recurse=True):
        # .to(device) / .cuda() / .half() / channels_last move the constants as they would move buffers
        super()._apply(fn, recurse)
        self.mean, self.std = fn(self.mean), fn(self.std)
        return self

    @property
    def spec(self) -> dict:
        return self.net.spec

    def forward(self, x: torch.Tensor) -> dict:
        if self.bgr:
            x = x.flip(1)
        return self.net((x - self.mean) / self.std)

    def classify(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net.classify(feat)

    def param_groups(self) -> dict:
        return self.net.param_groups()


def build_segmenter(spec: dict, num_classes: int) -> Segmenter:
    return Segmenter(build_model(spec, num_classes))
