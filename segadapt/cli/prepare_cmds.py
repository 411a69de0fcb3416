"""`segadapt prepare-data KIND`: raw dataset -> prepared folder (trainId labels, split lists, stats)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from segadapt.errors import UsageError

KINDS = ("gta5", "cityscapes", "synthia", "bdd100k", "mapillary", "camvid", "folder", "synthetic")
# options that only some kinds take: option -> kinds
KIND_OPTIONS = {"--splits": ("cityscapes", "bdd100k", "mapillary", "camvid", "folder"), "--sequences": ("camvid",),
                "--version": ("mapillary",), "--classes": ("folder",)}


def prepare_data(
    kind: str = typer.Argument(..., help=f"Dataset kind: {', '.join(KINDS)}."),
    out: Path = typer.Option(..., "--out", help="Prepared folder to write (synthetic: holds raw/, source/, target/)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Raw dataset folder (never written to)."),
    resize: Optional[str] = typer.Option(None, "--resize", help="Write resized copies, WxH (e.g. 1280x720)."),
    splits: Optional[str] = typer.Option(None, "--splits",
                                         help="Comma-separated splits (cityscapes, bdd100k, mapillary, camvid, folder)."),
    sequences: Optional[str] = typer.Option(None, "--sequences",
                                            help="camvid: keep only these sequences, e.g. 0001TP,0006R0."),
    version: Optional[str] = typer.Option(None, "--version", help="mapillary: label version (v1.2, the default)."),
    classes: Optional[Path] = typer.Option(None, "--classes",
                                           help="folder: YAML file naming the raw label values (name, classes, ignore)."),
    workers: int = typer.Option(2, "--workers", help="Parallel conversion processes (0 = in-process)."),
    force: bool = typer.Option(False, "--force", help="Redo finished work / replace a different preparation."),
    seed: int = typer.Option(0, "--seed", help="synthetic: scene seed."),
    n_source: int = typer.Option(500, "--n-source", help="synthetic: source images."),
    n_target_train: int = typer.Option(300, "--n-target-train", help="synthetic: target train images."),
    n_target_val: int = typer.Option(100, "--n-target-val", help="synthetic: target val images."),
    size: str = typer.Option("256x128", "--size", help="synthetic: image size WxH."),
    shift: float = typer.Option(1.0, "--shift", help="synthetic: appearance shift strength in [0, 1]."),
):
    """Convert a raw dataset (or generate the synthetic benchmark) into a prepared folder."""
    from segadapt.data import prepare as P

    if kind not in KINDS:
        raise UsageError(f"unknown dataset kind '{kind}' (known: {', '.join(KINDS)})")
    if workers < 0:
        raise UsageError("--workers must be >= 0")
    given = {"--splits": splits, "--sequences": sequences, "--version": version, "--classes": classes}
    for opt, value in given.items():
        if value is not None and kind not in KIND_OPTIONS[opt]:
            raise UsageError(f"{opt} does not apply to {kind} (only to {', '.join(KIND_OPTIONS[opt])})")
    if kind == "mapillary":
        from segadapt.data.prepare.mapillary import check_version

        check_version(version or "v1.2")  # before --root is looked at: a usage error comes first
    if kind == "synthetic":
        from segadapt.data.prepare.synthetic import prepare_synthetic

        w, h = P.parse_resize(size)
        report = prepare_synthetic(out, seed=seed, n_source=n_source, n_target_train=n_target_train,
                                   n_target_val=n_target_val, width=w, height=h, shift=shift, workers=workers,
                                   force=force)
    else:
        if root is None:
            raise UsageError(f"prepare-data {kind} needs --root RAW")
        common = dict(resize=resize, workers=workers, force=force)
        split_list = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
        if splits is not None and not split_list:
            raise UsageError("--splits is empty")
        if kind == "gta5":
            report = P.prepare_gta5(root, out, **common)
        elif kind == "synthia":
            report = P.prepare_synthia(root, out, **common)
        elif kind == "cityscapes":
            report = P.prepare_cityscapes(root, out, splits=split_list, **common)
        elif kind == "bdd100k":
            report = P.prepare_bdd100k(root, out, splits=split_list, **common)
        elif kind == "mapillary":
            report = P.prepare_mapillary(root, out, splits=split_list, version=version or "v1.2", **common)
        elif kind == "camvid":
            report = P.prepare_camvid(root, out, splits=split_list, sequences=sequences, **common)
        else:
            if classes is None:
                raise UsageError("prepare-data folder needs --classes FILE (YAML: name, classes, ignore)")
            report = P.prepare_folder(root, out, classes=classes, splits=split_list, **common)
    typer.echo(json.dumps({"out": str(out), "kept": report.get("kept"),
                           "skipped": len(report.get("skipped", [])) if isinstance(report.get("skipped"), list)
                           else report.get("skipped")}))
