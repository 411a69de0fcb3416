"""Typed config sections: one dataclass per section, each field with its default, a one-line doc and
its constraints, checked by ONE validator (:func:`parse`).

    @dataclass
    class DacsConfig:
        tau: float = setting(0.968, "confidence threshold of the pseudo-label weight", lo=0, lo_open=True, hi=1)

    parse(DacsConfig, {"tua": 0.9}, "dacs")
    # UsageError: unknown config key 'dacs.tua' (did you mean: tau?) ...

Field types come from the annotations: ``bool`` (never an int), ``int`` (an integral float is taken),
``float`` (an int is taken; a numeric string too, since YAML 1.1 reads ``1e-4`` as a string), ``str``,
``list[X]`` (``length`` items, each checked like X), ``dict`` (a free mapping), unions with ``None``
or of ``bool | str``, and nested section dataclasses. ``lo``/``hi`` bound a number or every item of
a list of numbers; ``choices`` lists the accepted values. A section class may define
``renamed = {"old_key": "message"}`` (old spellings refused with a pointer to the new one) and a
``check(self, prefix)`` method for constraints across fields.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import MISSING

import yaml

from segadapt.errors import UsageError
from segadapt.registry import close_matches

_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def setting(default=MISSING, doc: str = "", *, choices=None, lo=None, hi=None, lo_open: bool = False,
            hi_open: bool = False, length: int | None = None):
    """A dataclass field with its doc and constraints; no ``default`` = a required setting."""
    meta = {"doc": doc, "choices": tuple(choices) if choices is not None else None, "lo": lo, "hi": hi,
            "lo_open": lo_open, "hi_open": hi_open, "length": length}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _args(tp) -> tuple:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()


def describe(tp, meta: dict | None = None) -> str:
    """What a field accepts, in words ('numbers in [0, 1]', 'lists of 2 integers', 'one of a, b')."""
    meta = meta or {}
    if meta.get("choices") and typing.get_origin(tp) is not list:
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    alts = _args(tp)
    if alts:
        words = [describe(a, meta) for a in alts if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in alts else "")
    rng = _range_text(meta)
    rng = f" in {rng}" if rng else ""
    if tp is bool:
        return "true or false"
    if tp is int:
        return "integers" + rng
    if tp is float:
        return "numbers" + rng
    if tp is str:
        return "strings"
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        n = meta.get("length")
        inner = describe(item, {k: v for k, v in meta.items() if k != "choices"})
        if meta.get("choices"):
            inner = "values out of " + ", ".join(str(c) for c in meta["choices"])
        return f"lists of {str(n) + ' ' if n else ''}{inner}"
    if tp is dict or typing.get_origin(tp) is dict:
        return "a mapping"
    if is_section(tp):
        return "a section"
    return str(tp)


def _range_text(meta: dict) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is None and hi is None:
        return ""
    left = "(" if lo is None or meta.get("lo_open") else "["
    right = ")" if hi is None or meta.get("hi_open") else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def _in_range(v, meta: dict) -> bool:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (v <= lo if meta.get("lo_open") else v < lo):
        return False
    return not (hi is not None and (v >= hi if meta.get("hi_open") else v > hi))


class _Mismatch(Exception):
    pass


def _convert(value, tp, meta: dict, dotted: str):
    """``value`` as type ``tp`` (raises _Mismatch when it is not one), bounds and choices checked."""
    alts = _args(tp)
    if alts:
        if value is None and type(None) in alts:
            return None
        for alt in (a for a in alts if a is not type(None)):
            try:
                return _convert(value, alt, meta, dotted)
            except _Mismatch:
                continue
        raise _Mismatch
    if is_section(tp):
        return parse(tp, value, dotted)
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch
        out = value
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise _Mismatch
        out = int(value)
    elif tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch
        out = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise _Mismatch
        out = value
    elif typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or (meta.get("length") and len(value) != meta["length"]):
            raise _Mismatch
        inner = {k: v for k, v in meta.items() if k != "choices"}
        out = [_convert(v, item, inner, dotted) for v in value]
        if meta.get("choices") and any(v not in meta["choices"] for v in out):
            raise UsageError(f"{dotted} accepts {describe(tp, meta)}, got {value!r}")
        return out
    elif tp is dict or typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return copy.deepcopy(value)
    else:  # pragma: no cover - a section declared with a type this module does not know
        raise TypeError(f"{dotted}: unsupported setting type {tp!r}")
    if meta.get("choices") and out not in meta["choices"]:
        raise UsageError(f"{dotted} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if isinstance(out, (int, float)) and not isinstance(out, bool) and not _in_range(out, meta):
        raise UsageError(f"{dotted} must be in {_range_text(meta)}, got {value!r}")
    return out


def check_value(value, tp, meta: dict, dotted: str):
    try:
        return _convert(value, tp, meta, dotted)
    except _Mismatch:
        raise UsageError(f"{dotted} accepts {describe(tp, meta)}, got {value!r}") from None


def parse(cls, data, prefix: str):
    """The section ``data`` (a dict from YAML; None = empty) as a ``cls`` instance, defaults filled in.
    Unknown, renamed, missing, mistyped and out-of-range keys: UsageError naming the dotted key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"config '{prefix}' must be a section (key: value lines), got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    renamed = getattr(cls, "renamed", {})
    for key in data:
        if key in renamed:
            raise UsageError(renamed[key])
        if key not in fields:
            near = close_matches(key, fields)
            raise UsageError(f"unknown {prefix} setting '{key}' (config key '{prefix}.{key}'){near}; "
                             f"known: {', '.join(fields) or 'none'}")
    hints = _hints(cls)
    values = {}
    for name, f in fields.items():
        dotted = f"{prefix}.{name}"
        if name in data:
            values[name] = check_value(data[name], hints[name], f.metadata, dotted)
        elif is_section(hints[name]):
            values[name] = parse(hints[name], {}, dotted)
        elif f.default is not MISSING:
            values[name] = f.default
        elif f.default_factory is not MISSING:
            values[name] = f.default_factory()
        else:
            raise UsageError(f"config is missing the setting '{dotted}' ({f.metadata.get('doc', '')})")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(prefix)
    return obj


@dataclasses.dataclass
class NoSettings:
    """The section of a method without settings (source-only, oracle): it must be empty."""


def as_config(cls, value, prefix: str):
    """``value`` if it already is a parsed ``cls``, else the dict parsed (see :func:`parse`)."""
    return value if isinstance(value, cls) else parse(cls, value, prefix)


def check_top_level(cfg: dict, known) -> None:
    """A whole config's top level: every key one of ``known`` (else the close matches), and ``seed`` a
    non-negative integer."""
    known = list(known)
    for key in cfg:
        if key not in known:
            raise UsageError(f"unknown config section '{key}'{close_matches(key, known)} (known: {', '.join(known)})")
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"seed accepts integers >= 0, got {seed!r}")


def to_dict(obj) -> dict:
    """A parsed section back as plain YAML-ready values (nested sections as dicts)."""
    return {f.name: (to_dict(v) if dataclasses.is_dataclass(v) else copy.deepcopy(v))
            for f in dataclasses.fields(obj) for v in [getattr(obj, f.name)]}


def known_keys(cls) -> list[str]:
    """Every dotted key of a section class, nested sections included ('rare_class_sampling.enabled')."""
    hints, out = _hints(cls), []
    for f in dataclasses.fields(cls):
        out.append(f.name)
        if is_section(hints[f.name]):
            out += [f"{f.name}.{k}" for k in known_keys(hints[f.name])]
    return out


def settable_keys(sections: dict) -> set:
    """The dotted keys ``--set`` may set even where the YAML omits them: ``seed`` and, for each
    {top-level key: section class} of ``sections``, the key itself and every key of its class (old,
    renamed spellings too, so that they get their own message)."""
    out = {"seed"}
    for top, cls in sections.items():
        if isinstance(cls, type):
            out |= {top} | {f"{top}.{k}" for k in known_keys(cls) + list(getattr(cls, "renamed", {}))}
    return out


def field_doc(cls, dotted: str) -> str | None:
    """The doc of a (dotted, relative) key of ``cls``, None when the key is not one of its fields."""
    head, _, rest = dotted.partition(".")
    f = {f.name: f for f in dataclasses.fields(cls)}.get(head)
    if f is None:
        return None
    tp = _hints(cls)[head]
    if rest:
        return field_doc(tp, rest) if is_section(tp) else None
    return f.metadata.get("doc") or None


def default_of(cls, dotted: str):
    """The code default of a key of ``cls`` (a nested section's defaults as a dict); KeyError if it has none."""
    head, _, rest = dotted.partition(".")
    f = {f.name: f for f in dataclasses.fields(cls)}[head]
    tp = _hints(cls)[head]
    if rest:
        return default_of(tp, rest)
    if is_section(tp):
        return to_dict(parse(tp, {}, head))
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise KeyError(dotted)


def dump_commented(cfg: dict, sections: dict) -> str:
    """YAML of ``cfg`` with the field doc of every key the section classes ``sections`` ({top-level key:
    dataclass, or a str doc for a plain top-level value}) document, as an end-of-line comment."""
    lines = []
    for key, value in cfg.items():
        cls = sections.get(key)
        _emit(lines, key, value, 0, cls if is_section(cls) else None, cls if isinstance(cls, str) else None)
    return "\n".join(lines) + "\n"


def _scalar(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def _emit(lines, key, value, indent, cls, doc):
    pad = " " * indent
    head = f"{pad}{_scalar(key)}:"
    comment = f"  # {doc}" if doc else ""
    if isinstance(value, dict) and value:
        lines.append(head + comment)
        for k, v in value.items():
            sub = _hints(cls).get(k) if cls is not None else None
            _emit(lines, k, v, indent + 2, sub if is_section(sub) else None,
                  field_doc(cls, k) if cls is not None else None)
    else:
        lines.append(f"{head} {_scalar(value)}{comment}")
