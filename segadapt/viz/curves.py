"""Training curves from the ``metrics.jsonl`` logs that training writes (one JSON object a line)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from segadapt.data.io import read_text
from segadapt.engine.runlog import WALL_CLOCK_KEYS
from segadapt.errors import DataError, UsageError

# not plotted unless asked for with keys=: the x axis, and the clock fields (throughput, ETA, GPU memory)
EXCLUDED_KEYS = ("iter", *WALL_CLOCK_KEYS)


def load_metrics(jsonl_path: str | Path) -> list[dict]:
    """Records of a metrics log, in order.

    A last line that does not parse is skipped: a run killed mid-write leaves one. A bad line
    anywhere else means the file is corrupt (DataError), as does a missing file or one with no
    records."""
    path = Path(jsonl_path)
    text = read_text(path, "metrics file")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    records = []
    for k, (n, line) in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if k == len(lines) - 1:
                break  # truncated last line
            raise DataError(f"corrupt metrics file {path}, line {n}: {e}") from None
        if not isinstance(rec, dict):
            raise DataError(f"corrupt metrics file {path}, line {n}: expected a JSON object")
        records.append(rec)
    if not records:
        raise DataError(f"metrics file {path} has no records")
    return records


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def default_keys(runs: dict[str, list[dict]]) -> list[str]:
    """Every numeric key except iter and the clock fields: ``loss*`` first, then ``lr*``, then the rest
    (each group in order of first appearance)."""
    seen: dict[str, None] = {}
    for records in runs.values():
        for rec in records:
            for k, v in rec.items():
                if k not in EXCLUDED_KEYS and _is_number(v):
                    seen.setdefault(k, None)
    keys = list(seen)
    loss = [k for k in keys if k.startswith("loss")]
    lr = [k for k in keys if k.startswith("lr")]
    return loss + lr + [k for k in keys if k not in loss and k not in lr]


def ema(values: list[float], smooth: float) -> list[float]:
    """Exponential moving average, starting at the first value; NaNs are passed through without
    resetting the average."""
    out, s = [], None
    for v in values:
        if math.isnan(v):
            out.append(v)
            continue
        s = v if s is None else smooth * s + (1.0 - smooth) * v
        out.append(s)
    return out


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, rec in enumerate(records):
        v = rec.get(key)
        if not _is_number(v):
            continue  # keys logged only every N iterations (validation) are sparse
        x = rec.get("iter", i)
        xs.append(float(x) if _is_number(x) else float(i))
        ys.append(float(v) if math.isfinite(v) else math.nan)  # inf would wreck the y range
    return xs, ys


def plot_curves(runs: dict[str, list[dict]], out_png: str | Path, keys: list[str] | None = None,
                smooth: float = 0.0) -> Path:
    """One subplot per key, x = ``iter``, one line per run; saved atomically as PNG.

    ``smooth`` in [0, 1) is the EMA weight of the previous value (0 = raw); when smoothing, the
    raw curve is drawn faintly behind the smoothed one."""
    if not runs:
        raise UsageError("no runs to plot")
    if not 0.0 <= smooth < 1.0:
        raise UsageError(f"smooth must be in [0, 1), got {smooth}")
    keys = list(keys) if keys else default_keys(runs)
    if not keys:
        raise DataError("the metrics logs have no numeric keys to plot")

    import matplotlib

    matplotlib.use("Agg")  # here, not at package import: only plotting needs it
    from matplotlib.figure import Figure  # no pyplot: no global figure state to leak

    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes, keys):
        plotted = False
        for j, (name, records) in enumerate(runs.items()):
            xs, ys = _series(records, key)
            if not xs:
                continue
            color = colors[j % len(colors)]
            if smooth > 0:
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
                ys = ema(ys, smooth)
            ax.plot(xs, ys, color=color, label=name, linewidth=1.2)
            plotted = True
        ax.set_title(key)
        ax.set_xlabel("iter")
        ax.grid(True, alpha=0.3)
        if plotted and len(runs) > 1:
            ax.legend(fontsize="small")
        if not plotted:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return save_figure_png(fig, out_png, dpi=100)


def save_figure_png(fig, out_png: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically (temporary file, then rename)."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
