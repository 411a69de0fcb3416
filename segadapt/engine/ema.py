"""Exponential moving average teacher."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_alpha(iteration: int, max_alpha: float) -> float:
    """DiGA / mean-teacher schedule alpha_t = min(1 - 1/(t+1), max_alpha): early steps copy the student."""
    return min(1.0 - 1.0 / (iteration + 1), max_alpha)


def make_teacher(student: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student for parameters; buffers (BN statistics) are
    averaged the same way, integer buffers (num_batches_tracked) copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(alpha).add_(s, alpha=1 - alpha)
        else:
            t.copy_(s)
