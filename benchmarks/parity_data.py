"""Cityscapes-layout label files and predictions for comparing evaluators (used by the parity test and
the evaluator benchmark): random labelIds (ids 0..33, so ignored ids appear) with blocky
structure, and predictions that agree with the truth on part of the pixels.

Files are encoded as they are in practice: ground truth with Pillow, as cityscapesScripts'
json2labelImg writes gtFine, and predictions (trainIds and labelIds alike) with segadapt's own
label writer, as `segadapt pseudo-label` writes its label maps."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segadapt.data.io import write_png
from segadapt.data.labelspace import CITYSCAPES_LABELID_TO_TRAINID

TRAINID_TO_LABELID = {t: l for l, t in CITYSCAPES_LABELID_TO_TRAINID.items()}
# every labelId but 31 (train) in the truth, every trainId but 16 (train) predicted: one class is
# undefined (NaN in cityscapesscripts, None in ours) and must be left out of the mean by both
GT_IDS = np.array([i for i in range(34) if i != 31])
PRED_IDS = np.array([i for i in range(19) if i != 16])


def _blocks(rng, h, w, values, block):
    small = rng.choice(values, size=(max(1, h // block), max(1, w // block))).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def make(root: Path, n: int, width: int, height: int, seed: int = 0, city: str = "frankfurt"):
    """Writes RAW Cityscapes val files under ``root/raw`` and trainId predictions ``root/pred/<id>.png``
    plus the same predictions as labelIds ``root/pred_labelids/<id>.png``. Returns the list of ids."""
    rng = np.random.default_rng(seed)
    raw, pred_dir, pred_lid = root / "raw", root / "pred", root / "pred_labelids"
    for d in (raw / "leftImg8bit/val" / city, raw / "gtFine/val" / city, pred_dir, pred_lid):
        d.mkdir(parents=True, exist_ok=True)
    lut = np.full(256, 255, np.uint8)
    for lid, tid in CITYSCAPES_LABELID_TO_TRAINID.items():
        lut[lid] = tid
    to_labelid = np.zeros(256, np.uint8)
    for tid, lid in TRAINID_TO_LABELID.items():
        to_labelid[tid] = lid
    ids = []
    for k in range(n):
        i = f"{city}_{k:06d}_000019"
        gt = _blocks(rng, height, width, GT_IDS, 16)
        train_gt = lut[gt]
        noise = _blocks(rng, height, width, PRED_IDS, 8)
        keep = _blocks(rng, height, width, np.array([0, 1, 1]), 4).astype(bool)
        pred = np.where(keep & (train_gt != 255), train_gt, noise).astype(np.uint8)
        cv2.imwrite(str(raw / "leftImg8bit/val" / city / f"{i}_leftImg8bit.png"),
                    np.zeros((height, width, 3), np.uint8))
        Image.fromarray(gt).save(raw / "gtFine/val" / city / f"{i}_gtFine_labelIds.png")
        write_png(pred_dir / f"{i}.png", pred)
        write_png(pred_lid / f"{i}.png", to_labelid[pred])
        ids.append(i)
    return ids


def cityscapesscripts_iou(root: Path, ids, city: str = "frankfurt") -> dict:
    """Per-class IoU (fractions, NaN = undefined) from the official evaluator on the same files."""
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs

    args = cs.args
    args.evalInstLevelScore = False  # no instance files: class IoU only, as in the papers
    args.quiet = True
    args.JSONOutput = False
    preds = [str(root / "pred_labelids" / f"{i}.png") for i in ids]
    gts = [str(root / "raw/gtFine/val" / city / f"{i}_gtFine_labelIds.png") for i in ids]
    result = cs.evaluateImgLists(preds, gts, args)
    return result["classScores"]
