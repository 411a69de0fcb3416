"""`segadapt pseudo-label` and `segadapt evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from segadapt.cli.options import float_list, hw_pair
from segadapt.console import console
from segadapt.data.prepare.common import parse_resize
from segadapt.data.prepared import PreparedDataset
from segadapt.engine import evaluate as E
from segadapt.engine import pseudo_label as PL
from segadapt.engine.device import amp_dtype, resolve_device
from segadapt.engine.inference import Protocol
from segadapt.engine.metrics import format_table
from segadapt.errors import DataError, UsageError

WEIGHTS = typer.Option("student", "--weights", help="student, or teacher (the EMA model).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ...")
AMP = typer.Option("auto", "--amp", help="Mixed precision: auto (bf16/fp16 on CUDA), off, bf16, fp16.")


def _protocol(scales, flip, fusion, mode, crop, stride) -> Protocol:
    return Protocol(scales=float_list(scales, "--scales"), flip=flip, fusion=fusion, mode=mode,
                    crop=hw_pair(crop, "--crop"), stride=hw_pair(stride, "--stride")).validate()


def pseudo_label(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint whose predictions become the pseudo-labels."),
    data: Path = typer.Option(..., "--data", help="Prepared target dataset."),
    split: str = typer.Option("train", "--split"),
    out: Path = typer.Option(..., "--out", help="Pseudo-label folder."),
    scales: str = typer.Option("1.0,0.5", "--scales", help="Inference scales (DiGA: max of 1.0 and 0.5)."),
    flip: bool = typer.Option(False, "--flip/--no-flip"),
    fusion: str = typer.Option("max", "--fusion", help="max or mean over scales."),
    mode: str = typer.Option("whole", "--mode", help="whole or slide."),
    crop: Optional[str] = typer.Option(None, "--crop", help="Sliding window HxW."),
    stride: Optional[str] = typer.Option(None, "--stride", help="Sliding stride HxW."),
    weights: str = WEIGHTS,
    device: str = DEVICE,
    amp: str = AMP,
    size: Optional[str] = typer.Option(None, "--size", help="Run the model on images resized to WxH."),
    force: bool = typer.Option(False, "--force", help="Replace a folder made by another checkpoint or protocol."),
    workers: int = typer.Option(0, "--workers", help="Image-loading processes."),
):
    """Offline pseudo-labels, confidence maps and class prototypes for every target image (resumable)."""
    dev = resolve_device(device)
    dataset = PreparedDataset(data)
    manifest = PL.generate(ckpt, dataset, split, out, _protocol(scales, flip, fusion, mode, crop, stride), weights,
                           dev, force=force, workers=workers, amp=amp_dtype(amp, dev), size=parse_resize(size))
    typer.echo(json.dumps({"out": str(out), "num_images": manifest["num_images"], "complete": manifest["complete"],
                           "seconds": manifest["seconds"]}))


def evaluate(
    data: Path = typer.Option(..., "--data", help="Prepared dataset with labels."),
    split: str = typer.Option("val", "--split"),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint to evaluate."),
    pred_dir: Optional[Path] = typer.Option(None, "--pred-dir", help="Folder of <id>.png trainId predictions."),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
    classes: str = typer.Option("all", "--protocol",
                                help="Classes scored: all, 19, or the SYNTHIA protocols 16 / 13 (reports both)."),
    scales: str = typer.Option("1.0", "--scales"),
    flip: bool = typer.Option(False, "--flip/--no-flip"),
    fusion: str = typer.Option("mean", "--fusion", help="max or mean over scales."),
    mode: str = typer.Option("whole", "--mode", help="whole or slide."),
    crop: Optional[str] = typer.Option(None, "--crop", help="Sliding window HxW."),
    stride: Optional[str] = typer.Option(None, "--stride", help="Sliding stride HxW."),
    size: Optional[str] = typer.Option(None, "--size", help="Run the model on images resized to WxH."),
    weights: str = WEIGHTS,
    device: str = DEVICE,
    amp: str = AMP,
    workers: int = typer.Option(0, "--workers"),
    save_matrix: Optional[Path] = typer.Option(None, "--save-matrix",
                                               help="Also write the confusion matrix (pixel counts, classes) to this "
                                                    ".json file; picture it with `visualize confusion`."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --save-matrix file."),
):
    """Per-class IoU and mIoU from one confusion matrix over the split."""
    if (ckpt is None) == (pred_dir is None):
        raise UsageError("give exactly one of --ckpt or --pred-dir")
    if save_matrix is not None:  # checked before a long evaluation, not after
        if save_matrix.suffix.lower() != ".json":
            raise UsageError(f"--save-matrix writes JSON: give a .json file, got {save_matrix}")
        if save_matrix.exists() and not force:
            raise DataError(f"{save_matrix} exists; pass --force to replace it")
    dataset = PreparedDataset(data)
    if ckpt is not None:
        dev = resolve_device(device)
        result = E.evaluate_checkpoint(ckpt, dataset, split, _protocol(scales, flip, fusion, mode, crop, stride),
                                       weights, dev, workers=workers, amp=amp_dtype(amp, dev),
                                       size=parse_resize(size), classes=classes, save_matrix=save_matrix)
    else:
        result = E.evaluate_predictions(pred_dir, dataset, split, classes=classes, save_matrix=save_matrix)
    if json_out:
        typer.echo(json.dumps(result))
    else:
        from rich.console import Console

        Console().print(format_table(result, f"{split}: {result['num_images']} images"))
        console.print(f"protocol: {json.dumps(result['protocol'])}", highlight=False)
