"""The iteration loop every training stage shares (segmentation stages and the image translator).

It owns what must behave the same in all of them so that a long job survives: the metrics log that
a resumed run rewrites to match the uninterrupted one, checkpoints every ``ckpt_every`` iterations
and at the end, a graceful stop on SIGTERM or a first Ctrl-C (finish the iteration, save, exit with
a one-line message), and an interrupt inside an iteration that keeps every finished iteration. The
stage supplies one function that runs an iteration.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from segadapt.console import log, progress
from segadapt.data.io import write_text
from segadapt.engine.runlog import WindowMeter, open_mirror
from segadapt.errors import DataError


def open_metrics(path: Path, start: int, is_main: bool = True):
    """metrics.jsonl for appending; on resume, records at or past the checkpoint are dropped so the log
    matches the uninterrupted run. Ranks other than 0 write nowhere."""
    if not is_main:
        return open(os.devnull, "w")
    if start > 0 and path.exists():
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("iter", 0) < start:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        write_text(path, "".join(f"{line}\n" for line in keep))
    elif start == 0:
        path.unlink(missing_ok=True)
    return open(path, "a", buffering=1)


class StopFlag:
    signal: str | None = None


@contextlib.contextmanager
def graceful_stop():
    """SIGTERM (cluster pre-emption) or a first Ctrl-C finish the current iteration, save, and stop; a
    second Ctrl-C stops at once."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        if flag.signal is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        flag.signal = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# one iteration: (iteration, stop flag) -> (learning rate, logs, stop now?); logs hold plain floats
StepFn = Callable[[int, StopFlag], "tuple[float, dict, bool]"]


def run_iterations(step: StepFn, *, start: int, iters: int, out: Path, save: Callable[[int], None],
                   log_every: int, ckpt_every: int, label: str, info: Callable[[dict], str],
                   in_update: Callable[[], bool], is_main: bool = True, noun: str = "iterations",
                   batch_size: int | None = None, device=None, tensorboard: bool = False) -> dict:
    """Runs iterations ``start .. iters - 1`` of a stage and saves its final checkpoint.

    ``in_update()`` says whether an interrupt now would land between the optimiser step and the end
    of the iteration (EMA updates ...): then no consistent state exists, and the periodic checkpoint
    is what remains. Each record also holds the window's throughput (``batch_size`` = the global
    batch), ETA and, on CUDA, peak memory (``runlog.WindowMeter``); ``tensorboard`` mirrors the
    records into ``out/tensorboard`` (rank 0), rebuilt from the kept log on resume.
    Returns ``{"iterations": iters, **logs of the last iteration}``."""
    metrics = open_metrics(out / "metrics.jsonl", start, is_main)
    try:
        mirror = open_mirror(out, start, tensorboard, is_main)
    except BaseException:
        metrics.close()
        raise
    meter = WindowMeter(start, iters, batch_size, device)
    it, last, t0 = start, {}, time.time()
    with graceful_stop() as stop:
        try:
            with progress(iters - start, label) as advance:
                for it in range(start, iters):
                    lr, logs, stopping = step(it, stop)
                    last = logs
                    if it % log_every == 0 or it == iters - 1:
                        record = {"iter": it, "lr": lr, **logs, "time": round(time.time() - t0, 3), **meter.window(it)}
                        metrics.write(json.dumps(record) + "\n")
                        if mirror is not None:
                            mirror.write(record)
                    advance(1, info=info(logs))
                    if stopping and it + 1 < iters:
                        save(it + 1)
                        raise DataError(f"stopped by {stop.signal or 'a signal to another rank'} after iteration "
                                        f"{it}; state saved in {out / 'last.pt'}, continue with --resume")
                    if (it + 1) % ckpt_every == 0 and it + 1 < iters:
                        save(it + 1)
        except KeyboardInterrupt:
            # an interrupt inside the forward/backward pass left the weights untouched: keep every
            # finished iteration; one during the update cannot be undone, so the periodic checkpoint stays
            if not in_update():
                save(it)
                raise DataError(f"interrupted at iteration {it}; state saved, continue with --resume") from None
            raise DataError(f"interrupted at iteration {it}; continue from the last checkpoint with --resume") \
                from None
        finally:
            metrics.close()
            if mirror is not None:
                mirror.close()
    save(iters)
    log(f"finished {iters} {noun} in {time.time() - t0:.1f}s; checkpoint {out / 'last.pt'}")
    return {"iterations": iters, **last}
