"""An example self-training method in one file, to show what adding a method takes (CONTRIBUTING.md;
run by tests/test_interface.py, not shipped): cross-entropy on the source crop plus a weighted
cross-entropy on every offline pseudo-label of the target crop. It overrides only ``training_step``.

A file like this one placed in ``segadapt/methods/`` is found by ``segadapt.methods.discover`` and is
then a method of the CLI (``method: pseudo-ce``), with its settings checked like every other method's."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segadapt.methods.base import Method, register_method
from segadapt.methods.common import seg_ce
from segadapt.schema import setting


@dataclass
class PseudoCEConfig:
    """The `pseudo-ce:` section."""
    target_weight: float = setting(1.0, "weight of the cross-entropy on the target pseudo-labels", lo=0)


@register_method("self-train", "pseudo-ce")
class PseudoCE(Method):
    target_batches = "pseudo"  # target crops with their pseudo-labels
    config_class = PseudoCEConfig

    def training_step(self, batch, iteration):
        xs, ys = batch["source"]["image"], batch["source"]["label"]
        xt, yt = batch["target"]["image"], batch["target"]["label"]
        s = self.student(torch.cat([xs, xt]))["logits"]
        loss_src, loss_tgt = seg_ce(s[:xs.shape[0]], ys), seg_ce(s[xs.shape[0]:], yt)
        return loss_src + self.cfg.target_weight * loss_tgt, {"loss_src": loss_src.item(), "loss_tgt": loss_tgt.item()}
