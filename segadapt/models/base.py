"""What every segmentation architecture shares: ``forward`` = ``classify(features(x))``, the
backbone/head parameter split, and optionally frozen backbone BatchNorm. An architecture sets
``self.backbone``, ``self.dropout`` and ``self.classifier`` and defines ``features``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


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
