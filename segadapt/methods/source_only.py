"""Source-only baseline: cross-entropy on labelled source crops. Trained on target labels it is the
target oracle (pass the target's prepared folder as --source)."""

from __future__ import annotations

from segadapt.methods.base import Method, register_method
from segadapt.methods.common import seg_ce


@register_method("warmup", "source-only")
class SourceOnly(Method):

    def training_step(self, batch, iteration):
        x, y = batch["source"]["image"], batch["source"]["label"]
        loss = seg_ce(self.student(x)["logits"], y)
        return loss, {"loss_ce": loss.item()}
