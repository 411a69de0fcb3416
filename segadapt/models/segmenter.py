"""The model the engine and methods use: takes RGB in [0, 1] and normalises it inside, so every caller
(training augmentation, FDA, mixing, inference) works on real colours and none can forget the
normalisation."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from segadapt.models import build_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=None)
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # constants, deliberately not module buffers: whatever walks a module's buffers (the EMA teacher
    # update averages them) would change them by rounding, and being outside the state dict they came
    # back as the exact constants after --resume, so a resumed run drifted from the uninterrupted one
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


class Segmenter(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def spec(self) -> dict:
        return self.net.spec

    def forward(self, x: torch.Tensor) -> dict:
        mean, std = _normalisation(x.device)
        return self.net((x - mean) / std)

    def classify(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net.classify(feat)

    def param_groups(self) -> dict:
        return self.net.param_groups()


def build_segmenter(spec: dict, num_classes: int) -> Segmenter:
    return Segmenter(build_model(spec, num_classes))
