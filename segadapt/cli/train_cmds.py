"""`segadapt warmup` and `segadapt self-train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from segadapt.cli.options import with_options

CONFIG = typer.Option(..., "--config", "-c", help="Packaged config name (e.g. synthetic/diga_warmup) or a YAML path.")
SET = typer.Option(None, "--set", help="Override a config value: --set optim.lr=0.01 (repeatable).")
METHOD = typer.Option(None, "--method", help="Method to run (overrides the config's `method`).")
ITERS = typer.Option(None, "--iters", help="Training iterations (overrides optim.iters).")
RESUME = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.")
FORCE = typer.Option(False, "--force", help="Start over, replacing an earlier run in --out.")
# the run options warm-up and self-training share
RUN_OPTIONS = {"set_": (Optional[List[str]], SET), "method": (Optional[str], METHOD), "iters": (Optional[int], ITERS),
               "resume": (bool, RESUME), "force": (bool, FORCE)}


def _run_args(run: dict) -> dict:
    """The pipeline's keyword arguments from the values of RUN_OPTIONS."""
    return {"overrides": run["set_"] or [], "method": run["method"], "iters": run["iters"], "resume": run["resume"],
            "force": run["force"]}


@with_options(RUN_OPTIONS)
def warmup(
    config: str = CONFIG,
    source: Path = typer.Option(..., "--source", help="Prepared labelled source dataset."),
    target: Optional[Path] = typer.Option(None, "--target", help="Prepared target dataset (images only are used)."),
    out: Path = typer.Option(..., "--out", help="Run folder: last.pt, metrics.jsonl, config.yaml."),
    **run,
):
    """Stage 1: train on labelled source (and unlabelled target images) from scratch or ImageNet weights."""
    from segadapt import pipeline  # torch and the engine: imported here so --help stays fast

    result = pipeline.run_warmup(config=config, source=source, target=target, out=out, **_run_args(run))
    typer.echo(json.dumps({"checkpoint": str(out / "last.pt"), **result}))


@with_options(RUN_OPTIONS)
def self_train(
    config: str = CONFIG,
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint to start from (warm-up or previous round)."),
    pseudo_labels: Path = typer.Option(..., "--pseudo-labels", help="Pseudo-label folder made from --ckpt."),
    source: Path = typer.Option(..., "--source", help="Prepared labelled source dataset."),
    target: Path = typer.Option(..., "--target", help="Prepared target dataset."),
    out: Path = typer.Option(..., "--out", help="Run folder."),
    allow_other_checkpoint: bool = typer.Option(False, "--allow-other-checkpoint",
                                                help="Accept pseudo-labels made by a checkpoint other than --ckpt."),
    **run,
):
    """Stage 2: self-train on target pseudo-labels; run again from its checkpoint for a further round."""
    from segadapt import pipeline  # torch and the engine: imported here so --help stays fast

    result = pipeline.run_self_train(config=config, ckpt=ckpt, pseudo_labels=pseudo_labels, source=source,
                                     target=target, out=out, allow_other_checkpoint=allow_other_checkpoint,
                                     **_run_args(run))
    typer.echo(json.dumps({"checkpoint": str(out / "last.pt"), **result}))
