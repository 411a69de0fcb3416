"""YAML configs: packaged defaults, `base:` inheritance, `--set key=value` overrides, provenance.

A config names a packaged file (`synthetic/diga_warmup`) or a path. `base:` names one file or a list
of them (merged left to right, then the file itself on top, as mmseg's `_base_`). Overrides may only
touch keys that exist in the resolved config or that the typed sections know (``settable``), so a
typo is an error instead of a silently ignored setting; the typed sections (segadapt/schema.py) then
check every key and value.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import yaml

from segadapt import __version__
from segadapt.errors import UsageError
from segadapt.registry import close_matches

CONFIG_PACKAGE = "segadapt.configs"


def packaged_configs() -> list[str]:
    root = resources.files(CONFIG_PACKAGE)
    names = []
    for bench in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        names += [f"{bench.name}/{f.name[:-5]}" for f in sorted(bench.iterdir()) if f.name.endswith(".yaml")]
    return names


def _locate(name: str, relative_to: Path | None = None) -> Path:
    candidates = []
    if relative_to is not None:
        candidates.append(relative_to / name)
        candidates.append(relative_to / f"{name}.yaml")
    candidates += [Path(name)]
    pkg = Path(str(resources.files(CONFIG_PACKAGE)))
    candidates += [pkg / name, pkg / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise UsageError(f"config '{name}' not found (a file path, or one of: {', '.join(packaged_configs())})")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must be a mapping at top level")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(name: str, _seen: tuple = ()) -> dict:
    """Load a config and the `base:` files it names (one name or a list, paths relative to the file):
    the bases merged left to right, then this file's own keys on top."""
    path = _locate(name)
    if path.resolve() in _seen:
        raise UsageError(f"config {path} includes itself through 'base'")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) for b in bases):
        raise UsageError(f"config {path}: 'base' must be a file name or a list of them, got {bases!r}")
    merged: dict = {}
    for base_name in bases:
        base_path = _locate(base_name, relative_to=path.parent)
        merged = deep_merge(merged, load_config(str(base_path), _seen + (path.resolve(),)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise UsageError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UsageError(f"--set expects key=value, got '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(cfg: dict, overrides: list[str], settable=()) -> dict:
    """``cfg`` with each ``key=value`` of ``overrides`` set. A key must exist in ``cfg`` or be one of the
    dotted keys ``settable`` (those the typed sections define, set even where the YAML omits them)."""
    cfg = copy.deepcopy(cfg)
    settable = set(settable)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = cfg
        for i, k in enumerate(keys):
            dotted = ".".join(keys[: i + 1])
            if isinstance(node, dict) and k not in node and dotted in settable:
                node[k] = {} if i < len(keys) - 1 else None  # a known key the YAML leaves to its default
            if not isinstance(node, dict) or k not in node:
                known = sorted(node) if isinstance(node, dict) else []
                prefix = ".".join(keys[:i])
                known = sorted(set(known) | {s[len(prefix) + 1:].split(".")[0] if prefix else s.split(".")[0]
                                             for s in settable if not prefix or s.startswith(prefix + ".")})
                near = close_matches(k, known)
                raise UsageError(f"unknown config key '{dotted}' in --set {text}{near} "
                                 f"(known here: {', '.join(known) if known else '(not a section)'})")
            if i == len(keys) - 1:
                if isinstance(node[k], dict) and not isinstance(value, dict):
                    raise UsageError(f"--set {text}: '{'.'.join(keys)}' is a section, not a value")
                node[k] = value
            else:
                node = node[k]
    return cfg


def set_iters(cfg: dict, iters: int | None) -> dict:
    """``cfg`` with optim.iters set from a stage's ``--iters`` (None: unchanged), after checking it."""
    if iters is not None:
        if iters <= 0:
            raise UsageError(f"--iters must be positive, got {iters}")
        cfg.setdefault("optim", {})["iters"] = iters
    return cfg


def get(cfg: dict, dotted: str, default=None):
    node = cfg
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return default
        node = node[k]
    return node


def require(cfg: dict, dotted: str):
    sentinel = object()
    value = get(cfg, dotted, sentinel)
    if value is sentinel:
        raise UsageError(f"config is missing the setting '{dotted}'")
    return value


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    return {
        "segadapt_version": __version__,
        "git_revision": git_revision(),
        "command": " ".join(sys.argv),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
    }


def dump_config(cfg: dict, sections: dict | None = None) -> str:
    """YAML of a resolved config; with ``sections`` ({top-level key: section dataclass or doc line}) each
    key the sections document carries its one-line doc as a comment."""
    if not sections:
        return yaml.safe_dump(cfg, sort_keys=False)
    from segadapt.schema import dump_commented

    return dump_commented(cfg, sections)
