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
        self.register_buffer("mean", torch.tensor(norm["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm["std"]).view(1, 3, 1, 1), persistent=False)

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
