"""Pieces several methods share, each written once: the mean-teacher set-up, the (weighted) segmentation
cross-entropies, label resizing and per-class feature means. A method module keeps only what is its own."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segadapt.data.labelspace import IGNORE
from segadapt.engine.ema import ema_step, make_teacher, teacher_forward
from segadapt.engine.pseudo_label import class_feature_sums


# -- mean teacher -----------------------------------------------------------------------------------

class MeanTeacher:
    """The EMA teacher set-up of DiGA, DACS and T2S: one frozen copy per student module (``teachers[i]``
    of ``students[i]``), updated after every optimiser step with the schedule of ``engine.ema``
    (alpha(iteration + offset) capped at ``max_alpha``) and run through ``teacher_forward`` in the mode
    ``bn`` / ``dropout`` give. The method exposes the teachers as its own attributes for checkpointing
    (``modules()``); the schedule, the update and the teacher mode live here."""

    def __init__(self, students: list[nn.Module], bn: str, dropout: bool, max_alpha: float, offset: int = 1):
        self.students = list(students)
        self.bn, self.dropout, self.max_alpha, self.offset = bn, dropout, float(max_alpha), offset
        self.teachers = [make_teacher(s, bn, dropout) for s in self.students]

    def update(self, iteration: int) -> float:
        """teacher <- alpha teacher + (1 - alpha) student for every pair, after optimiser step ``iteration``;
        returns the alpha used."""
        return ema_step(list(zip(self.teachers, self.students)), iteration, self.max_alpha, self.bn, self.offset)

    def forward(self, fn, *groups):
        """The teacher function ``fn`` (image batch -> dict of tensors) on each batch of ``groups``, outputs
        concatenated in the order given (see ``engine.ema.teacher_forward``)."""
        return teacher_forward(fn, groups, self.teachers, self.bn, self.dropout)


# -- losses -------------------------------------------------------------------------------------------

def weighted_seg_ce(logits: torch.Tensor, label: torch.Tensor, class_weight: torch.Tensor | None = None,
                    pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy at label resolution (logits resized bilinearly to the label), over labelled pixels:

        sum_p w_p w_{y_p} CE(p) / sum_p w_{y_p}        (p labelled; w_p = 1, w_c = 1 when not given)

    ``class_weight`` (C,): PyTorch's weighted mean (T2S's re-weighting); ``pixel_weight`` (B, H, W) scales
    each pixel's term without entering the divisor (DACS's confidence weight: DACS divides by every pixel,
    ignored ones included; like DiGA's fix we divide by the labelled ones). Without weights it is the
    plain mean over labelled pixels (DiGA's code divided by all pixels, ignored ones included, which
    silently shrinks the loss). 0 when no pixel is labelled."""
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    valid = label != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    weight = class_weight.float().to(logits.device) if class_weight is not None else None
    if pixel_weight is None:
        return F.cross_entropy(logits.float(), label, weight=weight, ignore_index=IGNORE)
    ce = F.cross_entropy(logits.float(), label, weight=weight, ignore_index=IGNORE, reduction="none")
    divisor = valid.sum() if weight is None else weight[label[valid]].sum()
    return (ce * pixel_weight.float()).sum() / divisor


def seg_ce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at label resolution, averaged over labelled pixels only; 0 when none is labelled."""
    return weighted_seg_ce(logits, label)


def soft_ce(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """H(teacher -> student) = -sum_c softmax(t)_c * log_softmax(s)_c, mean over pixels."""
    p = teacher_logits.detach().float().softmax(1)
    return -(p * student_logits.float().log_softmax(1)).sum(1).mean()


# -- labels and features --------------------------------------------------------------------------------

def resize_label(label: torch.Tensor, size) -> torch.Tensor:
    """A class map (B, H, W) resized to ``size`` (h, w) by nearest neighbour (PyTorch's 'nearest': source
    index floor(i * H / h)), so every value is one of the input's and IGNORE stays IGNORE."""
    return F.interpolate(label[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def class_feature_means(feat: torch.Tensor, label: torch.Tensor, num_classes: int, per_image: bool = False):
    """Mean feature of each class over pixels with label c (label at feature resolution; IGNORE and any
    value >= num_classes skipped). Pooled over the batch: (means (C, D), counts (C,)); with ``per_image``,
    one row per image: (means (B, C, D), counts (B, C)), a class absent from an image has mean 0, count 0."""
    sums, counts = class_feature_sums(feat, label, num_classes, torch.float32)
    counts = counts.to(feat.device)
    if not per_image:
        sums, counts = sums.sum(0), counts.sum(0)
    return sums / counts.clamp(min=1)[..., None], counts
