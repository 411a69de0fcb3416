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


def _is_palette_png(path: Path) -> bool:
    """True for a PNG whose IHDR colour type is 3 (palette); read from the first 26 bytes, so the
    common case (grey labels) costs no second decoder pass."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False  # OpenCV below reports the missing file
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[25] == 3


def read_label(path: str | Path) -> np.ndarray:
    """Single-channel label map exactly as stored (palette PNGs give their indices).

    OpenCV expands palette PNGs to colour, so palette files are read through Pillow, which
    returns the raw indices for mode 'P'."""
    path = Path(path)
    if _is_palette_png(path):
        from PIL import Image

        try:
            with Image.open(path) as im:
                return np.asarray(im, dtype=np.uint8).copy()
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt file: one line, not a traceback
            raise DataError(f"cannot read label {path}: {e}") from None
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DataError(f"cannot read label {path}")
    if lab.ndim == 3:
        raise DataError(f"label {path} has {lab.shape[2]} channels; expected a single-channel or palette PNG")
    return lab


# Label maps (labels, pseudo-labels, predictions) are large runs of one value: zlib's run-length
# strategy at level 1 makes them ~4x smaller than OpenCV's default and ~2x faster to decode, which
# is what evaluation and data loading spend their time on. Lossless, so the pixels are the same.
_LABEL_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


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
        ok, buf = cv2.imencode(".png", out, _LABEL_PNG if out.ndim == 2 else [])
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
