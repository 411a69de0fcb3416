"""Segmentation metrics computed the way the field (and cityscapesScripts) does it.

One confusion matrix is accumulated over the whole split and scored once at the end; a mean of
per-image IoUs is a different (and wrong) number. Rows are ground truth, columns prediction.

Out-of-range predictions: a prediction outside [0, C) on a valid pixel is wrong, but it is no
class's prediction either. It is kept in a separate per-ground-truth-class ``missed`` count rather
than in the CxC matrix: it is a false negative for its ground-truth class (it lowers that class's
IoU and recall, and the pixel accuracy), and a false positive for no class. This is what
cityscapesScripts does with predictions of ids that are not evaluated (``fn = row sum - tp`` over
all predicted ids, ``fp`` only over evaluated ground-truth ids).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from segadapt.data.labelspace import IGNORE
from segadapt.errors import DataError


def _joint_histogram_u8(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """256 x 256 int64 counts of (label, prediction) value pairs of two uint8 maps."""
    if t.size < 2**24:
        # OpenCV's 2-D histogram reads the two maps in place; its float32 bins count exactly below 2^24
        t, p = np.ascontiguousarray(t).reshape(-1), np.ascontiguousarray(p).reshape(-1)
        return cv2.calcHist([t, p], [0, 1], None, [256, 256], [0, 256, 0, 256]).astype(np.int64)
    # one 16-bit code per pixel and a 65536-bin histogram
    code = (t.astype(np.uint16) << 8) | p
    return np.bincount(code.ravel(), minlength=65536).reshape(256, 256)


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _as_long_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.long()
    # via int64 numpy: torch has no (or partial) support for uint16/uint32 arrays
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x), dtype=np.int64))


class ConfusionMatrix:
    """Accumulates a confusion matrix over a split.

    Internally a C x (C + 1) int64 tensor on the device of the first update; the extra column
    counts valid pixels whose prediction is outside [0, C) (see the module docstring), so a
    single ``torch.bincount`` and a single ``all_reduce`` handle both.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._mat: torch.Tensor | None = None  # (C, C + 1) int64

    def reset(self) -> None:
        self._mat = None

    def _ensure(self, device) -> torch.Tensor:
        if self._mat is None:
            c = self.num_classes
            self._mat = torch.zeros(c, c + 1, dtype=torch.int64, device=device)
        return self._mat

    def update(self, pred, label) -> None:
        """Add one prediction/label pair (any shape, equal shapes; torch tensors or numpy arrays)."""
        if pred.shape != label.shape:
            raise DataError(f"prediction shape {tuple(pred.shape)} does not match label shape {tuple(label.shape)}")
        on_cpu = not (isinstance(pred, torch.Tensor) and pred.is_cuda) and \
            not (isinstance(label, torch.Tensor) and label.is_cuda)
        if on_cpu:
            self._update_numpy(_as_numpy(pred), _as_numpy(label))
            return
        p, t = _as_long_tensor(pred), _as_long_tensor(label)
        if p.device != t.device:
            p = p.to(t.device)
        c = self.num_classes
        # ignore_index is normally >= C, so the range test also drops it; test it explicitly anyway
        valid = (t >= 0) & (t < c) & (t != self.ignore_index)
        p, t = p[valid], t[valid]
        p = torch.where((p >= 0) & (p < c), p, torch.full_like(p, c))  # column C = "missed"
        counts = torch.bincount(t * (c + 1) + p, minlength=c * (c + 1)).reshape(c, c + 1)
        mat = self._ensure(counts.device)
        mat += counts.to(mat.device)

    def _update_numpy(self, p: np.ndarray, t: np.ndarray) -> None:
        self.add_counts(self.counts_numpy(p, t))

    def counts_numpy(self, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        """C x (C + 1) counts of one pair, without touching the matrix (so threads can count images
        in parallel and the caller adds them with ``add_counts``).

        No boolean indexing: unscored pixels go to a scratch row C that is dropped, out-of-range
        predictions to column C. uint8 maps (label files) take a joint histogram, several times
        faster again, which is what makes scoring thousands of 2048x1024 files cheap."""
        c = self.num_classes
        if t.dtype == np.uint8 and p.dtype == np.uint8:
            hist = _joint_histogram_u8(t, p)
            rows = [i for i in range(min(c, 256)) if i != self.ignore_index]
            counts = np.zeros((c, c + 1), np.int64)
            counts[rows, :c] = hist[rows, :c]
            counts[rows, c] = hist[rows, c:].sum(1)
            return counts
        t, p = t.astype(np.int64), p.astype(np.int64)
        tl = np.where((t >= 0) & (t < c) & (t != self.ignore_index), t, c)
        pl = np.where((p >= 0) & (p < c), p, c)
        idx = tl * (c + 1) + pl
        return np.bincount(idx.ravel(), minlength=(c + 1) * (c + 1)).reshape(c + 1, c + 1)[:c].astype(np.int64)

    def add_counts(self, counts: np.ndarray) -> None:
        """Add a C x (C + 1) count array made by ``counts_numpy``."""
        mat = self._ensure(torch.device("cpu") if self._mat is None else self._mat.device)
        mat += torch.from_numpy(counts).to(mat.device)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts into this one (in place); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class matrix into {self.num_classes}-class one")
        if other._mat is not None:
            mat = self._ensure(other._mat.device)
            mat += other._mat.to(mat.device)
        return self

    def all_reduce(self) -> None:
        """Sum the counts over all ranks when torch.distributed is initialised; no-op otherwise.

        Every rank must call this, including ranks that saw no images (they contribute zeros)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._mat is None:
            # NCCL only reduces CUDA tensors
            nccl = dist.get_backend() == "nccl"
            self._ensure(torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
        dist.all_reduce(self._mat, op=dist.ReduceOp.SUM)

    @property
    def matrix(self) -> np.ndarray:
        """C x C int64, rows = ground truth, columns = prediction (out-of-range predictions excluded)."""
        if self._mat is None:
            return np.zeros((self.num_classes, self.num_classes), np.int64)
        return self._mat[:, : self.num_classes].cpu().numpy()

    @property
    def missed_per_class(self) -> np.ndarray:
        """Per ground-truth class, valid pixels whose prediction was outside [0, C)."""
        if self._mat is None:
            return np.zeros(self.num_classes, np.int64)
        return self._mat[:, self.num_classes].cpu().numpy()

    @property
    def missed(self) -> int:
        return int(self.missed_per_class.sum())

    def compute(self, class_names: Sequence[str], subset: Sequence[int] | None = None) -> dict:
        """``compute`` on this matrix, with its out-of-range predictions counted as wrong."""
        return compute(self.matrix, class_names, subset=subset, missed=self.missed_per_class)


def compute(matrix, class_names: Sequence[str], subset: Sequence[int] | None = None, missed=None) -> dict:
    """Scores from a C x C confusion matrix (rows = ground truth), all in percent, float64.

    - ``per_class``: name -> IoU, ``None`` where the class is in neither label nor prediction
      (union 0); such classes are left out of the mean (cityscapesScripts: NaN, skipped).
      With ``subset`` only the subset's classes are listed.
    - ``miou``: mean IoU over the defined classes (of ``subset`` when given). IoU always comes
      from the full matrix, so pixels of classes outside the subset predicted as a subset class
      are still false positives, as in the SYNTHIA 16/13-class protocols.
    - ``pixel_acc``: correct / valid pixels over the full matrix.
    - ``mean_acc``: mean recall over the (subset) classes present in the label.
    - ``missed``: optional per-ground-truth-class counts of out-of-range predictions (false
      negatives that sit in no column), from ``ConfusionMatrix.missed_per_class``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    c = len(class_names)
    if m.shape != (c, c):
        raise ValueError(f"matrix shape {m.shape} does not match {c} class names")
    miss = np.zeros(c, np.float64) if missed is None else np.asarray(missed, dtype=np.float64)
    if subset is None:
        idx = list(range(c))
    else:
        idx = [int(i) for i in subset]
        bad = [i for i in idx if not 0 <= i < c]
        if bad:
            raise ValueError(f"subset indices {bad} outside [0, {c})")

    tp = np.diag(m)
    gt = m.sum(axis=1) + miss  # every valid pixel of the class, whatever was predicted
    predicted = m.sum(axis=0)
    union = gt + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        recall = np.where(gt > 0, tp / gt, np.nan)

    iou_sel, rec_sel = iou[idx], recall[idx]
    defined = ~np.isnan(iou_sel)
    present = ~np.isnan(rec_sel)
    total = gt.sum()
    return {
        "per_class": {
            class_names[i]: (None if np.isnan(iou[i]) else float(iou[i] * 100.0)) for i in idx
        },
        "miou": float(iou_sel[defined].mean() * 100.0) if defined.any() else None,
        "pixel_acc": float(tp.sum() / total * 100.0) if total > 0 else None,
        "mean_acc": float(rec_sel[present].mean() * 100.0) if present.any() else None,
        "num_classes_scored": int(defined.sum()),
    }


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def format_table(result: dict, title: str):
    """A rich Table: per-class IoU, then mIoU / pixel accuracy / mean accuracy."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    items = list(result["per_class"].items())
    for i, (name, v) in enumerate(items):
        table.add_row(name, _fmt(v), end_section=i == len(items) - 1)
    by_protocol = result.get("miou_by_protocol") or {}
    if len(by_protocol) > 1:  # SYNTHIA: mIoU16 and mIoU13 side by side
        for name, v in by_protocol.items():
            table.add_row(f"mIoU{name}", _fmt(v), style="bold")
    else:
        table.add_row(f"mIoU ({result['num_classes_scored']} classes)", _fmt(result["miou"]), style="bold")
    table.add_row("pixel acc", _fmt(result["pixel_acc"]))
    table.add_row("mean acc", _fmt(result["mean_acc"]))
    return table
