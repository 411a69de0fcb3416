"""CamVid, SegNet's 11-class version: ``RAW/{train,val,test}/*.png`` + ``RAW/{train,val,test}annot/*.png``.

Labels are single-channel PNGs whose value is the class (0 sky ... 10 bicyclist, 11 = void ->
ignore 255); any larger value means the file is not a SegNet CamVid label and the image is
skipped as an invalid label. File names are ``<sequence>_<frame>.png``; ``sequences`` keeps only
the frames of the named drives (CamVid's day -> dusk benchmark is split by sequence). A split
without its ``annot`` folder is image-only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segadapt.data.labelspace import CAMVID11, IGNORE
from segadapt.data.prepare.common import (FORCE, IMAGE_SIZE, OUT, ROOT, SPLITS, WORKERS, ConverterOption, RawItem,
                                          chosen_splits, converter, prepare)
from segadapt.errors import DataError, UsageError

KIND = "camvid"
LABEL_SPACE = "camvid11"
DEFAULT_SPLITS = ("train", "val", "test")
VOID = 11


class CamVidLabels:
    """0..10 -> the same trainId, 11 (void) -> 255, anything else -> DataError ("label invalid").
    A class so that it pickles to worker processes."""

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        top = int(raw.max()) if raw.size else 0
        if top > VOID:
            bad = np.unique(raw[raw > VOID])
            shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            raise DataError(f"label values {shown} are not CamVid classes (0..{CAMVID11.num_classes - 1}, "
                            f"{VOID} = void)")
        out = raw.astype(np.uint8)  # a copy: the raw array is not ours to modify
        out[out == VOID] = IGNORE
        return out


def parse_sequences(sequences) -> list[str] | None:
    """'0001TP,0006R0' or a list -> list of names; None / empty -> None (every frame)."""
    if sequences is None:
        return None
    names = sequences.split(",") if isinstance(sequences, str) else list(sequences)
    names = list(dict.fromkeys(str(s).strip() for s in names if str(s).strip()))
    bad = [s for s in names if "_" in s or "/" in s or "\\" in s]
    if bad:
        raise UsageError(f"bad CamVid sequence name '{bad[0]}': use the part of the file name before '_', e.g. 0001TP")
    return names or None


SEQUENCES = ConverterOption("sequences", "--sequences", str,
                            "Keep only these sequences, e.g. 0001TP,0006R0.", None, parse_sequences)


def _sequence(name: str) -> str:
    return name.split("_", 1)[0]


def find_items(raw_root: str | Path, splits=None, sequences=None) -> tuple[list[RawItem], dict[str, bool]]:
    """Items of the chosen splits (default: whichever of train/val/test exist), restricted to the
    chosen sequences, and per split whether it has labels."""
    raw = Path(os.path.abspath(Path(raw_root).expanduser()))
    if not raw.is_dir():
        raise DataError(f"CamVid raw folder {raw} does not exist")
    seqs = parse_sequences(sequences)
    chosen = chosen_splits(raw, splits, DEFAULT_SPLITS, is_split=lambda name: not name.endswith("annot"),
                           none_found=f"{raw} is not a CamVid folder: no {', '.join(DEFAULT_SPLITS)} folder "
                                      "(expected <split>/*.png and <split>annot/*.png)")

    items, has_labels, present = [], {}, set()
    for s in chosen:
        annot = raw / f"{s}annot"
        labelled = annot.is_dir()
        img = {p.stem for p in (raw / s).glob("*.png") if p.is_file()}
        lab = {p.stem for p in annot.glob("*.png") if p.is_file()} if labelled else set()
        if not img:
            raise DataError(f"no images in {raw / s} (expected *.png)")
        stems = img | lab  # a label without its image is listed, to be reported as "image missing"
        present |= {_sequence(n) for n in stems}
        if seqs is not None:
            stems = {n for n in stems if any(n.startswith(f"{q}_") for q in seqs)}
        if not stems:
            continue
        has_labels[s] = labelled
        items += [RawItem(s, n, raw / s / f"{n}.png", annot / f"{n}.png" if labelled else None) for n in sorted(stems)]
    if seqs is not None:
        unmatched = [q for q in seqs if not any(it.id.startswith(f"{q}_") for it in items)]
        if unmatched:
            raise DataError(f"CamVid sequence {', '.join(unmatched)} has no frame in {', '.join(chosen)} "
                            f"(sequences present: {', '.join(sorted(present)) or 'none'})")
    return items, has_labels


@converter(KIND, ROOT, OUT, SPLITS, SEQUENCES, IMAGE_SIZE, WORKERS, FORCE)
def prepare_camvid(raw_root, out, *, splits=None, sequences=None, image_size=None, workers: int = 0,
                   force: bool = False) -> dict:
    """Prepare CamVid (SegNet 11 classes) into ``out``; returns the report (see ``common.prepare``)."""
    items, has_labels = find_items(raw_root, splits, sequences)
    return prepare(KIND, items, CamVidLabels(), LABEL_SPACE, raw_root, out,
                   image_size=image_size, workers=workers, force=force, has_labels=has_labels)
