"""`segadapt import-checkpoint`."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def import_checkpoint(
    source: str = typer.Option(..., "--from", help="Whose checkpoint: diga, proda or daformer."),
    weights: Path = typer.Option(..., "--weights", help="The official file (DiGA student.pth, ProDA *_model.pkl, "
                                                        "DAFormer latest.pth / iter_N.pth)."),
    out: Path = typer.Option(..., "--out", help="The segadapt checkpoint to write, e.g. RUN/last.pt."),
    label_space: str = typer.Option("cityscapes19", "--label-space", help="Label space the model predicts."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
):
    """Convert a released DiGA / ProDA / DAFormer checkpoint (official key names, mapped strictly) into a
    segadapt checkpoint for evaluate, pseudo-label and self-train."""
    from segadapt.engine.import_ckpt import import_checkpoint as run_import  # torch: imported here, --help stays fast

    typer.echo(json.dumps(run_import(source, weights, out, label_space=label_space, force=force)))
