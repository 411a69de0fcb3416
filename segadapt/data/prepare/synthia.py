"""SYNTHIA (RAND-CITYSCAPES): ``RAW/RGB/*.png`` + ``RAW/GT/LABELS/*.png``.

Also the video-sequence layout of SYNTHIA-SEQS (``RAW/RGB/Stereo_Left/Omni_F/*.png`` +
``RAW/GT/LABELS/Stereo_Left/Omni_F/*.png``); there the id is the relative path joined by ``_``,
e.g. ``Stereo_Left_Omni_F_000000``. Which layout is present is detected from ``RGB/``.

``GT/LABELS`` files are 16-bit-per-channel RGB PNGs: class id in the first (R) channel, instance id
in the second. OpenCV returns BGR, so the class is the *last* channel there. Pillow and most image
tools silently reduce such files to 8 bits, which would turn every id into garbage (the high byte,
usually 0 = void): a label that is not 16-bit is refused, never converted.

Everything is split ``train`` (the whole set is a domain-adaptation source). Label space
``cityscapes19``; SYNTHIA has no terrain, truck or train pixels (evaluate with the 16/13-class
protocols).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from segadapt.data.prepare.common import FORCE, IMAGE_SIZE, OUT, ROOT, WORKERS, LutLabels, RawItem, converter, prepare
from segadapt.errors import DataError

KIND = "synthia"
LABEL_SPACE = "cityscapes19"

# SYNTHIA class id -> Cityscapes trainId, as in DAFormer tools/convert_datasets/synthia.py (lhoyer/DAFormer,
# "mapping based on README.txt from SYNTHIA_RAND_CITYSCAPES"), also used by DACS and DiGA. 16 (terrain),
# 18 (truck) and 20 (train) are in that table though SYNTHIA never labels them; every other id
# (0 void, 13 parking-slot, 14 road-work, 22 lanemarking, ...) is ignored.
SYNTHIA_TO_TRAINID = {
    3: 0,    # road
    4: 1,    # sidewalk
    2: 2,    # building
    21: 3,   # wall
    5: 4,    # fence
    7: 5,    # pole
    15: 6,   # traffic light
    9: 7,    # traffic sign
    6: 8,    # vegetation
    16: 9,   # terrain (absent from SYNTHIA)
    1: 10,   # sky
    10: 11,  # pedestrian -> person
    17: 12,  # rider
    8: 13,   # car
    18: 14,  # truck (absent)
    19: 15,  # bus
    20: 16,  # train (absent)
    12: 17,  # motorcycle
    11: 18,  # bicycle
}


def read_synthia_label(path) -> np.ndarray:
    """Class-id map (uint16, H x W) of one ``GT/LABELS`` file. Module-level so that it pickles to
    worker processes."""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DataError(f"cannot read SYNTHIA label {path}")
    if lab.dtype != np.uint16:
        raise DataError(f"SYNTHIA label {path} is {lab.dtype.itemsize * 8}-bit; expected 16-bit GT/LABELS "
                        "(was it re-saved by an 8-bit tool?)")
    if lab.ndim == 2:
        return lab
    if lab.ndim == 3 and lab.shape[2] in (3, 4):
        return np.ascontiguousarray(lab[:, :, 2])  # BGR(A) order: R, the class id, is channel 2
    raise DataError(f"SYNTHIA label {path} has shape {lab.shape}; expected a 16-bit RGB or single-channel PNG")


def find_items(raw_root: str | Path) -> list[RawItem]:
    """One item per image or label found (an orphan on either side is reported later)."""
    raw = Path(os.path.abspath(Path(raw_root).expanduser()))
    if not raw.is_dir():
        raise DataError(f"SYNTHIA raw folder {raw} does not exist")
    rgb, gt = raw / "RGB", raw / "GT" / "LABELS"
    missing = [p.relative_to(raw).as_posix() + "/" for p in (rgb, gt) if not p.is_dir()]
    if missing:
        raise DataError(f"{raw} is not a SYNTHIA folder: missing {' and '.join(missing)} "
                        "(expected RGB/*.png and GT/LABELS/*.png)")
    flat = any(p.is_file() for p in rgb.glob("*.png"))
    pattern = "*.png" if flat else "**/*.png"  # RAND-CITYSCAPES is flat, the sequences nest by camera
    img = {p.relative_to(rgb).with_suffix("") for p in rgb.glob(pattern) if p.is_file()}
    lab = {p.relative_to(gt).with_suffix("") for p in gt.glob(pattern) if p.is_file()}
    if not img:
        raise DataError(f"no images found in {rgb} (expected *.png or <camera folders>/*.png)")
    return [RawItem("train", "_".join(rel.parts), rgb / f"{rel}.png", gt / f"{rel}.png")
            for rel in sorted(img | lab)]


@converter(KIND, ROOT, OUT, IMAGE_SIZE, WORKERS, FORCE)
def prepare_synthia(raw_root, out, *, image_size=None, workers: int = 0, force: bool = False) -> dict:
    """Prepare SYNTHIA into ``out``; returns the report (see ``common.prepare``)."""
    items = find_items(raw_root)
    return prepare(KIND, items, LutLabels(SYNTHIA_TO_TRAINID), LABEL_SPACE, raw_root, out,
                   image_size=image_size, workers=workers, force=force, read_raw_label=read_synthia_label)
