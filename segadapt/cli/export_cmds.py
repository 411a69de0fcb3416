"""`segadapt export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from segadapt.cli.options import Weights, choices, hw_pair
from segadapt.errors import UsageError

# segadapt.engine.export.FORMATS, spelt here so that --help need not import torch (tests/test_export.py
# checks that the two agree)
ExportFormat = choices("ExportFormat", ("onnx", "torchscript", "safetensors"))


def export(
    ckpt: Path = typer.Option(..., "--ckpt", help="Segmentation checkpoint (warmup / self-train)."),
    fmt: ExportFormat = typer.Option(..., "--format", help="onnx, torchscript, or safetensors (a folder)."),
    out: Path = typer.Option(..., "--out", help="Output file (.onnx / .pt), or folder for safetensors."),
    weights: Weights = typer.Option(Weights.student, "--weights", help="student, or teacher (the EMA model)."),
    check_images: Optional[Path] = typer.Option(None, "--check-images",
                                                help="Check the export on these images (default: generated ones)."),
    check_sizes: str = typer.Option("256x320,193x257", "--check-sizes",
                                    help="HxW sizes of the generated check batches (comma-separated)."),
    check_count: int = typer.Option(4, "--check-count", help="At most this many images of --check-images."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
):
    """Export the model with its normalisation (uint8 RGB in, logits at input size out), check it against
    PyTorch (argmax agreement >= 99.9 % or exit 1) and only then write --out."""
    sizes = [hw_pair(s.strip(), "--check-sizes") for s in check_sizes.split(",") if s.strip()]
    if not sizes:
        raise UsageError("--check-sizes needs at least one HxW")
    if check_count < 1:
        raise UsageError("--check-count must be at least 1")
    from segadapt.engine import export as X  # torch and the models: imported here so --help stays fast

    try:
        report = X.export_model(ckpt, fmt.value, out, weights=weights.value, check_images=check_images, force=force,
                                check_sizes=sizes, check_count=check_count)
    except X.ExportCheckError as e:  # show the numbers, then fail
        _print(e.report, json_out)
        raise
    _print(report, json_out)


def _print(report: dict, json_out: bool) -> None:
    from segadapt.engine import export as X

    typer.echo(json.dumps(report) if json_out else X.format_report(report))
