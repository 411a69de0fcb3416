"""The confusion matrix of an evaluation (``evaluate --save-matrix``) as a picture: rows = ground
truth normalised to 1, so the diagonal is each class's recall and a row shows where its pixels went."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from segadapt.viz.curves import save_figure_png

OTHER = "other"  # the column of valid pixels predicted outside the classes (only when there are any)


def normalised_confusion(matrix, missed=None) -> tuple[np.ndarray, bool]:
    """Row-normalised C x C matrix (float64), and whether an ``other`` column was appended.

    Row i is divided by every valid pixel of class i, those predicted outside the classes
    (``missed``) included, so that the diagonal equals the recall that ``evaluate`` scores; when
    any such pixels exist they form an extra last column and each row sums to 1. A class absent
    from the ground truth has a row of NaN (nothing to normalise)."""
    m = np.asarray(matrix, dtype=np.float64)
    miss = np.zeros(m.shape[0]) if missed is None else np.asarray(missed, dtype=np.float64)
    other = bool(miss.sum() > 0)
    if other:
        m = np.concatenate([m, miss[:, None]], axis=1)
    total = m.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(total > 0, m / total, np.nan)
    return norm, other


def plot_confusion(data: dict, out_png: str | Path, title: str | None = None) -> Path:
    """Picture of ``evaluate.load_confusion``'s data: one cell per (ground truth, prediction) pair,
    coloured and annotated with the percentage of the row; saved atomically as PNG."""
    classes = list(data["classes"])
    norm, other = normalised_confusion(data["matrix"], data.get("missed"))
    cols = classes + ([OTHER] if other else [])
    c = len(classes)

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    cell = 0.42 if c > 12 else 0.6
    fig = Figure(figsize=(2.2 + cell * len(cols), 1.8 + cell * c), layout="constrained")
    ax = fig.subplots()
    shown = np.ma.masked_invalid(norm)
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")  # grey: classes without ground truth
    im = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="share of the ground-truth class's pixels")
    size = 6 if c > 12 else 8
    counts = np.asarray(data["matrix"])
    for i in range(c):
        for j in range(len(cols)):
            v = norm[i, j]
            if math.isnan(v) or (j < c and counts[i, j] == 0) or (j == c and data["missed"][i] == 0):
                continue  # empty cells stay empty: the picture is about where pixels went
            digits = 0 if c > 12 else 1
            text = f"{100 * v:.{digits}f}"
            if float(text) == 0:  # a few pixels: not nothing
                text = "<1" if digits == 0 else "<0.1"
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color="white" if v > 0.5 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=size + 1)
    ax.set_yticks(range(c), [f"{n} (none)" if math.isnan(norm[i, 0]) else n for i, n in enumerate(classes)],
                  fontsize=size + 1)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if title is None:
        miou = data.get("miou")
        title = (f"{data.get('label_space', '')}: {data.get('num_images', '?')} images"
                 + (f", mIoU {miou:.2f}" if isinstance(miou, (int, float)) else "") + " (row %)")
    ax.set_title(title, fontsize=size + 3)
    return save_figure_png(fig, out_png, dpi=110)
