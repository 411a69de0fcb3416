"""Scoring: one confusion matrix accumulated over the whole split, at label resolution."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from segadapt.console import progress
from segadapt.data import label_cache as LC
from segadapt.data.datasets import InferenceImages
from segadapt.data.io import read_json, read_label, write_json
from segadapt.data.labelspace import protocol_indices
from segadapt.engine import distributed as D
from segadapt.engine.inference import Protocol, infer, load_model
from segadapt.engine.metrics import ConfusionMatrix, compute
from segadapt.errors import DataError

MATRIX_FORMAT = "segadapt-confusion"


def save_confusion(path, cm: ConfusionMatrix, label_space, result: dict) -> None:
    """The split's confusion matrix as JSON (atomic; rank 0 under torchrun): raw pixel counts,
    rows = ground truth, columns = prediction, in the label space's class order, plus ``missed``
    (valid pixels predicted outside the classes) and what was evaluated."""
    if not D.info().is_main:
        return
    write_json(path, {"format": MATRIX_FORMAT, "version": 1, "label_space": label_space.name,
                      "classes": list(label_space.classes), "rows": "ground truth", "columns": "prediction",
                      "matrix": cm.matrix.tolist(), "missed": cm.missed_per_class.tolist(),
                      "num_images": result["num_images"], "miou": result["miou"], "protocol": result["protocol"]})


def load_confusion(path) -> dict:
    """A file of ``save_confusion``, checked: {classes, matrix (C x C int64), missed (C), ...}."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != MATRIX_FORMAT:
        raise DataError(f"{path} is not a confusion matrix saved by segadapt evaluate --save-matrix")
    classes = data.get("classes")
    try:
        m = np.asarray(data["matrix"], dtype=np.int64)
        missed = np.asarray(data.get("missed") or [0] * len(classes), dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: 'matrix' and 'missed' must hold integer counts") from None
    if not isinstance(classes, list) or m.shape != (len(classes), len(classes)) or missed.shape != (len(classes),):
        raise DataError(f"{path}: the matrix must be C x C and 'missed' C long for its C = "
                        f"{len(classes) if isinstance(classes, list) else '?'} classes")
    if (m < 0).any() or (missed < 0).any():
        raise DataError(f"{path}: negative pixel counts")
    return {**data, "matrix": m, "missed": missed}


def score(cm: ConfusionMatrix, label_space, classes: str = "all") -> dict:
    """Scores over the classes of evaluation protocol ``classes`` ('all', '19', '16', '13').

    SYNTHIA -> Cityscapes papers report mIoU16 and mIoU13 side by side from one 19-class matrix, so
    asking for either gives both under ``miou_by_protocol``; ``miou`` is the one asked for."""
    result = compute(cm.matrix, label_space.classes, subset=protocol_indices(label_space, classes),
                     missed=cm.missed_per_class)
    shown = ("16", "13") if classes in ("16", "13") else (classes,)
    result["miou_by_protocol"] = {
        p: (result["miou"] if p == classes else
            compute(cm.matrix, label_space.classes, subset=protocol_indices(label_space, p),
                    missed=cm.missed_per_class)["miou"])
        for p in shown}
    result["classes_protocol"] = classes
    return result


def _require_labels(dataset, split):
    if not dataset.has_labels(split):
        raise DataError(f"split '{split}' of {dataset.root} has no labels to evaluate against")


def evaluate_checkpoint(ckpt_path, dataset, split: str, protocol: Protocol, weights: str, device,
                        workers: int = 0, amp=None, limit: int | None = None, size=None,
                        classes: str = "all", save_matrix=None) -> dict:
    """``size`` (W, H): run the model on images resized to it; scores are always at label resolution.
    ``classes``: the evaluation protocol (see ``score``); ``save_matrix``: a JSON file for the
    confusion matrix (``save_confusion``)."""
    _require_labels(dataset, split)
    protocol_indices(dataset.label_space, classes)  # a bad protocol fails before any inference
    model, label_space, ckpt = load_model(ckpt_path, weights, device)
    if label_space.classes != dataset.label_space.classes:
        raise DataError(f"checkpoint label space '{label_space.name}' ({label_space.num_classes} classes) differs "
                        f"from the data's '{dataset.label_space.name}' ({dataset.label_space.num_classes})")
    items = dataset.items(split)[:limit] if limit else dataset.items(split)
    cm = ConfusionMatrix(label_space.num_classes)
    t0 = time.time()
    mine = D.shard(items)  # under torchrun each rank scores every world_size-th image; counts are summed
    loader = DataLoader(InferenceImages(mine, base_size=size), batch_size=1, num_workers=workers)
    with progress(len(mine), f"evaluate {split}") as advance:
        for batch in loader:
            logits, _ = infer(model, batch["image"].to(device), protocol, label_space.num_classes, amp=amp)
            label = batch["label"].to(device)
            if logits.shape[-2:] != label.shape[-2:]:  # score at label resolution
                logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
            cm.update(logits.argmax(1), label)
            advance(1)
    cm.all_reduce()
    result = score(cm, label_space, classes)
    result.update(num_images=len(items), seconds=round(time.time() - t0, 3), label_space=label_space.name,
                  protocol={"source": "checkpoint", "checkpoint": str(Path(ckpt_path).resolve()),
                            "weights": ckpt["weights_used"], "iteration": ckpt.get("iteration"),
                            "data": str(Path(dataset.root).resolve()), "split": split, **protocol.to_dict(),
                            "size": list(size) if size else None})
    if save_matrix is not None:
        save_confusion(save_matrix, cm, label_space, result)
    return result


def evaluate_predictions(pred_dir, dataset, split: str, classes: str = "all", save_matrix=None,
                         label_cache: bool = True) -> dict:
    """Score saved trainId PNGs ``pred_dir/<id>.png`` (pseudo-label folders work too: their labels/).

    ``label_cache``: read the ground truth from the split's decoded-label cache
    (``segadapt.data.label_cache``), building it on the first run; the counts are the same either way."""
    _require_labels(dataset, split)
    protocol_indices(dataset.label_space, classes)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder {pred_dir} does not exist")
    if not any(pred_dir.glob("*.png")) and (pred_dir / "labels").is_dir():
        pred_dir = pred_dir / "labels"
    items = dataset.items(split)
    missing = [i for i, _, _ in items if not (pred_dir / f"{i}.png").exists()]
    if missing:
        raise DataError(f"{len(missing)} of {len(items)} images of split '{split}' have no prediction in {pred_dir} "
                        f"(first: {missing[0]}.png)")
    ls = dataset.label_space
    cm = ConfusionMatrix(ls.num_classes)
    t0 = time.time()
    mine = D.shard(items)
    cache = LC.open_cache(dataset.root, split, items) if label_cache else None
    # a missing or stale cache is (re)built from the labels this run decodes anyway; one writer only
    blobs = {} if (label_cache and cache is None and D.info().world_size == 1) else None
    workers = max(1, min(4, os.cpu_count() or 1))
    # libspng (pyspng) decodes faster on one thread but holds the GIL; OpenCV releases it, so with worker
    # threads OpenCV decodes in parallel (2048x1024 map, 2 threads: 4.5 vs 6.7 ms each; same arrays)
    fast = None if workers == 1 else False

    def count(item):
        _id, _img, lab_path = item
        if cache is not None:
            label = cache.get(_id)
        else:
            stamp = LC.file_stamp(lab_path) if blobs is not None else None  # before the read: a later edit is stale
            label = read_label(lab_path, fast)
            if blobs is not None and label.dtype == np.uint8:
                blobs[_id] = (LC.encode(label), label.shape, stamp)
        pred = read_label(pred_dir / f"{_id}.png", fast)
        if pred.shape != label.shape:
            raise DataError(f"prediction {_id}.png is {pred.shape[1]}x{pred.shape[0]}, its label "
                            f"{label.shape[1]}x{label.shape[0]}; predictions must be at label resolution")
        return cm.counts_numpy(pred, label)

    # PNG decoding dominates; OpenCV, zlib and the histogram release the GIL, so each image is decoded
    # and counted in a worker thread and only the small count arrays are summed here
    try:
        with progress(len(mine), f"evaluate {split}") as advance, \
                ThreadPoolExecutor(max_workers=workers) as pool:
            for counts in pool.map(count, mine):
                cm.add_counts(counts)
                advance(1)
    finally:
        if cache is not None:
            cache.close()
    if blobs is not None and len(blobs) == len(items):
        LC.write_cache(dataset.root, split, blobs)
    cm.all_reduce()
    result = score(cm, ls, classes)
    result.update(num_images=len(items), seconds=round(time.time() - t0, 3), label_space=ls.name,
                  protocol={"source": "predictions", "pred_dir": str(pred_dir.resolve()),
                            "data": str(Path(dataset.root).resolve()), "split": split})
    if save_matrix is not None:
        save_confusion(save_matrix, cm, ls, result)
    return result
