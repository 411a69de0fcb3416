"""GTA5 (Playing for Data): ``RAW/images/*.png`` + ``RAW/labels/*.png``.

Labels are palette PNGs whose palette *index* is the Cityscapes labelId (the colours are only for
viewing). Everything goes to split ``train``: domain adaptation uses the whole set as source. Known
defects of the real download (labels of another size than their image, blank labels) are reported
and skipped by the common engine.
"""

from __future__ import annotations

import os
from pathlib import Path

from segadapt.data.labelspace import CITYSCAPES_LABELID_TO_TRAINID
from segadapt.data.prepare.common import FORCE, IMAGE_SIZE, OUT, ROOT, WORKERS, LutLabels, RawItem, converter, prepare
from segadapt.errors import DataError

KIND = "gta5"
LABEL_SPACE = "cityscapes19"


def find_items(raw_root: str | Path) -> list[RawItem]:
    """One item per stem found among images or labels (an orphan on either side is reported later
    as a missing image or label)."""
    raw = Path(os.path.abspath(Path(raw_root).expanduser()))
    if not raw.is_dir():
        raise DataError(f"GTA5 raw folder {raw} does not exist")
    images, labels = raw / "images", raw / "labels"
    missing = [p.name + "/" for p in (images, labels) if not p.is_dir()]
    if missing:
        raise DataError(f"{raw} is not a GTA5 folder: missing {' and '.join(missing)} "
                        "(expected images/*.png and labels/*.png)")
    img = {p.stem for p in images.glob("*.png") if p.is_file()}
    lab = {p.stem for p in labels.glob("*.png") if p.is_file()}
    if not img:
        raise DataError(f"no images found in {images} (expected *.png)")
    return [RawItem("train", s, images / f"{s}.png", labels / f"{s}.png") for s in sorted(img | lab)]


@converter(KIND, ROOT, OUT, IMAGE_SIZE, WORKERS, FORCE)
def prepare_gta5(raw_root, out, *, image_size=None, workers: int = 0, force: bool = False) -> dict:
    """Prepare GTA5 into ``out``; returns the report (see ``common.prepare``)."""
    items = find_items(raw_root)
    return prepare(KIND, items, LutLabels(CITYSCAPES_LABELID_TO_TRAINID), LABEL_SPACE, raw_root, out,
                   image_size=image_size, workers=workers, force=force)
