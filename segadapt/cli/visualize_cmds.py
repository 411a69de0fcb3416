"""`segadapt visualize panels | curves | confusion`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from segadapt.cli.options import Weights, float_list, input_size, renamed
from segadapt.errors import UsageError

app = typer.Typer(no_args_is_help=True, help="Pictures: prediction panels, training curves, confusion matrices.")


@app.command("panels", no_args_is_help=True)
def panels(
    data: Path = typer.Option(..., "--data", help="Prepared dataset."),
    split: str = typer.Option("val", "--split"),
    out: Path = typer.Option(..., "--out", help="Folder for <id>.png panels and panels.png."),
    n: int = typer.Option(8, "--n", help="Number of images."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Predict with this checkpoint."),
    pred_dir: Optional[Path] = typer.Option(None, "--pred-dir", help="Show saved <id>.png predictions."),
    pseudo_labels: Optional[Path] = typer.Option(None, "--pseudo-labels", help="Show a pseudo-label folder."),
    weights: Weights = typer.Option(Weights.student, "--weights", help="student, or teacher (the EMA model)."),
    scales: str = typer.Option("1.0", "--scales"),
    size: Optional[str] = typer.Option(None, "--input-size", help="Run the model on images resized to HxW "
                                                                   "(height first)."),
    old_size: Optional[str] = renamed("--size", "--input-size"),  # was WxH
    device: str = typer.Option("auto", "--device"),
):
    """Image | ground truth | prediction | error | confidence for the first N images of a split."""
    from segadapt.data.prepared import PreparedDataset
    from segadapt.engine.device import resolve_device
    from segadapt.engine.inference import Protocol
    from segadapt.viz.render import render_panels

    written = render_panels(PreparedDataset(data), split, out, n, ckpt=ckpt, pred_dir=pred_dir,
                            pseudo_labels=pseudo_labels, weights=weights.value, device=resolve_device(device),
                            protocol=Protocol(scales=float_list(scales, "--scales")).validate(),
                            size=input_size(size))
    typer.echo(json.dumps({"written": [str(p) for p in written]}))


@app.command("curves", no_args_is_help=True)
def curves(
    runs: List[Path] = typer.Argument(..., help="Run folders (or metrics.jsonl files)."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    keys: Optional[str] = typer.Option(None, "--keys", help="Comma-separated metric keys (default: losses and lr)."),
    smooth: float = typer.Option(0.0, "--smooth", help="EMA smoothing weight in [0, 1)."),
):
    """Training curves from runs' metrics.jsonl, one line per run."""
    from segadapt.viz.curves import load_metrics, plot_curves

    if out.suffix.lower() != ".png":
        raise UsageError("--out must be a .png file")
    data = {}
    for r in runs:
        path = r / "metrics.jsonl" if r.is_dir() else r
        name = r.name if r.is_dir() else r.parent.name
        data[name if name not in data else str(r)] = load_metrics(path)
    plot_curves(data, out, keys=[k.strip() for k in keys.split(",")] if keys else None, smooth=smooth)
    typer.echo(json.dumps({"written": str(out)}))


@app.command("confusion", no_args_is_help=True)
def confusion(
    matrix: Path = typer.Argument(..., help="Confusion matrix saved by `evaluate --save-matrix FILE.json`."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    title: Optional[str] = typer.Option(None, "--title", help="Title (default: label space, images, mIoU)."),
):
    """The confusion matrix as a picture: rows = ground truth normalised to 1, cells in percent."""
    from segadapt.engine.evaluate import load_confusion
    from segadapt.viz.confusion import plot_confusion

    if out.suffix.lower() != ".png":
        raise UsageError("--out must be a .png file")
    plot_confusion(load_confusion(matrix), out, title=title)
    typer.echo(json.dumps({"written": str(out)}))
