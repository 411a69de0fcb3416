"""Exponential-moving-average (mean) teacher: the one code path every mean-teacher method uses
(DiGA warm-up and self-training, DACS, T2S).

Two ways to run the teacher, the method section's ``ema_bn`` setting:

- ``batch`` (DiGA's and DAFormer's official code): only the parameters are averaged; the teacher runs
  with BatchNorm in train mode, i.e. normalised with the statistics of the batch it is given, never
  with running statistics. Its running statistics are not averaged from the student either: as in the
  official code (a train-mode forward in PyTorch updates them) each teacher forward moves them by the
  BN momentum toward that batch's statistics, so a checkpoint's teacher evaluated in eval mode
  (``--weights teacher``) uses statistics of the teacher itself on training crops (this is what DiGA's
  saved ``teacher.pth`` holds). Dropout is active when the method asks for it (DiGA never puts its
  teacher in eval mode) and off otherwise (DAFormer switches the EMA model's dropout and drop-path
  off). Backbone BN frozen by ``model.freeze_bn`` stays in eval mode, as in the student.
- ``averaged`` (segadapt before): parameters and float buffers (BN running statistics) are averaged,
  and the teacher runs in eval mode (running statistics, no dropout).

Schedule: alpha(k) = min(1 - 1/(k+1), max_alpha). The official code applies alpha(k) at the start of
iteration k (before its forward), to the student after k optimiser steps; alpha(0) = 0 is the copy
made at the start. segadapt updates after optimiser step ``it`` (0-based), when the student has taken
it + 1 steps, so it applies alpha(it + 1): the teacher that iteration k sees is the same as the
official one (the last step's update, which the official loop never makes, only reaches the
checkpoint). DACS's own code updates right after step i_iter with alpha(i_iter): segadapt's DACS
keeps that (``offset=0``). The iteration passed is the engine's, so a resumed run passes the same
numbers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from segadapt.errors import UsageError

BN_MODES = ("batch", "averaged")
DEFAULT_BN = "batch"


def ema_alpha(step: int, max_alpha: float) -> float:
    """DiGA / DAFormer schedule alpha(k) = min(1 - 1/(k+1), max_alpha): early steps follow the student."""
    return min(1.0 - 1.0 / (step + 1), max_alpha)


def check_bn_mode(value, name: str) -> str:
    """Validate a method section's ``ema_bn`` (one-line UsageError naming ``name.ema_bn``)."""
    if value not in BN_MODES:
        raise UsageError(f"{name}.ema_bn must be one of {', '.join(BN_MODES)}, got {value!r}")
    return value


def _is_drop(m: nn.Module) -> bool:
    # segadapt's own DropPath (models/segformer.py) and torch's dropout layers
    return isinstance(m, _DropoutNd) or type(m).__name__ == "DropPath"


def set_teacher_mode(teacher: nn.Module, bn: str, dropout: bool) -> nn.Module:
    """Put ``teacher`` in the mode its forward runs in (see the module docstring)."""
    if bn == "averaged":
        return teacher.eval()
    check_bn_mode(bn, "ema")
    teacher.train()  # SegmentationNet.train keeps frozen backbone BN in eval mode
    if not dropout:
        for m in teacher.modules():
            if _is_drop(m):
                m.eval()
    return teacher


def make_teacher(student: nn.Module, bn: str = "averaged", dropout: bool = False) -> nn.Module:
    """A frozen copy of ``student`` (parameters and buffers) in the mode ``bn`` runs it in."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return set_teacher_mode(teacher, bn, dropout)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float, bn: str = "averaged") -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student for parameters. ``averaged`` also averages
    float buffers (BN statistics) the same way and copies integer ones (num_batches_tracked);
    ``batch`` leaves every buffer as it is."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)
    if bn == "batch":
        return
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(alpha).add_(s, alpha=1 - alpha)
        else:
            t.copy_(s)


def ema_step(pairs, iteration: int, max_alpha: float, bn: str, offset: int = 1) -> float:
    """After optimiser step ``iteration`` (0-based): update each (teacher, student) pair with
    alpha(iteration + offset). ``offset`` 1: DiGA / DAFormer, which apply alpha(k) before the forward of
    iteration k (the next one); 0: DACS's ``trainUDA.py``, which applies alpha(i_iter) right after
    step i_iter. Returns the alpha used."""
    alpha = ema_alpha(iteration + offset, max_alpha)
    for teacher, student in pairs:
        ema_update(teacher, student, alpha, bn)
    return alpha


@torch.no_grad()
def teacher_forward(fn, groups, teachers, bn: str, dropout: bool):
    """Run the teacher function ``fn`` (image batch -> dict of tensors) on each batch of ``groups`` and
    return the outputs concatenated along the batch, in the order given.

    ``batch``: one forward per group, so each group is normalised with its own statistics (DiGA's code
    runs its teacher on [source, CDMix] and on the target as two calls). ``averaged``: eval-mode BN makes
    images independent, so one forward of the concatenation gives the same values, faster.
    ``teachers``: the modules ``fn`` runs, put in their mode first (robust to anything that switched it)."""
    for t in teachers:
        set_teacher_mode(t, bn, dropout)
    groups = [g for g in groups if g.shape[0] > 0]
    if bn == "averaged" or len(groups) == 1:
        return fn(torch.cat(groups) if len(groups) > 1 else groups[0])
    outs = [fn(g) for g in groups]
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
