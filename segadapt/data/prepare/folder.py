"""A user's own data: ``RAW/images/`` + ``RAW/labels/`` (same stem; images png/jpg/jpeg, labels
png), described by a classes file::

    name: mycam
    classes:                       # trainIds are given in this order: road = 0, car = 1, ...
      - {value: 0, name: road, color: [128, 64, 128]}
      - {value: 7, name: car, color: [0, 0, 142]}
    ignore: [255]                  # raw values that become ignore (255); default: none

If ``images/`` holds sub-folders, each is a split (labels in ``labels/<split>/``), otherwise
everything is split ``train``. A split without labels folder is image-only (e.g. unlabelled
target-domain images). A label value that is neither a class nor in ``ignore`` skips the image as
an invalid label, naming the value and the file: silently ignoring it would hide a wrong classes file.
"""

from __future__ import annotations

import colorsys
import os
import re
from pathlib import Path

import numpy as np
import yaml

from segadapt.data.io import read_label, read_text
from segadapt.data.labelspace import IGNORE, LABEL_SPACES, LabelSpace
from segadapt.data.prepare.common import (FORCE, IMAGE_SIZE, OUT, ROOT, SPLITS, WORKERS, ConverterOption, RawItem,
                                          converter, prepare)
from segadapt.errors import DataError, UsageError

KIND = "folder"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
MAX_VALUE = 65535  # labels may be 16-bit PNGs
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


# ------------------------------------------------------------------------------------ classes file


def _default_color(i: int) -> tuple[int, int, int]:
    """Distinct colours for classes given without one (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
    return (round(r * 255), round(g * 255), round(b * 255))


def _int_value(v, what: str, path) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_VALUE:
        raise UsageError(f"{path}: {what} must be an integer 0..{MAX_VALUE}, got {v!r}")
    return v


def parse_classes(doc, path="classes file") -> tuple[LabelSpace, dict[int, int], list[int]]:
    """A parsed classes document -> (label space, raw value -> trainId, ignored raw values)."""
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected a mapping with 'name' and 'classes', got {type(doc).__name__}")
    unknown = sorted(set(doc) - {"name", "classes", "ignore"}, key=str)
    if unknown:
        raise UsageError(f"{path}: unknown key '{unknown[0]}' (known: name, classes, ignore)")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"{path}: 'name' must be a label-space name of letters, digits, '_', '-', '.', got {name!r}")
    if name in LABEL_SPACES:
        raise UsageError(f"{path}: name '{name}' is a built-in label space; choose another name")
    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes:
        raise UsageError(f"{path}: 'classes' must be a non-empty list of {{value, name, color}}")
    if len(classes) > 255:
        raise UsageError(f"{path}: {len(classes)} classes; at most 255 (trainId 255 means ignore)")
    mapping, names, colors = {}, [], []
    for i, c in enumerate(classes):
        if not isinstance(c, dict):
            raise UsageError(f"{path}: class #{i + 1} must be a mapping {{value, name, color}}, got {c!r}")
        extra = sorted(set(c) - {"value", "name", "color"}, key=str)
        if extra:
            raise UsageError(f"{path}: class #{i + 1}: unknown key '{extra[0]}' (known: value, name, color)")
        if "value" not in c or "name" not in c:
            raise UsageError(f"{path}: class #{i + 1} needs 'value' and 'name'")
        v = _int_value(c["value"], f"class #{i + 1} value", path)
        n = c["name"]
        if not isinstance(n, str) or not n.strip():
            raise UsageError(f"{path}: class #{i + 1} name must be a non-empty string, got {n!r}")
        if v in mapping:
            raise UsageError(f"{path}: value {v} is given to two classes ({names[mapping[v]]}, {n})")
        if n in names:
            raise UsageError(f"{path}: class name '{n}' appears twice")
        col = c.get("color", None)
        if col is None:
            col = _default_color(i)
        elif (not isinstance(col, (list, tuple)) or len(col) != 3
              or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in col)):
            raise UsageError(f"{path}: class '{n}' color must be [R, G, B] with integers 0..255, got {col!r}")
        mapping[v] = i
        names.append(n)
        colors.append(tuple(col))
    ignore = doc.get("ignore", [])
    if ignore is None:
        ignore = []
    if not isinstance(ignore, list):
        raise UsageError(f"{path}: 'ignore' must be a list of raw values, got {ignore!r}")
    ignore = [_int_value(v, "ignore value", path) for v in ignore]
    both = sorted(set(ignore) & set(mapping))
    if both:
        raise UsageError(f"{path}: value {both[0]} is both a class ({names[mapping[both[0]]]}) and ignored")
    return LabelSpace(name, tuple(names), tuple(colors)), mapping, sorted(set(ignore))


def load_classes(path) -> tuple[LabelSpace, dict[int, int], list[int]]:
    """Read and check a classes YAML file (``yaml.safe_load`` only). Any problem is a one-line UsageError."""
    if path is None:
        raise UsageError("prepare-data folder needs --classes FILE (YAML: name, classes: [{value, name, color}], ignore)")
    p = Path(path).expanduser()
    text = read_text(p, "classes file", UsageError)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"bad YAML in classes file {p}{where}: {problem}") from None
    return parse_classes(doc, p)


# --------------------------------------------------------------------------------------- labels


class _LabelFile(np.ndarray):
    """A raw label array that remembers its file, so that an invalid value can be reported with it
    (the engine hands the converter only the array)."""

    source = ""


def read_folder_label(path) -> np.ndarray:
    lab = read_label(path).view(_LabelFile)
    lab.source = str(path)
    return lab


class FolderLabels:
    """Raw value -> trainId (class list order), ignore values -> 255, any other value -> DataError
    ("label invalid"). A class so that it pickles to worker processes."""

    def __init__(self, mapping: dict[int, int], ignore, classes_file: str = "the classes file"):
        size = max(256, max([*mapping, *ignore, 0]) + 1)
        self.lut = np.full(size, IGNORE, np.uint8)
        self.known = np.zeros(size, bool)
        for v, t in mapping.items():
            self.lut[v] = t
            self.known[v] = True
        self.known[list(ignore)] = True
        self.classes_file = classes_file

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        source = getattr(raw, "source", "") or "the label"
        raw = np.asarray(raw)
        values = np.unique(raw).astype(np.int64)  # int64: comparing uint8 values with a 16-bit table size
        bad = values[(values >= len(self.lut)) | ~self.known[np.minimum(values, len(self.lut) - 1)]]
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            what = "value {} is" if bad.size == 1 else "values {} are"
            raise DataError(f"label {what.format(shown)} neither a class nor ignored in {self.classes_file}: {source}")
        return self.lut[raw.astype(np.intp, copy=False)]


# ---------------------------------------------------------------------------------------- items


def _image_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]


def find_items(raw_root: str | Path, splits=None) -> tuple[list[RawItem], dict[str, bool]]:
    """Items and, per split, whether it has labels. Splits are the sub-folders of ``images/`` when
    there are any, else everything is ``train``."""
    raw = Path(os.path.abspath(Path(raw_root).expanduser()))
    if not raw.is_dir():
        raise DataError(f"raw folder {raw} does not exist")
    images, labels = raw / "images", raw / "labels"
    if not images.is_dir():
        raise DataError(f"{raw} has no images/ folder (expected images/ and labels/, optionally with "
                        "one sub-folder per split)")
    subdirs = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        present = {s: (images / s, labels / s) for s in subdirs}
    else:
        present = {"train": (images, labels)}
    if splits is None:
        chosen = list(present)
    else:
        chosen = list(dict.fromkeys([splits] if isinstance(splits, str) else splits))
        if not chosen:
            raise UsageError("no split chosen")
        absent = [s for s in chosen if s not in present]
        if absent:
            raise DataError(f"split {', '.join(absent)} not found in {images} (available: {', '.join(present)})")
    items, has_labels = [], {}
    for s in chosen:
        img_dir, lab_dir = present[s]
        img = _image_files(img_dir)
        if not img:
            raise DataError(f"no images in {img_dir} (expected *.png, *.jpg or *.jpeg)")
        labelled = lab_dir.is_dir()
        has_labels[s] = labelled
        lab = {p.stem for p in lab_dir.glob("*.png") if p.is_file()} if labelled else set()
        # a label without its image is listed too, so that it is reported as "image missing"
        pairs = [(p.stem, p) for p in img] + [(m, img_dir / f"{m}.png") for m in lab - {p.stem for p in img}]
        items += [RawItem(s, stem, p, lab_dir / f"{stem}.png" if labelled else None) for stem, p in sorted(pairs)]
    return items, has_labels


CLASSES = ConverterOption("classes", "--classes", Path, "YAML file naming the raw label values (name, classes, ignore).",
                          ...)


def _classes_record(space: LabelSpace, mapping: dict[int, int], ignore: list[int]) -> dict:
    return {"label_space": space.to_dict(), "values": [[v, t] for v, t in sorted(mapping.items())], "ignore": list(ignore)}


@converter(KIND, ROOT, OUT, CLASSES, SPLITS, IMAGE_SIZE, WORKERS, FORCE,
           help="A user's own data: `RAW/images/` + `RAW/labels/` (same stem; images png/jpg/jpeg, labels png), "
                "described by a --classes YAML file (name, classes, ignore).")
def prepare_folder(raw_root, out, *, classes, splits=None, image_size=None, workers: int = 0,
                   force: bool = False) -> dict:
    """Prepare ``RAW/images`` + ``RAW/labels`` described by the ``classes`` YAML file into ``out``.
    The raw value -> trainId mapping used is recorded in dataset.json ("conversion"): a re-run with another
    classes file is refused unless forced, since finished labels would be reused."""
    space, mapping, ignore = load_classes(classes)
    items, has_labels = find_items(raw_root, splits)
    convert = FolderLabels(mapping, ignore, Path(classes).name)
    return prepare(KIND, items, convert, space, raw_root, out, image_size=image_size, workers=workers,
                   force=force, has_labels=has_labels, read_raw_label=read_folder_label,
                   conversion=_classes_record(space, mapping, ignore), conversion_name="classes file")
