"""`segadapt train-translator`: the source -> target image translator of DiGA's CDMix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from segadapt.cli.train_cmds import FORCE, ITERS, RESUME, SET


def train_translator(
    config: str = typer.Option(..., "--config", "-c",
                               help="Packaged config (e.g. synthetic/translator) or a YAML path."),
    source: Path = typer.Option(..., "--source", help="Prepared labelled source dataset (labels mark semantic edges)."),
    target: Path = typer.Option(..., "--target", help="Prepared target dataset (images only are used)."),
    out: Path = typer.Option(..., "--out", help="Run folder: last.pt, metrics.jsonl, config.yaml."),
    set_: Optional[List[str]] = SET,
    iters: Optional[int] = ITERS,
    resume: bool = RESUME,
    force: bool = FORCE,
):
    """Train a CycleGAN translator (with DiGA's semantic-edge loss); DiGA uses its generator through
    --set diga.translator=RUN/last.pt."""
    from segadapt.translation.train import run_train_translator

    result = run_train_translator(config=config, source=source, target=target, out=out, overrides=set_ or [],
                                  iters=iters, resume=resume, force=force)
    typer.echo(json.dumps({"checkpoint": str(out / "last.pt"), **result}))

