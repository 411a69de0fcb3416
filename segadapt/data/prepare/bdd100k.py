"""BDD100K semantic segmentation (10k subset): ``RAW/images/10k/<split>/<id>.jpg`` +
``RAW/labels/sem_seg/masks/<split>/<id>.png``.

The masks already hold Cityscapes trainIds (0..18, 255 = ignore), as greyscale or palette PNGs
(``read_label`` returns palette indices). Any other value means the file is not a trainId mask
(e.g. a colour map saved as grey) and the image is skipped as an invalid label rather than
trained on. ``labels/sem_seg/colormaps/`` and ``polygons/`` are for viewing only and are not read.
``test`` is image-only (BDD100K publishes no test masks).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segadapt.data.labelspace import IGNORE
from segadapt.data.prepare.common import FORCE, IMAGE_SIZE, OUT, ROOT, SPLITS, WORKERS, RawItem, chosen_splits, converter, prepare
from segadapt.errors import DataError

KIND = "bdd100k"
LABEL_SPACE = "cityscapes19"
DEFAULT_SPLITS = ("train", "val", "test")
IMAGE_ONLY_SPLITS = {"test"}
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
NUM_CLASSES = 19


class BddLabels:
    """Identity on valid trainIds; a DataError (-> "label invalid") for any other value. A class so
    that it pickles to worker processes."""

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        values = np.unique(raw)
        bad = values[(values >= NUM_CLASSES) & (values != IGNORE)]
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            raise DataError(f"label values {shown} are not BDD100K trainIds (0..18, 255 = ignore)")
        return raw.astype(np.uint8, copy=False)


def find_items(raw_root: str | Path, splits=None) -> tuple[list[RawItem], dict[str, bool]]:
    """Items of the chosen splits (default: whichever of train/val/test exist) and, per split,
    whether it has labels (a split without a masks folder is image-only)."""
    raw = Path(os.path.abspath(Path(raw_root).expanduser()))
    if not raw.is_dir():
        raise DataError(f"BDD100K raw folder {raw} does not exist")
    images = raw / "images" / "10k"
    if not images.is_dir():
        raise DataError(f"{raw} is not a BDD100K folder: missing images/10k/ "
                        "(expected images/10k/<split>/*.jpg and labels/sem_seg/masks/<split>/*.png)")
    masks = raw / "labels" / "sem_seg" / "masks"
    items, has_labels = [], {}
    for s in chosen_splits(images, splits, DEFAULT_SPLITS):
        labelled = s not in IMAGE_ONLY_SPLITS and (masks / s).is_dir()
        has_labels[s] = labelled
        img = [p for p in (images / s).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
        if not img:
            raise DataError(f"no images in {images / s} (expected *.jpg)")
        lab = {p.stem for p in (masks / s).glob("*.png") if p.is_file()} if labelled else set()
        # a mask without its image is listed too, so that it is reported as "image missing"
        pairs = [(p.stem, p) for p in img] + [(m, images / s / f"{m}.jpg") for m in lab - {p.stem for p in img}]
        for stem, image in sorted(pairs):
            items.append(RawItem(s, stem, image, masks / s / f"{stem}.png" if labelled else None))
    return items, has_labels


@converter(KIND, ROOT, OUT, SPLITS, IMAGE_SIZE, WORKERS, FORCE)
def prepare_bdd100k(raw_root, out, *, splits=None, image_size=None, workers: int = 0, force: bool = False) -> dict:
    """Prepare BDD100K (10k semantic segmentation) into ``out``; returns the report."""
    items, has_labels = find_items(raw_root, splits)
    return prepare(KIND, items, BddLabels(), LABEL_SPACE, raw_root, out,
                   image_size=image_size, workers=workers, force=force, has_labels=has_labels)
