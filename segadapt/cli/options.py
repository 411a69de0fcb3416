"""Option parsers shared by subcommands."""

from __future__ import annotations

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
