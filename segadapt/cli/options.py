"""Option parsers shared by subcommands."""

from __future__ import annotations

import inspect

from enum import Enum

import typer

from segadapt.data.labelspace import PROTOCOLS
from segadapt.errors import UsageError


def choices(name: str, values) -> type[Enum]:
    """The fixed choices of an option as an Enum (a str subclass): a wrong value is refused by the parser
    with the choices listed. Commands pass ``.value`` on, so the engine and what it writes see the same
    strings as before."""
    return Enum(name, [(v, v) for v in values], type=str)


Fusion = choices("Fusion", ("max", "mean"))  # how inference scales combine
Mode = choices("Mode", ("whole", "slide"))
Weights = choices("Weights", ("student", "teacher"))
Amp = choices("Amp", ("auto", "off", "bf16", "fp16"))
EvalProtocol = choices("EvalProtocol", ("all", *PROTOCOLS))  # every class, or a label-space protocol


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


def input_size(text: str | None) -> tuple[int, int] | None:
    """--input-size HxW -> the (W, H) pair the inference engine takes (and records in its outputs)."""
    from segadapt.data.prepare.common import parse_image_size

    hw = parse_image_size(text, "--input-size")
    return None if hw is None else (hw[1], hw[0])


def renamed(old: str, new: str):
    """A hidden option for a spelling whose size order was WxH: using it is a usage error that names
    the HxW option (the same text, e.g. 1280x720, would silently mean another size)."""
    def refuse(value):
        if value is not None:
            raise UsageError(f"{old} was WxH; use {new} HxW (height first)")
        return value

    return typer.Option(None, old, hidden=True, is_eager=True, callback=refuse)


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
