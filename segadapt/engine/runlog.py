"""What people watch while a stage trains, beside the losses of ``metrics.jsonl``: throughput, ETA
and peak GPU memory of each logging window, and an optional TensorBoard mirror of the log
(``log.tensorboard: true`` in the config, files in ``RUN/tensorboard/``).

The mirror is rebuilt from ``metrics.jsonl`` whenever a stage (re)starts: the loop has already cut
the log back to the records before the resumed iteration, so the event files hold each step once,
with the values of the log, whatever happened to earlier event files (a kill, a resume). This is
stronger than ``SummaryWriter(purge_step=...)``, which only asks readers to hide later steps: the
old events stay in the files, and other readers (pandas exports, tbparse) still see them twice.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from segadapt import config as C
from segadapt.errors import UsageError

# fields of a metrics.jsonl record that are measured with the clock: they differ between two runs
# (an uninterrupted run and a resumed one) even when every loss is bit-identical
WALL_CLOCK_KEYS = ("time", "img_per_s", "eta_s", "gpu_mem_peak_mib")

TENSORBOARD_DIR = "tensorboard"
_EVENTS_PREFIX = "events.out.tfevents."


def tensorboard_enabled(cfg: dict) -> bool:
    return C.get(cfg, "log.tensorboard", False) is True


def check_log_config(cfg: dict) -> None:
    """The ``log`` section: a bad value, or TensorBoard asked for but not installed, is a one-line
    usage error before anything is built or trained."""
    section = cfg.get("log", {})
    if section is None:
        return
    if not isinstance(section, dict):
        raise UsageError(f"config 'log' must be a section (log.tensorboard: true/false), got {section!r}")
    value = section.get("tensorboard", False)
    if not isinstance(value, bool):
        raise UsageError(f"log.tensorboard must be true or false, got {value!r}")
    if value:
        require_tensorboard()


def require_tensorboard():
    """torch's SummaryWriter, or a UsageError saying how to install what it needs."""
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs the package itself
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UsageError(f"log.tensorboard: true needs the tensorboard package ({str(e).splitlines()[0]}); "
                         "install it with pip install 'segadapt[tensorboard]' or set log.tensorboard=false") from None
    return SummaryWriter


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_records(path: Path) -> list[dict]:
    """The records of a metrics log, skipping lines a kill cut short."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and _is_number(rec.get("iter")):
            records.append(rec)
    return records


def open_mirror(run_dir: Path, start: int, enabled: bool, is_main: bool = True) -> "TensorBoardMirror | None":
    """The TensorBoard mirror of ``run_dir/metrics.jsonl`` (call after the log was cut back for
    ``start``), or None when off. A fresh start (0, also after --force) drops the curves of an
    earlier run even with the mirror off, as the loop drops its log."""
    if not is_main:
        return None
    if enabled:
        return TensorBoardMirror(run_dir, read_records(Path(run_dir) / "metrics.jsonl"))
    folder = Path(run_dir) / TENSORBOARD_DIR
    if start == 0 and folder.is_dir():
        for p in folder.glob(f"{_EVENTS_PREFIX}*"):
            p.unlink(missing_ok=True)
    return None


class TensorBoardMirror:
    """Every numeric field of each metrics record as a TensorBoard scalar (tag = key, step = iter)."""

    def __init__(self, run_dir: Path, records: list[dict]):
        writer_cls = require_tensorboard()
        folder = Path(run_dir) / TENSORBOARD_DIR
        folder.mkdir(parents=True, exist_ok=True)
        old = [p for p in folder.iterdir() if p.name.startswith(_EVENTS_PREFIX)]
        # a fresh event file holding the kept records; only once it is on disk do the old files go,
        # so a kill in between leaves duplicates that the next start rebuilds away again
        self.writer = writer_cls(log_dir=str(folder), flush_secs=30)
        for rec in records:
            self._add(rec)
        self.writer.flush()
        for p in old:  # never the new file: its name holds the time, host, pid and a per-process counter
            p.unlink(missing_ok=True)

    def _add(self, rec: dict) -> None:
        step = int(rec["iter"])
        for key, value in rec.items():
            if key != "iter" and _is_number(value):
                self.writer.add_scalar(key, float(value), step)

    def write(self, rec: dict) -> None:
        self._add(rec)
        self.writer.flush()  # one small write per logging window: watchers see it now, a kill loses nothing

    def close(self) -> None:
        self.writer.close()


class WindowMeter:
    """Throughput, ETA and peak GPU memory between two metrics records (wall-clock quantities).

    - ``img_per_s``: images of the global batch (``data.batch_size`` summed over processes, per
      domain) times the iterations of the window, over the window's seconds (data loading and
      checkpoint saves included: what the run really achieves).
    - ``eta_s``: seconds to the end of the stage at the mean pace since this process started it.
    - ``gpu_mem_peak_mib``: on CUDA, ``torch.cuda.max_memory_allocated`` over the window (reset at
      each record), of this process's GPU (rank 0's when several train).
    """

    def __init__(self, start: int, iters: int, batch_size: int | None = None, device=None):
        import torch  # here: the visualize commands import this module's key names without torch

        self.start, self.iters, self.batch_size = start, iters, batch_size
        self.device = torch.device(device) if device is not None else None
        self.cuda = self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t_begin = self.t_window = time.perf_counter()
        self.last = start - 1  # the last iteration of the previous window

    def window(self, it: int) -> dict:
        """Fields for the record written after iteration ``it``; starts the next window."""
        import torch

        now = time.perf_counter()
        done, seconds = it - self.last, now - self.t_window
        out = {}
        if self.batch_size is not None and seconds > 0:
            out["img_per_s"] = round(done * self.batch_size / seconds, 3)
        per_iter = (now - self.t_begin) / (it - self.start + 1)
        out["eta_s"] = round(max(self.iters - 1 - it, 0) * per_iter, 1)
        if self.cuda:
            out["gpu_mem_peak_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t_window, self.last = now, it
        return {k: v for k, v in out.items() if math.isfinite(v)}
