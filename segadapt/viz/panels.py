"""Qualitative panels: image | ground truth | prediction | error map | confidence, as RGB uint8.

Everything is numpy in, numpy out (torch tensors are accepted and moved to the CPU), so the
callers decide where the pictures go (``segadapt.data.io.write_png``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import cv2
import numpy as np

from segadapt.data.labelspace import IGNORE, LabelSpace

TITLE_H = 20  # height of the title bar above every tile
TITLE_BG = (40, 40, 40)
TITLE_FG = (255, 255, 255)
CORRECT_COLOR = (0, 200, 0)
WRONG_COLOR = (220, 0, 0)
IGNORED_COLOR = (64, 64, 64)  # grey, so ignored pixels differ from the black padding of stack_panels

DEFAULT_TITLES = {
    "image": "image",
    "label": "ground truth",
    "pred": "prediction",
    "error": "error",
    "confidence": "confidence",
}
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _np(x) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3):
        img = img.transpose(1, 2, 0)  # CHW -> HWC
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        if np.nanmax(img, initial=0.0) <= 1.0:  # float images in [0, 1]
            img = img * 255.0
        img = np.clip(np.nan_to_num(img), 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(img)


def _resize(a: np.ndarray, hw: tuple[int, int], interp: int) -> np.ndarray:
    if a.shape[:2] == hw:
        return a
    return cv2.resize(a, (hw[1], hw[0]), interpolation=interp)


def _train_ids(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Map anything outside [0, C) to IGNORE so colourising never indexes past the palette."""
    lab = np.asarray(label).astype(np.int64)
    return np.where((lab >= 0) & (lab < num_classes), lab, IGNORE).astype(np.uint8)


def error_map(label: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """RGB: green where pred == label, red where not, grey where the label is ignored."""
    lab = _train_ids(label, num_classes)
    pr = np.asarray(pred).astype(np.int64)
    out = np.empty(lab.shape + (3,), np.uint8)
    out[:] = WRONG_COLOR
    out[lab == pr] = CORRECT_COLOR
    out[lab == IGNORE] = IGNORED_COLOR
    return out


def confidence_map(confidence: np.ndarray) -> np.ndarray:
    """Confidence in [0, 1] -> RGB viridis (dark purple = 0, yellow = 1)."""
    conf = np.clip(np.nan_to_num(np.asarray(confidence, np.float64)), 0.0, 1.0)
    grey = np.round(conf * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)


def _titled(tile: np.ndarray, title: str) -> np.ndarray:
    w = tile.shape[1]
    bar = np.empty((TITLE_H, w, 3), np.uint8)
    bar[:] = TITLE_BG
    if title:
        scale = 0.45
        cv2.putText(bar, title, (4, TITLE_H - 6), _FONT, scale, TITLE_FG, 1, cv2.LINE_AA)
    return np.concatenate([bar, tile], axis=0)


def _titles_for(keys: list[str], titles) -> list[str]:
    if titles is None:
        return [DEFAULT_TITLES[k] for k in keys]
    if isinstance(titles, Mapping):
        return [titles.get(k, DEFAULT_TITLES[k]) for k in keys]
    titles = list(titles)
    if len(titles) != len(keys):
        raise ValueError(f"{len(titles)} titles for {len(keys)} tiles ({', '.join(keys)})")
    return titles


def make_panel(image, label, pred, confidence, label_space: LabelSpace,
               titles: Mapping[str, str] | Sequence[str] | None = None) -> np.ndarray:
    """A horizontal strip (RGB uint8) of titled tiles, all at the image's size.

    Tiles, in order: image, ground truth (colourised), prediction (colourised), error map (only
    when both label and pred are given), confidence (viridis of values in [0, 1]). Tiles whose
    input is None are left out. ``titles``: a mapping from tile key (image, label, pred, error,
    confidence) to title, or a list with one title per tile present, in order.
    Height = image height + TITLE_H; width = number of tiles x image width. Maps of another size
    are resized to the image (nearest for labels, so no new class ids appear)."""
    img = _as_rgb(_np(image))
    hw = img.shape[:2]
    label, pred, confidence = _np(label), _np(pred), _np(confidence)
    c = label_space.num_classes
    tiles: dict[str, np.ndarray] = {"image": img}
    if label is not None:
        label = _resize(_train_ids(label, c), hw, cv2.INTER_NEAREST)
        tiles["label"] = label_space.colorize(label)
    if pred is not None:
        pred = _resize(_train_ids(pred, c), hw, cv2.INTER_NEAREST)
        tiles["pred"] = label_space.colorize(pred)
    if label is not None and pred is not None:
        tiles["error"] = error_map(label, pred, c)
    if confidence is not None:
        conf = _resize(np.asarray(confidence, np.float32), hw, cv2.INTER_LINEAR)
        tiles["confidence"] = confidence_map(conf)
    keys = list(tiles)
    names = _titles_for(keys, titles)
    return np.concatenate([_titled(tiles[k], t) for k, t in zip(keys, names)], axis=1)


def stack_panels(panels: Sequence[np.ndarray], pad_value: int = 0) -> np.ndarray:
    """Stack panels vertically, padding narrower ones on the right."""
    if not panels:
        raise ValueError("no panels to stack")
    width = max(p.shape[1] for p in panels)
    rows = []
    for p in panels:
        if p.shape[1] < width:
            pad = np.full((p.shape[0], width - p.shape[1], 3), pad_value, np.uint8)
            p = np.concatenate([p, pad], axis=1)
        rows.append(p)
    return np.concatenate(rows, axis=0)


LEGEND_ROW_H = 22
LEGEND_SWATCH = 16
LEGEND_COL_W = 170


def legend(label_space: LabelSpace, classes_present: Iterable[int] | None = None, columns: int = 4) -> np.ndarray:
    """RGB uint8 image of colour swatches with class names on a white background.

    ``classes_present``: class indices to show (e.g. ``np.unique`` of a label); all by default.
    Indices outside the label space (such as 255) are skipped."""
    c = label_space.num_classes
    if classes_present is None:
        idx = list(range(c))
    else:
        idx = sorted({int(i) for i in classes_present if 0 <= int(i) < c})
    n = max(len(idx), 1)
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    img = np.full((rows * LEGEND_ROW_H + 4, cols * LEGEND_COL_W, 3), 255, np.uint8)
    for k, i in enumerate(idx):
        r, col = divmod(k, cols)
        x, y = col * LEGEND_COL_W + 4, r * LEGEND_ROW_H + 4
        color = tuple(int(v) for v in label_space.palette[i])
        cv2.rectangle(img, (x, y), (x + LEGEND_SWATCH - 1, y + LEGEND_SWATCH - 1), color, -1)
        # thin border so white/near-white classes stay visible
        cv2.rectangle(img, (x, y), (x + LEGEND_SWATCH - 1, y + LEGEND_SWATCH - 1), (0, 0, 0), 1)
        cv2.putText(img, label_space.classes[i], (x + LEGEND_SWATCH + 6, y + LEGEND_SWATCH - 3), _FONT, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return img
