"""Progress and logs go to stderr (stdout is reserved for results), via rich."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# soft_wrap: a log line stays one line (rich would break long paths at 80 columns in piped logs)
console = Console(stderr=True, soft_wrap=True)
_muted = False  # set on every rank but 0 of a multi-process run: one log, not N interleaved copies


def mute() -> None:
    global _muted
    _muted = True


def log(message: str) -> None:
    if not _muted:
        console.print(message, highlight=False)


@contextmanager
def progress(total: int, description: str):
    """Yields ``advance(n=1, **fields)``. Silent when stderr is not a terminal or SEGADAPT_QUIET is set,
    so logs of shell pipelines are not flooded with bar redraws."""
    enabled = sys.stderr.isatty() and not os.environ.get("SEGADAPT_QUIET") and not _muted
    if not enabled:
        yield lambda n=1, **kw: None
        return
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, console=console, transient=False) as p:
        task = p.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str = "") -> None:
            p.update(task, advance=n, info=info)

        yield advance
