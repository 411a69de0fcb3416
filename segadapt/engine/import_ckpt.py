"""`segadapt import-checkpoint`: an official DiGA / ProDA / DAFormer checkpoint as a segadapt checkpoint.

The result has the payload layout the trainer writes (``model``, ``teacher``, ``label_space``,
``model_spec``, ``config``, ``provenance`` ...; no optimiser state: it is a start, not a run to resume), so
``evaluate``, ``pseudo-label`` and ``self-train --ckpt`` read it like one of ours. The key mapping is
strict (:mod:`segadapt.models.official_keys`): a file that does not hold exactly the official layout, or
whose classifier does not fit the label space, is refused with one line and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import torch

from segadapt.config import provenance
from segadapt.data.labelspace import get_label_space
from segadapt.engine.checkpoint import file_sha256, save_checkpoint
from segadapt.errors import DataError, UsageError
from segadapt.models import official_keys as OK
from segadapt.models.caffe_resnet import load_exact
from segadapt.models.segmenter import build_segmenter


def _numpy_scalar_globals() -> list:
    """ProDA's files hold ``best_iou`` as a numpy float: allow exactly numpy's scalar and dtype
    reconstructors (under both module names numpy has used), nothing else, in the weights-only loader."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *{type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32)}]


def _read(path: Path):
    if not path.is_file():
        raise DataError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from None


def import_checkpoint(source: str, weights: Path, out: Path, label_space: str = "cityscapes19",
                      force: bool = False) -> dict:
    """Convert ``weights`` (official ``source`` layout) into a segadapt checkpoint at ``out``.

    Returns a summary (spec, classes, which weights were found). Raises UsageError for bad arguments and
    DataError for a file that does not fit; ``out`` is written atomically and only when everything fits."""
    if source not in OK.SOURCES:
        raise UsageError(f"--from must be one of {', '.join(OK.SOURCES)}, got {source!r}")
    weights, out = Path(weights), Path(out)
    if out.suffix != ".pt":
        raise UsageError(f"--out must name a .pt file (e.g. RUN/last.pt), got {out}")
    if out.exists() and not force:
        raise DataError(f"{out} already exists; pass --force to overwrite it")
    space = get_label_space(label_space)
    parts = OK.split_official(_read(weights), source, str(weights))
    if "student" not in parts:
        raise DataError(f"{weights} has an EMA teacher but no student ('model.*') weights")
    spec, num_classes = OK.official_spec(parts["student"][1], source, str(weights))
    if num_classes != space.num_classes:
        raise DataError(f"{weights} predicts {num_classes} classes, label space '{space.name}' has "
                        f"{space.num_classes}; pass the --label-space it was trained in")
    states = {}
    for name, (prefix, state) in parts.items():
        mapped = OK.to_segadapt(state, source, str(weights))  # unknown keys fail before the model is built
        model = build_segmenter(spec, num_classes)
        load_exact(model, mapped, str(weights),
                   rename=lambda k, p=prefix: p + OK.official_name(k, source))
        states[name] = model.state_dict()
    resolved = model.spec
    save_checkpoint(out, {
        "stage": "imported",
        "method": source,
        "iteration": 0,
        "model": states["student"],
        "teacher": states.get("teacher"),
        "modules": {},
        "method_state": {},
        "label_space": space.to_dict(),
        "model_spec": resolved,
        "config": {"model": {k: v for k, v in resolved.items() if k != "num_classes"}},
        "provenance": provenance(),
        "imported_from": {"source": source, "file": str(weights.resolve()), "sha256": file_sha256(weights)},
    })
    return {"out": str(out), "source": source, "model_spec": resolved, "label_space": space.name,
            "teacher": "teacher" in states}
