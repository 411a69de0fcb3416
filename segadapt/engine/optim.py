"""Optimisers and the poly learning-rate schedule with a head multiplier (the DA papers' setting)."""

from __future__ import annotations

import torch

from segadapt.errors import UsageError


def build_optimizer(param_groups: dict, cfg: dict) -> torch.optim.Optimizer:
    """``param_groups``: {"backbone": [...], "head": [...]}; the head gets ``lr * head_lr_mult``."""
    lr = float(cfg["lr"])
    groups = [
        {"params": list(param_groups["backbone"]), "lr": lr, "base_lr": lr, "name": "backbone"},
        {"params": list(param_groups["head"]), "lr": lr * float(cfg["head_lr_mult"]),
         "base_lr": lr * float(cfg["head_lr_mult"]), "name": "head"},
    ]
    for extra, params in param_groups.items():  # method-specific heads (e.g. projection heads) train like the head
        if extra not in ("backbone", "head"):
            groups.append({"params": list(params), "lr": lr * float(cfg["head_lr_mult"]),
                           "base_lr": lr * float(cfg["head_lr_mult"]), "name": extra})
    groups = [g for g in groups if g["params"]]
    name = cfg["name"].lower()
    wd = float(cfg["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg["momentum"]), weight_decay=wd)
    if name == "adamw":
        betas = tuple(cfg["betas"])
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=wd)
    raise UsageError(f"unknown optimiser '{cfg['name']}' (sgd, adamw)")


def poly_lr(base_lr: float, it: int, total: int, power: float, warmup: int = 0) -> float:
    if warmup > 0 and it < warmup:
        return base_lr * (it + 1) / warmup
    return base_lr * (1 - it / max(1, total)) ** power


def set_lr(optimizer: torch.optim.Optimizer, it: int, total: int, cfg: dict) -> float:
    power = float(cfg["poly_power"])
    warmup = int(cfg["warmup_iters"])
    for g in optimizer.param_groups:
        g["lr"] = poly_lr(g["base_lr"], it, total, power, warmup)
    return optimizer.param_groups[0]["lr"]
