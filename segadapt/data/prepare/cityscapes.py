"""Cityscapes: ``RAW/leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`` and
``RAW/gtFine/<split>/<city>/<id>_gtFine_labelIds.png`` (34 labelIds -> 19 trainIds),
id = ``<city>_<seq>_<frame>``.

A split without a gtFine folder is kept image-only. ``test`` is always image-only: its public
gtFine files are placeholders (every pixel ignored), which would otherwise be skipped as blank.
"""

from __future__ import annotations

import os
from pathlib import Path

from segadapt.data.labelspace import CITYSCAPES_LABELID_TO_TRAINID
from segadapt.data.prepare.common import (FORCE, IMAGE_SIZE, OUT, ROOT, SPLITS, WORKERS, LutLabels, RawItem, chosen_splits, converter,
                                          prepare)
from segadapt.errors import DataError

KIND = "cityscapes"
LABEL_SPACE = "cityscapes19"
DEFAULT_SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
IMAGE_ONLY_SPLITS = {"test"}


def find_items(raw_root: str | Path, splits=None) -> tuple[list[RawItem], dict[str, bool]]:
    """Items of the chosen splits (default: whichever of train/val/test exist) and, per split,
    whether it has labels."""
    raw = Path(os.path.abspath(Path(raw_root).expanduser()))
    if not raw.is_dir():
        raise DataError(f"Cityscapes raw folder {raw} does not exist")
    left = raw / "leftImg8bit"
    if not left.is_dir():
        raise DataError(f"{raw} is not a Cityscapes folder: missing leftImg8bit/ "
                        "(expected leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/)")
    chosen = chosen_splits(left, splits, DEFAULT_SPLITS)

    items, has_labels = [], {}
    for s in chosen:
        gt = raw / "gtFine" / s
        labelled = s not in IMAGE_ONLY_SPLITS and gt.is_dir()
        has_labels[s] = labelled
        found = sorted((left / s).glob(f"*/*{IMAGE_SUFFIX}"))
        if not found:
            raise DataError(f"no *{IMAGE_SUFFIX} images in {left / s}/<city>/")
        for p in found:
            cid = p.name[: -len(IMAGE_SUFFIX)]
            label = gt / p.parent.name / f"{cid}{LABEL_SUFFIX}" if labelled else None
            items.append(RawItem(s, cid, p, label))
    return items, has_labels


@converter(KIND, ROOT, OUT, SPLITS, IMAGE_SIZE, WORKERS, FORCE)
def prepare_cityscapes(raw_root, out, *, splits=None, image_size=None, workers: int = 0, force: bool = False) -> dict:
    """Prepare Cityscapes into ``out``; returns the report (see ``common.prepare``)."""
    items, has_labels = find_items(raw_root, splits)
    return prepare(KIND, items, LutLabels(CITYSCAPES_LABELID_TO_TRAINID), LABEL_SPACE, raw_root, out,
                   image_size=image_size, workers=workers, force=force, has_labels=has_labels)
