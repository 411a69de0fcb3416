"""The conversion engine shared by every dataset converter.

A converter supplies only what is specific to its raw layout: a list of ``RawItem`` (split, id, raw
image path, raw label path or None), a picklable label-conversion function (raw label array ->
trainId uint8, 255 = ignore) and a label-space name. ``prepare`` then validates each pair, writes
trainId labels (and resized images with ``image_size``), per-image class counts, split lists and the
report, and finally ``dataset.json``: the folder contract read by ``segadapt.data.prepared``.

Defects in real data (unreadable files, label size != image size, missing or blank labels) are
reported and skipped, never fatal: one bad file in 25,000 should not stop a preparation.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from segadapt.console import log, progress
from segadapt.data.io import read_image, read_json, read_label, write_json, write_png, write_text
from segadapt.data.labelspace import IGNORE, get_label_space, labelid_lut
from segadapt.errors import DataError, UsageError
from segadapt.registry import Registry

FORMAT = "segadapt-prepared"
VERSION = 1
# Written at the start of a run and removed after dataset.json: an interrupted run still leaves its
# settings behind, so resuming it with other settings is refused like for a finished folder.
IN_PROGRESS = ".in-progress.json"

# Skip reasons (report.json "reason"); the specifics go to "detail".
IMAGE_MISSING = "image missing"
LABEL_MISSING = "label missing"
IMAGE_UNREADABLE = "image unreadable"
LABEL_UNREADABLE = "label unreadable"
LABEL_INVALID = "label invalid"
SIZE_MISMATCH = "size mismatch"
BLANK_LABEL = "blank label"
BAD_ID = "bad id"
DUPLICATE_ID = "duplicate id"

_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class RawItem:
    """One raw image and its raw label. ``label`` None = no label expected (image-only item); a
    label path that does not exist is reported as a missing label."""

    split: str
    id: str
    image: Path
    label: Path | None = None


class LutLabels:
    """Label converter through a raw-id -> trainId table. A class (not a closure) so that it can be
    pickled to worker processes."""

    def __init__(self, mapping: dict[int, int], size: int = 256):
        self.lut = labelid_lut(mapping, size)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if raw.dtype != np.uint8:
            # 16-bit labels are fine while their ids fit the table; larger ids would index out of it.
            if raw.size and (raw.min() < 0 or raw.max() >= len(self.lut)):
                raise DataError(f"label ids range {raw.min()}..{raw.max()}, beyond the id table (0..{len(self.lut) - 1})")
            raw = raw.astype(np.intp)
        return self.lut[raw]


def chosen_splits(root: Path, splits, defaults: Sequence[str], is_split: Callable[[str], bool] = lambda name: True,
                  none_found: str | None = None) -> list[str]:
    """The split folders of ``root`` to convert: ``splits`` (a name or a list; repeats dropped; each must be
    a folder of ``root`` that ``is_split``) or, when None, whichever of ``defaults`` exist (DataError
    ``none_found`` when none does)."""
    if splits is None:
        chosen = [s for s in defaults if (root / s).is_dir()]
        if not chosen:
            raise DataError(none_found or f"no split folder ({', '.join(defaults)}) in {root}")
        return chosen
    chosen = list(dict.fromkeys([splits] if isinstance(splits, str) else splits))
    if not chosen:
        raise UsageError("no split chosen")
    absent = [s for s in chosen if not (root / s).is_dir() or not is_split(s)]
    if absent:
        have = sorted(p.name for p in root.iterdir() if p.is_dir() and is_split(p.name))
        raise DataError(f"split {', '.join(absent)} not found in {root} (available: {', '.join(have) or 'none'})")
    return chosen


def parse_image_size(text, option: str = "--image-size") -> tuple[int, int] | None:
    """'720x1280' (height x width, PyTorch's order) -> (720, 1280). None/'' -> None; an (H, W) pair
    passes through after checking. ``option`` names the setting in messages."""
    if text is None or text == "":
        return None
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise UsageError(f"{option} must be a (height, width) pair, got {text!r}")
        h, w = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
        if not m:
            raise UsageError(f"bad {option} '{text}': expected HEIGHTxWIDTH, e.g. 720x1280")
        h, w = m.groups()
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise UsageError(f"bad {option} {text!r}: height and width must be integers") from None
    if not (1 <= h <= 32768 and 1 <= w <= 32768):
        raise UsageError(f"bad {option} {text!r}: height and width must be between 1 and 32768")
    return (h, w)


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """To ``size`` (H, W). INTER_AREA when shrinking (averages, no aliasing), INTER_LINEAR when enlarging."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    shrink = w <= img.shape[1] and h <= img.shape[0]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """To ``size`` (H, W), nearest neighbour: labels are ids, interpolating them would invent classes."""
    h, w = size
    if label.shape[:2] == (h, w):
        return label
    return cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)


def class_counts(label: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(label.ravel(), minlength=256)[:num_classes].astype(np.int64).tolist()


# --------------------------------------------------------------------------------------------------
# per-item work (runs in worker processes)


@dataclass(frozen=True)
class _Job:
    out: str
    image_size: tuple[int, int] | None  # (H, W)
    convert_label: Callable[[np.ndarray], np.ndarray]
    read_raw_label: Callable[[Path], np.ndarray]
    num_classes: int
    force: bool
    skip_blank: bool


def _skip(item: RawItem, reason: str, detail: str = "") -> dict:
    return {"split": item.split, "id": item.id, "reason": reason, "detail": detail or reason,
            "image": str(item.image), "label": None if item.label is None else str(item.label)}


def _read(fn, path, reason, item):
    """Decoders of untrusted files can raise almost anything (PIL: SyntaxError, struct.error, ...)."""
    # OpenCV prints its own lines for broken PNGs; the defect is reported once, in report.json.
    cvlog = getattr(getattr(cv2, "utils", None), "logging", None)
    level = cvlog.getLogLevel() if cvlog else None
    if cvlog:
        cvlog.setLogLevel(cvlog.LOG_LEVEL_SILENT)
    try:
        return fn(path), None
    except Exception as e:  # noqa: BLE001 - any decode failure is a data defect to report, not a crash
        return None, _skip(item, reason, f"{type(e).__name__}: {e}" if not isinstance(e, DataError) else str(e))
    finally:
        if cvlog:
            cvlog.setLogLevel(level)


def _process(job: _Job, task: tuple[RawItem, bool, bool]) -> tuple:
    """Returns ("kept", split, id, counts or None, reused) or ("skip", skip-dict).

    ``task``: (item, its split has labels, listed as validated by the previous run)."""
    item, labelled, verified_before = task
    out = Path(job.out)
    if not item.image.is_file():
        return ("skip", _skip(item, IMAGE_MISSING, f"no image file {item.image}"))
    if labelled and item.label is None:
        return ("skip", _skip(item, LABEL_MISSING, f"no label for image {item.image}"))
    if item.label is not None and not item.label.is_file():
        return ("skip", _skip(item, LABEL_MISSING, f"no label file {item.label}"))
    img_out = out / "images" / item.split / f"{item.id}.png" if job.image_size else None
    lab_out = out / "labels" / item.split / f"{item.id}.png" if item.label is not None else None

    # Idempotence: outputs are written atomically, label last, so an existing label means a
    # complete, validated conversion; only read it back for the class counts.
    if not job.force:
        if lab_out is not None and lab_out.is_file() and (img_out is None or img_out.is_file()):
            try:
                lab = read_label(lab_out)
                if job.image_size is None or lab.shape[:2] == tuple(job.image_size):
                    return ("kept", item.split, item.id, class_counts(lab, job.num_classes), True)
            except DataError:
                pass  # unreadable output (should not happen): convert again
        elif lab_out is None and (img_out.is_file() if img_out is not None else verified_before):
            return ("kept", item.split, item.id, None, True)

    img, err = _read(read_image, item.image, IMAGE_UNREADABLE, item)
    if err:
        return ("skip", err)
    lab = None
    if item.label is not None:
        raw, err = _read(job.read_raw_label, item.label, LABEL_UNREADABLE, item)
        if err:
            return ("skip", err)
        if raw.shape[:2] != img.shape[:2]:
            return ("skip", _skip(item, SIZE_MISMATCH, f"label {raw.shape[1]}x{raw.shape[0]} != image "
                                                      f"{img.shape[1]}x{img.shape[0]}"))
        try:
            lab = np.ascontiguousarray(job.convert_label(raw), dtype=np.uint8)
        except DataError as e:
            return ("skip", _skip(item, LABEL_INVALID, str(e)))
        if job.skip_blank and not (lab != IGNORE).any():
            return ("skip", _skip(item, BLANK_LABEL, "every pixel maps to ignore (255)"))
    if job.image_size:
        write_png(img_out, resize_image(img, job.image_size), rgb=True)
    if lab is not None:
        if job.image_size:
            lab = resize_label(lab, job.image_size)
        write_png(lab_out, lab, rgb=False)
        return ("kept", item.split, item.id, class_counts(lab, job.num_classes), False)
    return ("kept", item.split, item.id, None, False)


# --------------------------------------------------------------------------------------------------
# the engine


def _settings_of(meta: dict) -> tuple:
    resize = meta.get("resize")
    return (meta.get("kind"), meta.get("raw_root"), None if resize is None else tuple(resize),
            meta.get("conversion"))


def _check_out(out: Path, raw_root: Path) -> None:
    out_r, raw_r = out.resolve(), raw_root.resolve()
    if out_r == raw_r or raw_r in out_r.parents:
        raise UsageError(f"output folder {out} is inside the raw dataset {raw_root}; "
                         "choose a folder outside it (the raw dataset is never written to)")
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")


def _read_split_file(path: Path) -> dict[str, str]:
    ids = {}
    try:
        for line in path.read_text().splitlines():
            if "\t" in line:
                i, p = line.split("\t", 1)
                ids[i] = p
    except OSError:
        pass
    return ids


def _prepared_or_pending(out: Path) -> dict | None:
    """Settings of a finished (dataset.json) or interrupted (in-progress marker) preparation."""
    for name in ("dataset.json", IN_PROGRESS):
        p = out / name
        if p.is_file():
            try:
                meta = read_json(p)
            except DataError:
                continue
            if isinstance(meta, dict):
                return meta
    return None


def _validate_items(items: Sequence[RawItem]) -> tuple[list[RawItem], list[dict]]:
    good, bad, seen = [], [], set()
    for it in items:
        if not _SPLIT_RE.match(it.split):
            raise UsageError(f"bad split name '{it.split}': use letters, digits, '_', '-', '.'")
        # ids become file names and tab-separated lines
        if not it.id or any(c in it.id for c in "\t\n\r/\\") or it.id in (".", ".."):
            bad.append(_skip(it, BAD_ID, f"id {it.id!r} cannot be a file name"))
        elif (it.split, it.id) in seen:
            bad.append(_skip(it, DUPLICATE_ID, f"another raw file in '{it.split}' has id {it.id}"))
        else:
            seen.add((it.split, it.id))
            good.append(it)
    return good, bad


def prepare(
    kind: str,
    items: Iterable[RawItem],
    convert_label: Callable[[np.ndarray], np.ndarray],
    label_space,
    raw_root: str | Path,
    out: str | Path,
    *,
    image_size=None,
    workers: int = 0,
    force: bool = False,
    has_labels: dict[str, bool] | None = None,
    skip_blank: bool = True,
    read_raw_label: Callable[[Path], np.ndarray] = read_label,
    conversion: dict | None = None,
    conversion_name: str = "label conversion",
) -> dict:
    """Convert ``items`` into the prepared folder ``out`` and return the report (also report.json).
    ``image_size`` (H, W) or 'HxW': write images and labels resized to it.

    ``convert_label`` must be picklable when ``workers`` > 0 (a module-level function or an object
    such as ``LutLabels``). ``has_labels`` (split -> bool) defaults to: a split has labels when any
    of its items names a label file. ``workers`` = 0 converts in this process. ``label_space`` is a
    built-in name or a ``LabelSpace``; its full definition goes into dataset.json either way.
    ``read_raw_label`` (picklable) reads one raw label file, e.g. SYNTHIA's 16-bit RGB PNGs.
    ``conversion`` (JSON-able) describes a label conversion the caller's settings choose, e.g. the
    folder converter's value mapping: finished labels are only reused when it is the same, and it is
    recorded in dataset.json; ``conversion_name`` names it in the error."""
    raw_root = Path(os.path.abspath(Path(raw_root).expanduser()))
    out = Path(os.path.abspath(Path(out).expanduser()))
    image_size = parse_image_size(image_size)
    # dataset.json records the size as "resize": [W, H] (the folder format, read by PreparedDataset)
    resize = (image_size[1], image_size[0]) if image_size else None
    if not isinstance(workers, int) or workers < 0:
        raise UsageError(f"--workers must be 0 (in-process) or a positive number, got {workers!r}")
    space = get_label_space(label_space)
    space_meta = {"label_space": space.name, "label_space_def": space.to_dict()}
    items, bad_ids = _validate_items(list(items))
    splits = list(dict.fromkeys(it.split for it in items))
    if not splits:
        raise DataError(f"no images found under {raw_root}")
    labelled = {s: any(it.label is not None for it in items if it.split == s) for s in splits}
    if has_labels:
        labelled.update({s: bool(v) for s, v in has_labels.items() if s in labelled})
    # In an image-only split labels are not looked at (e.g. Cityscapes' placeholder test labels).
    items = [it if labelled[it.split] or it.label is None else RawItem(it.split, it.id, it.image, None)
             for it in items]

    _check_out(out, raw_root)
    settings = (kind, str(raw_root), resize, conversion)
    prev = _prepared_or_pending(out)
    if prev is not None and not force and _settings_of(prev) != settings:
        pk, pr, ps, pc = _settings_of(prev)
        diff = [f"a different {n} {a!r} (now {b!r})" for n, a, b in
                (("kind", pk, kind), ("raw_root", pr, str(raw_root)), ("resize", ps, resize)) if a != b]
        if pc != conversion:
            diff.append(f"another {conversion_name} (recorded in its dataset.json as 'conversion')")
        # finished labels are reused on a re-run: with other settings they would be silently wrong
        raise DataError(f"{out} was prepared with {', '.join(diff)}; "
                        "use another output folder or --force to redo it")
    if prev is None and not force and out.is_dir() and any(out.iterdir()):
        # not ours: writing labels/, splits/ ... into an arbitrary folder is most likely a typo
        raise DataError(f"{out} is not empty and holds no prepared dataset; choose an empty or new folder "
                        "or use --force to write into it")
    same = prev is not None and _settings_of(prev) == settings
    # Splits prepared by an earlier run with the same settings (e.g. train, then val) stay listed.
    kept_before = {s: n for s, n in (prev or {}).get("splits", {}).items()
                   if same and s not in splits and (out / "splits" / f"{s}.txt").is_file()}
    labels_before = {s: v for s, v in (prev or {}).get("has_labels", {}).items() if s in kept_before}

    conv_meta = {} if conversion is None else {"conversion": conversion}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / IN_PROGRESS, {"format": FORMAT, "version": VERSION, "kind": kind, **space_meta,
                                   "raw_root": str(raw_root), "resize": list(resize) if resize else None,
                                   **conv_meta, "splits": kept_before, "has_labels": labels_before})
    (out / "dataset.json").unlink(missing_ok=True)  # from here on the folder is unfinished

    # Image-only items without --image-size write nothing; the previous split list says which raw
    # images were already validated, so a re-run does not decode them all again.
    listed = {s: _read_split_file(out / "splits" / f"{s}.txt") for s in splits} if (same and not force) else {}
    tasks = [(it, labelled[it.split], listed.get(it.split, {}).get(it.id) == str(it.image)) for it in items]

    job = _Job(str(out), image_size, convert_label, read_raw_label, space.num_classes, force, skip_blank)
    fn = partial(_process, job)
    results = []
    with progress(len(tasks), f"prepare {kind}") as advance:
        if workers == 0:
            for t in tasks:
                results.append(fn(t))
                advance(1, info=t[0].split)
        else:
            chunk = max(1, min(32, len(tasks) // (workers * 8)))
            with ProcessPoolExecutor(max_workers=workers) as ex:
                for t, r in zip(tasks, ex.map(fn, tasks, chunksize=chunk)):
                    results.append(r)
                    advance(1, info=t[0].split)

    skipped = bad_ids + [r[1] for r in results if r[0] == "skip"]
    kept = {s: [] for s in splits}
    reused = Counter()
    for r in results:
        if r[0] == "kept":
            kept[r[1]].append((r[2], r[3]))
            reused[r[1]] += r[4]
    by_id = {(it.split, it.id): it for it in items}

    for s in splits:
        lines = []
        for i, _ in kept[s]:
            img = f"images/{s}/{i}.png" if resize else str(by_id[(s, i)].image)
            lines.append(f"{i}\t{img}\n")
        write_text(out / "splits" / f"{s}.txt", "".join(lines))
        if labelled[s]:
            counts = [c for _, c in kept[s]]
            total = np.asarray(counts, np.int64).sum(0).tolist() if counts else [0] * space.num_classes
            write_json(out / "stats" / f"{s}.json", {"classes": list(space.classes), "ids": [i for i, _ in kept[s]],
                                                      "counts": counts, "total": total})
        else:
            (out / "stats" / f"{s}.json").unlink(missing_ok=True)  # stale counts from a labelled run

    old_report = {}
    if kept_before and (out / "report.json").is_file():
        try:
            old_report = read_json(out / "report.json")
        except DataError:
            old_report = {}
    report = {
        "kept": {**{s: n for s, n in old_report.get("kept", {}).items() if s in kept_before},
                 **{s: len(kept[s]) for s in splits}},
        "reused": {s: reused[s] for s in splits},
        "skipped": [e for e in old_report.get("skipped", []) if e.get("split") in kept_before] + skipped,
    }
    write_json(out / "report.json", report)
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, **space_meta,
            "raw_root": str(raw_root), "resize": list(resize) if resize else None, **conv_meta,
            "splits": {**kept_before, **{s: len(kept[s]) for s in splits}},
            "has_labels": {**labels_before, **labelled}}
    write_json(out / "dataset.json", meta)
    (out / IN_PROGRESS).unlink(missing_ok=True)

    skipped_per_split = Counter(e["split"] for e in skipped)
    for s in splits:
        note = f", {reused[s]} already prepared" if reused[s] else ""
        lab = "" if labelled[s] else " (no labels)"
        log(f"{kind} {s}{lab}: {len(kept[s])} kept{note}, {skipped_per_split[s]} skipped")
    for reason, n in sorted(Counter(e["reason"] for e in skipped).items()):
        log(f"skipped {n} x {reason} (details in {out / 'report.json'})")
    return report


# --------------------------------------------------------------------------------------------------
# the converter registry: `segadapt prepare-data NAME` is generated from it, one subcommand each


@dataclass(frozen=True)
class ConverterOption:
    """One setting a converter takes, described as data so that the data layer needs no CLI library:
    the command line shows it as ``flag`` and passes ``parse(value)`` as keyword ``param``."""

    param: str  # the converter function's keyword
    flag: str  # its command-line spelling
    type: type  # str, int, float, Path, or bool (an on/off flag)
    help: str
    default: Any = None  # ... (Ellipsis) = required
    parse: Callable[[Any], Any] | None = None  # command-line value -> the value the converter takes


@dataclass(frozen=True)
class Converter:
    name: str
    fn: Callable[..., dict]  # fn(**{option.param: value}) -> report {"kept": ..., "skipped": ...}
    options: tuple[ConverterOption, ...]
    help: str


CONVERTERS: Registry[Converter] = Registry("dataset converter")


def converter(name: str, *options: ConverterOption, help: str | None = None):
    """Decorator: register ``fn`` as converter ``name`` taking ``options`` (and return it unchanged).
    ``help`` defaults to the first paragraph of the converter module's docstring (its raw layout)."""
    def add(fn):
        doc = help or (sys.modules[fn.__module__].__doc__ or fn.__doc__ or "").strip().split("\n\n")[0]
        CONVERTERS.register(name)(Converter(name, fn, tuple(options), " ".join(doc.replace("``", "`").split())))
        return fn
    return add


def parse_splits(text) -> list[str] | None:
    """'train,val' -> ['train', 'val']; None -> None (the converter's default splits)."""
    if text is None:
        return None
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    if not names:
        raise UsageError("--splits is empty")
    return names


def check_workers(n: int) -> int:
    if n < 0:
        raise UsageError("--workers must be >= 0")
    return n


# the options most converters share
ROOT = ConverterOption("raw_root", "--root", Path, "Raw dataset folder (never written to).", ...)
OUT = ConverterOption("out", "--out", Path, "Prepared folder to write.", ...)
IMAGE_SIZE = ConverterOption("image_size", "--image-size", str,
                             "Write resized copies, HxW (height first, e.g. 720x1280).", None, parse_image_size)
SPLITS = ConverterOption("splits", "--splits", str, "Comma-separated splits (default: every split found).", None,
                         parse_splits)
WORKERS = ConverterOption("workers", "--workers", int, "Parallel conversion processes (0 = in-process).", 2,
                          check_workers)
FORCE = ConverterOption("force", "--force", bool, "Redo finished work / replace a different preparation.", False)
