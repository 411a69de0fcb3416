"""Option parsers shared by subcommands."""

from __future__ import annotations

import inspect

from segadapt.errors import UsageError


def float_list(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{name} expects comma-separated numbers, got '{text}'") from None
    if not vals:
        raise UsageError(f"{name} expects at least one number")
    return vals


def hw_pair(text: str | None, name: str) -> list[int] | None:
    """'512x1024' (H x W) -> [512, 1024]."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"{name} expects HxW, e.g. 512x1024, got '{text}'") from None
    if h <= 0 or w <= 0:
        raise UsageError(f"{name} must be positive, got '{text}'")
    return [h, w]


def with_options(group: dict):
    """Decorator: a group of typer options several commands share, declared once. ``group`` maps each
    parameter name to (type, typer.Option(...)); the options are added after the command's own
    parameters and reach it through its ``**kwargs`` parameter, under those names."""
    def add(command):
        sig = inspect.signature(command, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
                 for name, (kind, option) in group.items()]
        command.__signature__ = sig.replace(parameters=own + extra)
        command.__annotations__ = {p.name: p.annotation for p in own + extra if p.annotation is not p.empty}
        return command
    return add
