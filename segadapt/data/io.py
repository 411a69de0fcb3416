"""Image and file I/O: OpenCV for PNG/JPG (16-bit safe, fast), atomic writes everywhere."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from segadapt.errors import DataError

cv2.setNumThreads(1)  # the callers parallelise; avoid oversubscribing the cores


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3). Raises DataError for a missing or unreadable file."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path) -> np.ndarray:
    """Single-channel label map exactly as stored (palette PNGs give their indices).

    OpenCV expands palette PNGs to colour, so palette files are read through Pillow, which
    returns the raw indices for mode 'P'."""
    path = Path(path)
    try:
        from PIL import Image

        with Image.open(path) as im:
            if im.mode == "P":
                return np.asarray(im, dtype=np.uint8).copy()
    except Exception:  # noqa: BLE001 - fall through to OpenCV, which reports the error
        pass
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DataError(f"cannot read label {path}")
    if lab.ndim == 3:
        raise DataError(f"label {path} has {lab.shape[2]} channels; expected a single-channel or palette PNG")
    return lab


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def write_png(path: str | Path, array: np.ndarray, rgb: bool = True) -> None:
    """Write a PNG atomically (temporary file, then rename). RGB arrays are converted to BGR."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        out = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if (rgb and array.ndim == 3) else array
        ok, buf = cv2.imencode(".png", out)
        if not ok:
            raise DataError(f"cannot encode {path}")
        with open(tmp, "wb") as f:
            f.write(buf.tobytes())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"corrupt JSON {path}: {e}") from None
