"""Prediction overlays: the image blended with the colour map, and a legend of the classes present
drawn into the top-left corner with OpenCV (so an overlay keeps the image's size, as video frames must).

The colours are the label space's palette (``LabelSpace.colorize``), the same as the panels use."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from segadapt.data.labelspace import LabelSpace

LEGEND_BG = (32, 32, 32)
LEGEND_FG = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def alpha_weight(alpha: float) -> int:
    """The colour map's weight in 1/255 steps: the blend is integer arithmetic, exact and reproducible."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
    return int(round(float(alpha) * 255))


def blend(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """uint8 RGB: ``(image * (255 - w) + color * w + 127) // 255`` with ``w = round(alpha * 255)``
    (alpha = weight of the colour map; rounded to nearest, ties up)."""
    w = alpha_weight(alpha)
    acc = image.astype(np.uint16) * np.uint16(255 - w)
    acc += color.astype(np.uint16) * np.uint16(w)  # at most 255 * 255 + 127 < 2 ** 16
    acc += np.uint16(127)
    return (acc // np.uint16(255)).astype(np.uint8)


def _text_scale(height: int) -> float:
    # readable on 1080p and still legible on a 256-pixel thumbnail
    return float(np.clip(height / 900.0, 0.35, 1.2))


def draw_legend(img: np.ndarray, label_space: LabelSpace, counts: Sequence[int]) -> tuple[int, int, int, int]:
    """Draw, in place, a box listing the classes with pixels (``counts[c] > 0``), most frequent first,
    each with its palette swatch; rows that do not fit the image height are summed up as "+N more".
    Returns the box (x0, y0, x1, y1), exclusive ends; (0, 0, 0, 0) when nothing is drawn."""
    h, w = img.shape[:2]
    present = [int(c) for c in np.argsort(-np.asarray(counts), kind="stable") if counts[c] > 0]
    if not present:
        return (0, 0, 0, 0)
    scale = _text_scale(h)
    thick = max(1, int(round(scale * 1.5)))
    (_tw, th), base = cv2.getTextSize("Ag", _FONT, scale, thick)
    row = th + base + max(2, int(4 * scale))
    pad = max(2, int(4 * scale))
    swatch = th + base - 2
    max_rows = max(1, (h - 2 * pad) // row)
    shown = present
    if len(present) > max_rows:
        shown = present[:max_rows - 1] if max_rows > 1 else []
    labels = [label_space.classes[c] for c in shown]
    if len(shown) < len(present):
        labels.append(f"+{len(present) - len(shown)} more")
    text_w = max(cv2.getTextSize(t, _FONT, scale, thick)[0][0] for t in labels)
    x1 = min(w, pad + swatch + pad + text_w + 2 * pad)
    y1 = min(h, pad + row * len(labels) + pad)
    cv2.rectangle(img, (0, 0), (x1 - 1, y1 - 1), LEGEND_BG, -1)
    for k, text in enumerate(labels):
        y = pad + k * row
        if k < len(shown):
            colour = tuple(int(v) for v in label_space.palette[shown[k]])
            cv2.rectangle(img, (pad, y), (pad + swatch - 1, y + swatch - 1), colour, -1)
        cv2.putText(img, text, (2 * pad + swatch, y + th), _FONT, scale, LEGEND_FG, thick, cv2.LINE_AA)
    return (0, 0, x1, y1)


def overlay(image: np.ndarray, pred: np.ndarray, label_space: LabelSpace, alpha: float = 0.5,
            counts: Sequence[int] | None = None, legend: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(colour map, overlay) of a trainId map ``pred`` on RGB ``image`` (same H, W). ``counts``: pixels
    per class (computed here when not given), which decide what the legend lists."""
    color = label_space.colorize(pred)
    out = blend(image, color, alpha)
    if legend:
        if counts is None:
            counts = np.bincount(pred.reshape(-1), minlength=256)[: label_space.num_classes]
        draw_legend(out, label_space, counts)
    return color, out
