"""`segadapt pseudo-label`, `segadapt evaluate` and `segadapt predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from segadapt.cli.options import (Amp, EvalProtocol, Fusion, Mode, Weights, float_list, hw_pair, input_size, renamed,
                                  with_options)
from segadapt.errors import DataError, UsageError

# torch, cv2 and the engine are imported inside each command: --help and usage errors stay fast
if TYPE_CHECKING:
    from segadapt.engine.inference import Protocol

WEIGHTS = typer.Option(Weights.student, "--weights", help="student, or teacher (the EMA model).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ...")
AMP = typer.Option(Amp.auto, "--amp", case_sensitive=False,
                   help="Mixed precision: auto (bf16/fp16 on CUDA), off, bf16, fp16.")
# evaluate's inference settings, shared with `predict` so both run the model the same way
SCALES = typer.Option("1.0", "--scales", help="Inference scales, e.g. 1.0,0.75.")
FLIP = typer.Option(False, "--flip/--no-flip")
FUSION = typer.Option(Fusion.mean, "--fusion", help="max or mean over scales.")
MODE = typer.Option(Mode.whole, "--mode", help="whole or slide.")
CROP = typer.Option(None, "--crop", help="Sliding window HxW.")
STRIDE = typer.Option(None, "--stride", help="Sliding stride HxW.")
INPUT_SIZE = typer.Option(None, "--input-size", help="Run the model on images resized to HxW (height first).")
OLD_SIZE = renamed("--size", "--input-size")  # was WxH
INFERENCE_OPTIONS = {"scales": (str, SCALES), "flip": (bool, FLIP), "fusion": (Fusion, FUSION), "mode": (Mode, MODE),
                     "crop": (Optional[str], CROP), "stride": (Optional[str], STRIDE),
                     "size": (Optional[str], INPUT_SIZE), "old_size": (Optional[str], OLD_SIZE),
                     "weights": (Weights, WEIGHTS), "device": (str, DEVICE), "amp": (Amp, AMP)}


def _protocol(scales, flip, fusion, mode, crop, stride) -> Protocol:
    from segadapt.engine.inference import Protocol

    return Protocol(scales=float_list(scales, "--scales"), flip=flip, fusion=fusion.value, mode=mode.value,
                    crop=hw_pair(crop, "--crop"), stride=hw_pair(stride, "--stride")).validate()


def pseudo_label(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint whose predictions become the pseudo-labels."),
    data: Path = typer.Option(..., "--data", help="Prepared target dataset."),
    split: str = typer.Option("train", "--split"),
    out: Path = typer.Option(..., "--out", help="Pseudo-label folder."),
    scales: str = typer.Option("1.0,0.5", "--scales", help="Inference scales (DiGA: max of 1.0 and 0.5)."),
    flip: bool = typer.Option(False, "--flip/--no-flip"),
    fusion: Fusion = typer.Option(Fusion.max, "--fusion", help="max or mean over scales."),
    mode: Mode = MODE,
    crop: Optional[str] = typer.Option(None, "--crop", help="Sliding window HxW."),
    stride: Optional[str] = typer.Option(None, "--stride", help="Sliding stride HxW."),
    weights: Weights = WEIGHTS,
    device: str = DEVICE,
    amp: Amp = AMP,
    size: Optional[str] = INPUT_SIZE,
    old_size: Optional[str] = OLD_SIZE,
    force: bool = typer.Option(False, "--force", help="Replace a folder made by another checkpoint or protocol."),
    workers: int = typer.Option(0, "--workers", help="Image-loading processes."),
):
    """Offline pseudo-labels, confidence maps and class prototypes for every target image (resumable)."""
    from segadapt.data.prepared import PreparedDataset
    from segadapt.engine import pseudo_label as PL
    from segadapt.engine.device import amp_dtype, resolve_device

    dev = resolve_device(device)
    dataset = PreparedDataset(data)
    manifest = PL.generate(ckpt, dataset, split, out, _protocol(scales, flip, fusion, mode, crop, stride),
                           weights.value, dev, force=force, workers=workers, amp=amp_dtype(amp.value, dev),
                           size=input_size(size))
    typer.echo(json.dumps({"out": str(out), "num_images": manifest["num_images"], "complete": manifest["complete"],
                           "seconds": manifest["seconds"]}))


@with_options(INFERENCE_OPTIONS)
def evaluate(
    data: Path = typer.Option(..., "--data", help="Prepared dataset with labels."),
    split: str = typer.Option("val", "--split"),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint to evaluate."),
    pred_dir: Optional[Path] = typer.Option(None, "--pred-dir", help="Folder of <id>.png trainId predictions."),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
    classes: EvalProtocol = typer.Option(EvalProtocol["all"], "--protocol",
                                help="Classes scored: all, 19, or the SYNTHIA protocols 16 / 13 (reports both)."),
    workers: int = typer.Option(0, "--workers"),
    save_matrix: Optional[Path] = typer.Option(None, "--save-matrix",
                                               help="Also write the confusion matrix (pixel counts, classes) to this "
                                                    ".json file; picture it with `visualize confusion`."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --save-matrix file."),
    label_cache: bool = typer.Option(True, "--label-cache/--no-label-cache",
                                     help="--pred-dir: keep the decoded ground truth in labels/<split>.labelcache "
                                          "(built on the first run, rebuilt when a label file changes)."),
    **inference,
):
    """Per-class IoU and mIoU from one confusion matrix over the split."""
    scales, flip, fusion, mode, crop, stride, size, _, weights, device, amp = (inference[k] for k in INFERENCE_OPTIONS)
    if (ckpt is None) == (pred_dir is None):
        raise UsageError("give exactly one of --ckpt or --pred-dir")
    if save_matrix is not None:  # checked before a long evaluation, not after
        if save_matrix.suffix.lower() != ".json":
            raise UsageError(f"--save-matrix writes JSON: give a .json file, got {save_matrix}")
        if save_matrix.exists() and not force:
            raise DataError(f"{save_matrix} exists; pass --force to replace it")
    from segadapt.data.prepared import PreparedDataset
    from segadapt.engine import evaluate as E
    from segadapt.engine.device import amp_dtype, resolve_device

    dataset = PreparedDataset(data)
    classes = classes.value
    if ckpt is not None:
        dev = resolve_device(device)
        result = E.evaluate_checkpoint(ckpt, dataset, split, _protocol(scales, flip, fusion, mode, crop, stride),
                                       weights.value, dev, workers=workers, amp=amp_dtype(amp.value, dev),
                                       size=input_size(size), classes=classes, save_matrix=save_matrix)
    else:
        result = E.evaluate_predictions(pred_dir, dataset, split, classes=classes, save_matrix=save_matrix,
                                        label_cache=label_cache)
    if json_out:
        typer.echo(json.dumps(result))
    else:
        from rich.console import Console

        from segadapt.console import console
        from segadapt.engine.metrics import format_table

        Console().print(format_table(result, f"{split}: {result['num_images']} images"))
        console.print(f"protocol: {json.dumps(result['protocol'])}", highlight=False)


@with_options(INFERENCE_OPTIONS)
def predict(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Trained segmentation checkpoint or safetensors "
                                                            "export folder (label space and palette come from it)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Instead of --ckpt: an .onnx or TorchScript file "
                                                              "made by segadapt export (run with ONNX Runtime / "
                                                              "TorchScript)."),
    inputs: Optional[List[str]] = typer.Option(None, "--input", "-i",
                                               help="Image, folder (recursive), glob ('imgs/**/*.jpg') or video "
                                                    "(mp4, avi, ...); repeat for more."),
    more: Optional[List[str]] = typer.Argument(None, help="More inputs (what a shell glob after --input expands to).",
                                               show_default=False),
    out: Path = typer.Option(..., "--out", help="Output folder: labels/, color/, overlay/, confidence/, videos/."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images (of one size) or frames per forward pass."),
    confidence: bool = typer.Option(False, "--confidence", help="Also write confidence/<key>.png (uint16, "
                                                                "max softmax probability * 65535)."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of the colour map in the overlay (0..1)."),
    legend: bool = typer.Option(True, "--legend/--no-legend", help="Draw the classes present into the overlay."),
    writers: int = typer.Option(2, "--writers", help="Threads that colour, blend and write the outputs."),
    force: bool = typer.Option(False, "--force", help="Redo finished outputs; replace another model's folder."),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON summary on stdout."),
    **inference,
):
    """Predict images, folders, globs and videos: trainId, colour and overlay PNGs (+ confidence), and an
    overlay video per video (resumable; unreadable inputs are reported, skipped, and exit 1 at the end)."""
    scales, flip, fusion, mode, crop, stride, size, _, weights, device, amp = (inference[k] for k in INFERENCE_OPTIONS)
    if (ckpt is None) == (model is None):
        raise UsageError("give exactly one of --ckpt (a checkpoint or export folder) and --model (an .onnx or "
                         "TorchScript export)")
    from segadapt.engine.device import amp_dtype, resolve_device
    from segadapt.engine.predict import predict as run_predict

    dev = resolve_device(device)
    summary = run_predict(ckpt or model, [*(inputs or []), *(more or [])], out,
                          _protocol(scales, flip, fusion, mode, crop, stride), weights.value, dev,
                          amp=amp_dtype(amp.value, dev), size=input_size(size), batch_size=batch_size,
                          confidence=confidence, force=force, alpha=alpha, legend=legend, workers=writers,
                          exported=model is not None)
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        shares = sorted(summary["class_pixel_share"].items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares[:5] if v > 0)
        typer.echo(f"{summary['images']} images, {summary['frames']} video frames -> {summary['out']} "
                   f"({summary['computed']} computed, {summary['skipped']} already done, {len(summary['failed'])} "
                   f"failed, {summary['seconds']:.1f}s); pixels: {top or 'none'}")
    if summary["failed"]:
        f = summary["failed"][0]
        first = f"{f['input']}" + (f" frame {f['frame']}" if f["frame"] is not None else "")
        raise DataError(f"{len(summary['failed'])} inputs or frames could not be read and were skipped "
                        f"(first: {first}); everything else was written")
