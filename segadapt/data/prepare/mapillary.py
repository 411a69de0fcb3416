"""Mapillary Vistas: ``RAW/<split>/images/*.jpg`` + ``RAW/<split>/v1.2/labels/*.png``, splits
``training`` / ``validation`` / ``testing`` (written as ``train`` / ``val`` / ``test``; testing has
no labels).

Labels are palette PNGs whose index is the v1.2 class id (66 classes, 65 = unlabeled). The 66 -> 19
Cityscapes mapping is a data file, ``segadapt/data/mappings/mapillary_v1.2_to_cityscapes19.yaml``
(its header says where the table comes from). An index >= 66 means the file is not a v1.2 label
(a v2.0 label has 124 classes) and the image is skipped as an invalid label.

The flat layout of mmsegmentation's test sample (``RAW/images/*.jpg`` + ``RAW/v1.2/*.png``) is
accepted as a single ``train`` split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from segadapt.data.labelspace import CITYSCAPES19, labelid_lut
from segadapt.data.prepare.common import (FORCE, IMAGE_SIZE, OUT, ROOT, SPLITS, WORKERS, ConverterOption, RawItem,
                                          converter, prepare)
from segadapt.errors import DataError, UsageError

KIND = "mapillary"
LABEL_SPACE = "cityscapes19"
VERSIONS = {"v1.2": 66}  # version -> number of raw classes
# Vistas' folder names -> the names written to the prepared folder (and accepted by --splits)
SPLIT_DIRS = {"train": "training", "val": "validation", "test": "testing"}
IMAGE_ONLY_SPLITS = {"test"}
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise UsageError(f"unknown Mapillary version '{version}' (supported: {', '.join(VERSIONS)})")
    return version


# checked before --root is looked at: a usage error comes first
VERSION = ConverterOption("version", "--version", str, "Label version (v1.2, the default).", "v1.2", check_version)


def mapping_file(version: str = "v1.2") -> Path:
    return MAPPINGS / f"mapillary_{check_version(version)}_to_cityscapes19.yaml"


def load_mapping(version: str = "v1.2") -> dict[int, int]:
    """raw class id -> trainId for the classes that map (the others are ignored), from the data file."""
    path = mapping_file(version)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"cannot read the Mapillary mapping {path}: {str(e).splitlines()[0]}") from None
    n = VERSIONS[version]
    classes = doc.get("classes") if isinstance(doc, dict) else None
    if not isinstance(classes, list) or [c.get("id") if isinstance(c, dict) else None for c in classes] != list(range(n)):
        raise DataError(f"corrupt Mapillary mapping {path}: expected classes with ids 0..{n - 1} in order")
    mapping = {}
    for c in classes:
        t = c.get("trainId")
        if t is None:
            continue
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < CITYSCAPES19.num_classes:
            raise DataError(f"corrupt Mapillary mapping {path}: class {c.get('id')} has trainId {t!r}")
        mapping[c["id"]] = t
    return mapping


class MapillaryLabels:
    """v1.2 class id -> trainId; a DataError (-> "label invalid") for an index beyond the 66 classes.
    A class so that it pickles to worker processes."""

    def __init__(self, mapping: dict[int, int], num_raw: int):
        self.lut = labelid_lut(mapping, 256)
        self.num_raw = num_raw

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        top = int(raw.max()) if raw.size else 0
        if top >= self.num_raw:
            raise DataError(f"label value {top} is not a Mapillary class id (0..{self.num_raw - 1}); "
                            "is this a label of another Vistas version?")
        return self.lut[raw]


def _split_names(splits) -> list[str]:
    """--splits accepts both our names (train) and Vistas' folder names (training)."""
    chosen = list(dict.fromkeys([splits] if isinstance(splits, str) else splits))
    if not chosen:
        raise UsageError("no split chosen")
    folder_to_name = {v: k for k, v in SPLIT_DIRS.items()}
    out = []
    for s in chosen:
        name = folder_to_name.get(s, s)
        if name not in SPLIT_DIRS:
            raise UsageError(f"unknown Mapillary split '{s}' (known: {', '.join(SPLIT_DIRS)})")
        out.append(name)
    return list(dict.fromkeys(out))


def _images(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]


def _pairs(split: str, img_dir: Path, lab_dir: Path | None) -> list[RawItem]:
    img = _images(img_dir)
    if not img:
        raise DataError(f"no images in {img_dir} (expected *.jpg)")
    if lab_dir is None:
        return [RawItem(split, p.stem, p, None) for p in sorted(img)]
    lab = {p.stem for p in lab_dir.glob("*.png") if p.is_file()}
    # a label without its image is listed too, so that it is reported as "image missing"
    pairs = [(p.stem, p) for p in img] + [(m, img_dir / f"{m}.jpg") for m in lab - {p.stem for p in img}]
    return [RawItem(split, stem, p, lab_dir / f"{stem}.png") for stem, p in sorted(pairs)]


def find_items(raw_root: str | Path, splits=None, version: str = "v1.2") -> tuple[list[RawItem], dict[str, bool]]:
    """Items of the chosen splits (default: whichever of training/validation/testing exist) and, per
    split, whether it has labels."""
    check_version(version)
    raw = Path(os.path.abspath(Path(raw_root).expanduser()))
    if not raw.is_dir():
        raise DataError(f"Mapillary raw folder {raw} does not exist")
    present = [s for s, d in SPLIT_DIRS.items() if (raw / d).is_dir()]
    if not present and (raw / "images").is_dir() and (raw / version).is_dir():
        # flat sample layout: one split
        if splits is not None and _split_names(splits) != ["train"]:
            raise DataError(f"{raw} has the flat layout (images/ + {version}/): its only split is train")
        return _pairs("train", raw / "images", raw / version), {"train": True}
    if not present:
        raise DataError(f"{raw} is not a Mapillary Vistas folder: no {', '.join(SPLIT_DIRS.values())} folder "
                        f"(expected <split>/images/*.jpg and <split>/{version}/labels/*.png)")
    if splits is None:
        chosen = present
    else:
        chosen = _split_names(splits)
        absent = [SPLIT_DIRS[s] for s in chosen if s not in present]
        if absent:
            raise DataError(f"split {', '.join(absent)} not found in {raw} "
                            f"(available: {', '.join(SPLIT_DIRS[s] for s in present)})")
    items, has_labels = [], {}
    for s in chosen:
        d = raw / SPLIT_DIRS[s]
        if not (d / "images").is_dir():
            raise DataError(f"missing {d / 'images'}/ (expected {SPLIT_DIRS[s]}/images/*.jpg)")
        labels = d / version / "labels"
        labelled = s not in IMAGE_ONLY_SPLITS
        if labelled and not labels.is_dir():
            # v1.1 downloads had <split>/labels/; guessing which version they hold would be unsafe
            raise DataError(f"missing {labels}/ (expected {SPLIT_DIRS[s]}/{version}/labels/*.png of Vistas {version})")
        has_labels[s] = labelled
        items += _pairs(s, d / "images", labels if labelled else None)
    return items, has_labels


@converter(KIND, ROOT, OUT, SPLITS, VERSION, IMAGE_SIZE, WORKERS, FORCE)
def prepare_mapillary(raw_root, out, *, splits=None, version: str = "v1.2", image_size=None, workers: int = 0,
                      force: bool = False) -> dict:
    """Prepare Mapillary Vistas (``version`` labels, mapped to Cityscapes' 19 classes) into ``out``."""
    check_version(version)
    convert = MapillaryLabels(load_mapping(version), VERSIONS[version])
    items, has_labels = find_items(raw_root, splits, version)
    return prepare(KIND, items, convert, LABEL_SPACE, raw_root, out,
                   image_size=image_size, workers=workers, force=force, has_labels=has_labels)
