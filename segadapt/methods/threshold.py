"""Self-training on confidence-thresholded offline pseudo-labels (fixed threshold, or class-balanced as
in CBST, Zou et al., ECCV 2018).

Offline pseudo-label y_t(p) and its stored confidence conf(p) (``segadapt pseudo-label``):
    y_t'(p) = y_t(p) if conf(p) >= t_{y_t(p)} else ignore
    fixed:          t_c = t                                             (default 0.9)
    class-balanced: t_c = confidence of the k_c-th most confident pixel predicted as c over the WHOLE
                    pseudo-label set, k_c = floor(portion * N_c)        (CBST, portion 0.5 by default)
    L = CE(S(x_s), y_s) + lambda * CE(S(x_t), y_t')
With ``class_mix`` the target term uses ClassMix instead: half of the source classes pasted onto the
target crop, labels mixed the same way (x_t, y_t' -> x_mix, y_mix); the classes are drawn as DACS's
code draws them (``class_mix_mask(rule="dacs")``).

Class-balanced thresholds come from the folder's per-class confidence histogram (CONF_BINS bins):
t_c is the lower edge of the bin holding the k_c-th most confident pixel, snapped up to the stored
uint16 grid, so a pixel passes exactly when its stored value is in that bin or above: at least k_c
pixels of class c are kept over the set, and at most one bin's worth more (exact to the bin width).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
import numpy as np
import torch

from segadapt.console import log
from segadapt.data.labelspace import IGNORE
from segadapt.data.mixing import class_mix_mask, mix
from segadapt.data.pseudo_labels import bin_floor
from segadapt.errors import DataError
from segadapt.methods.base import Method, MethodState, register_method, state_buffer
from segadapt.methods.common import seg_ce
from segadapt.schema import setting

MODES = ("fixed", "class_balanced")


@dataclass
class ThresholdConfig:
    """The `threshold:` section."""
    mode: str = setting("class_balanced", "fixed = one confidence threshold for every class; class_balanced = "
                        "per-class (CBST)", choices=MODES)
    threshold: float = setting(0.9, "fixed mode: keep a pseudo-label where its confidence >= this", lo=0, hi=1)
    portion: float = setting(0.5, "class_balanced: keep the top `portion` most confident pixels of each predicted "
                             "class over the whole pseudo-label set (CBST: 0.2 in round 1, +0.05 per round, up to "
                             "0.5)", lo=0, lo_open=True, hi=1)
    target_weight: float = setting(1.0, "lambda: weight of CE on the thresholded target pseudo-labels", lo=0)
    class_mix: bool = setting(False, "true = ClassMix half of the source classes onto the target crop (labels "
                              "mixed alike)")


# -- the pieces as plain functions (tested one by one) ------------------------------------------

def class_balanced_thresholds(hist: np.ndarray, portion: float) -> torch.Tensor:
    """Per-class thresholds (C,) float32 from a (C, bins) histogram of stored confidences per predicted
    class: the lower edge of the bin that holds the floor(portion * N_c)-th most confident pixel (snapped up
    to the uint16 grid). A class with k_c = 0 (never or too rarely predicted) keeps nothing: +inf (CBST: 1)."""
    hist = np.asarray(hist, np.int64)
    c, bins = hist.shape
    n = hist.sum(1)
    frac = Fraction(repr(float(portion)))  # the decimal the user wrote: floor(0.29 * 100) is 29, not 28
    k = n * frac.numerator // frac.denominator
    from_top = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # from_top[c, b] = pixels of c in bins >= b
    out = np.full(c, np.inf, np.float32)
    for cls in range(c):
        if k[cls] == 0:
            continue
        b = int(np.nonzero(from_top[cls] >= k[cls])[0].max())  # highest bin with at least k pixels at or above it
        out[cls] = bin_floor(b, bins)  # as training reads the stored values: equal values compare equal
    return torch.from_numpy(out)


def fixed_thresholds(num_classes: int, threshold: float) -> torch.Tensor:
    return torch.full((num_classes,), float(threshold), dtype=torch.float32)


def threshold_pseudo_labels(label: torch.Tensor, conf: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Keep y(p) where conf(p) >= t_{y(p)}, ignore elsewhere (already ignored pixels stay ignored)."""
    valid = label != IGNORE
    t = thresholds.to(conf.device)[torch.where(valid, label, torch.zeros_like(label))]
    return torch.where(valid & (conf >= t), label, torch.full_like(label, IGNORE))


# -- the method -------------------------------------------------------------------------------------

@register_method("self-train", "threshold")
class ThresholdSelfTrain(Method):
    target_batches = "pseudo"
    thresholds = state_buffer()  # (C,) float32; None until the folder's histogram gives class-balanced ones
    needs_confidence = True  # the engine must deliver each target crop's confidence next to its pseudo-label
    config_class = ThresholdConfig

    def __init__(self, cfg, student, num_classes):
        super().__init__(cfg, student, num_classes)
        # checkpointed: a resumed run keeps the thresholds it started with
        self.state = MethodState(thresholds=fixed_thresholds(num_classes, self.cfg.threshold)
                                 if self.cfg.mode == "fixed" else None)

    def use_pseudo_labels(self, folder):
        """Class-balanced thresholds are computed over the folder's whole confidence histogram."""
        if self.cfg.mode != "class_balanced":
            return
        hist = folder.histogram()
        if hist.shape[0] != self.num_classes:
            raise DataError(f"{folder.root}: confidence histogram has {hist.shape[0]} classes, the model "
                            f"{self.num_classes}")
        self.thresholds = class_balanced_thresholds(hist, self.cfg.portion)
        shown = ", ".join("-" if not np.isfinite(t) else f"{t:.3f}" for t in self.thresholds.tolist())
        log(f"class-balanced thresholds (portion {self.cfg.portion}): {shown}")

    def modules(self):
        return {**super().modules(), "method_state": self.state}

    def training_step(self, batch, iteration):
        xs, ys = batch["source"]["image"], batch["source"]["label"]
        tgt = batch["target"]
        if "confidence" not in tgt:
            raise DataError("threshold self-training needs the pseudo-labels' confidence maps in the target batch")
        if self.thresholds is None:
            raise DataError("class-balanced thresholds need the pseudo-label folder (use_pseudo_labels)")
        xt, yt = tgt["image"], threshold_pseudo_labels(tgt["label"], tgt["confidence"], self.thresholds)
        kept = ((yt != IGNORE).sum() / (tgt["label"] != IGNORE).sum().clamp(min=1)).item()
        if self.cfg.class_mix:
            mask = class_mix_mask(ys, rule="dacs").to(xs.dtype)
            xt, yt = mix(mask, xs, xt), mix(mask, ys, yt)

        n = xs.shape[0]
        s = self.student(torch.cat([xs, xt]))["logits"]
        loss_src = seg_ce(s[:n], ys)
        loss_tgt = seg_ce(s[n:], yt)
        loss = loss_src + self.cfg.target_weight * loss_tgt
        # kept: fraction of the crop's pseudo-labelled pixels that pass their class threshold
        return loss, {"loss_src": loss_src.item(), "loss_tgt": loss_tgt.item(), "kept": kept}
