"""The pseudo-label folder: one class owns its layout, its confidence encoding, its manifest (and the
version check), its prototypes, its class histogram and the training items built from it, as
:class:`segadapt.data.prepared.PreparedDataset` owns the prepared folder. ``segadapt pseudo-label``
(``segadapt.engine.pseudo_label``, which runs the model) writes through it; self-training, evaluate and
visualize read through it.

Layout of a folder::

    labels/<id>.png          uint8 class of each pixel (255 = ignored)
    confidence/<id>.png      uint16 round(conf * CONF_SCALE), conf = the pixel's max softmax probability
    prototypes.pt            {"prototypes": (C, D) float32, "counts", "images", "min_pixels", "feat_dim",
                             "label_space"}: class prototypes as DiGA's calc_centroids.py makes them
    confidence_hist.npy      int64 (C, CONF_BINS): pixels labelled c whose stored confidence is in bin b
    accumulator-v2.bin       per-image log of the run (``accumulator-v2.<r>.bin`` for rank r > 0); a re-run
                             skips every image recorded there
    manifest.json            what made the folder (format, version, checkpoint, protocol, data, split, ...)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from segadapt.data.io import read_json, read_label, write_json
from segadapt.errors import DataError

MANIFEST_FORMAT = "segadapt-pseudo-labels"
#: 2: prototypes are the mean over images of per-image class means at feature resolution (DiGA's centroid
#: script), and the log's records carry feature-resolution counts. Version 1 divided feature sums by
#: label-resolution counts (prototypes ~(H/h)(W/w) times too small); its folders are refused.
FORMAT_VERSION = 2
#: the per-image log; its name carries the record layout, so a log of another layout is never misread
ACC_LOG = "accumulator-v2.bin"
#: bins of the per-class confidence histogram over [0, 1]: class-balanced thresholds are exact to 1/CONF_BINS
CONF_BINS = 1000
CONF_SCALE = 65535  # confidence/<id>.png stores round(conf * CONF_SCALE) as uint16
HIST_FILE = "confidence_hist.npy"
PROTOTYPES_FILE = "prototypes.pt"
MANIFEST_FILE = "manifest.json"
#: manifest fields a folder must share with a new run to be resumed into (version, confidence_bins: the
#: log's record layout and what the prototypes mean)
REUSE_FIELDS = ("version", "checkpoint_sha256", "weights", "protocol", "data", "split", "confidence_bins")


# -- the confidence encoding ---------------------------------------------------------------------------

def quantize_confidence(conf: torch.Tensor) -> torch.Tensor:
    """Confidence in [0, 1] -> the value stored in confidence/<id>.png, round(conf * CONF_SCALE), int32."""
    return (conf * CONF_SCALE).round().to(torch.int32)


def stored_confidence(u16: np.ndarray) -> np.ndarray:
    """Stored values -> float32 confidence, float32(u) / float32(CONF_SCALE): the one expression training
    crops and thresholds use, so a threshold and a stored confidence of equal uint16 value compare equal."""
    return np.asarray(u16).astype(np.float32) / np.float32(CONF_SCALE)


def confidence_bins(conf_u16: torch.Tensor, bins: int = CONF_BINS) -> torch.Tensor:
    """Bin of each stored (uint16) confidence: floor(conf * bins), conf = 1 in the last bin. Integer
    arithmetic on the stored value, so training can compare against a bin edge without rounding doubt."""
    return (conf_u16.long() * bins // CONF_SCALE).clamp_(max=bins - 1)


def bin_floor(b: int, bins: int = CONF_BINS) -> float:
    """The lowest confidence, as training reads it (:func:`stored_confidence`), whose stored value falls in
    bin ``b`` of :func:`confidence_bins`: a pixel reaches it exactly when its bin is ``b`` or above."""
    u16 = -(-int(b) * CONF_SCALE // bins)  # ceil: smallest stored value whose bin is b
    return float(stored_confidence(np.array([u16]))[0])


def confidence_histogram(label: torch.Tensor, conf_u16: torch.Tensor, num_classes: int,
                         bins: int = CONF_BINS) -> torch.Tensor:
    """(num_classes, bins) int64: pixels with label c and stored confidence in bin b (ignored pixels skipped)."""
    lab = label.reshape(-1).long()
    b = confidence_bins(conf_u16.reshape(-1), bins)
    keep = lab < num_classes
    flat = torch.bincount(lab[keep] * bins + b[keep], minlength=num_classes * bins)
    return flat.view(num_classes, bins)


# -- the folder ------------------------------------------------------------------------------------------

class PseudoLabelFolder:
    """A pseudo-label folder at ``root``. Constructing one only names the paths (the writer makes the folder);
    :meth:`open` is the reader's entry: it checks the folder against the target data first."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._manifest: dict | None = None

    def __repr__(self) -> str:
        return f"PseudoLabelFolder({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------------
    @property
    def labels_dir(self) -> Path:
        return self.root / "labels"

    @property
    def confidence_dir(self) -> Path:
        return self.root / "confidence"

    def label_path(self, image_id: str) -> Path:
        return self.labels_dir / f"{image_id}.png"

    def confidence_path(self, image_id: str) -> Path:
        return self.confidence_dir / f"{image_id}.png"

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def prototypes_path(self) -> Path:
        return self.root / PROTOTYPES_FILE

    @property
    def histogram_path(self) -> Path:
        return self.root / HIST_FILE

    def log_path(self, rank: int = 0) -> Path:
        """Rank 0 appends to ``ACC_LOG``, rank r > 0 to ``accumulator-v2.<r>.bin``."""
        stem, ext = ACC_LOG.rsplit(".", 1)
        return self.root / (ACC_LOG if rank == 0 else f"{stem}.{rank}.{ext}")

    def all_logs(self) -> list[Path]:
        stem, ext = ACC_LOG.rsplit(".", 1)
        return sorted(self.root.glob(f"{stem}*.{ext}"))

    # -- reading -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, dataset, split: str) -> PseudoLabelFolder:
        """The finished folder at ``root``, checked against the target ``dataset``'s ``split``: a segadapt
        pseudo-label folder of this format version, complete, with a label for every image."""
        folder = cls(root)
        if not folder.root.is_dir():
            raise DataError(f"pseudo-label folder {folder.root} does not exist")
        manifest = folder.manifest()
        if manifest.get("format") != MANIFEST_FORMAT:
            raise DataError(f"{folder.root} is not a segadapt pseudo-label folder")
        if manifest.get("version") != FORMAT_VERSION:
            raise folder.old_version_error(manifest.get("version"))
        if not manifest.get("complete"):
            raise DataError(f"pseudo-labels in {folder.root} are incomplete; re-run pseudo-label to finish them")
        missing = [i for i in dataset.ids(split) if not folder.label_path(i).exists()]
        if missing:
            raise DataError(f"{len(missing)} target images have no pseudo-label in {folder.root} (first: {missing[0]})")
        return folder

    def manifest(self) -> dict:
        if self._manifest is None:
            self._manifest = read_json(self.manifest_path)
        return self._manifest

    def old_version_error(self, version) -> DataError:
        return DataError(f"{self.root} was made by an older segadapt (pseudo-label format {version}, now "
                         f"{FORMAT_VERSION}: prototypes are computed differently); re-run `segadapt pseudo-label "
                         "--force` into it to replace it")

    def prototypes(self) -> torch.Tensor | None:
        """The class prototypes (C, D) float32, or None for a folder without prototypes.pt."""
        path = self.prototypes_path
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)["prototypes"]
        except Exception as e:  # noqa: BLE001 - any unpickling failure (or a missing key) means a bad file
            raise DataError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None

    def histogram(self) -> np.ndarray:
        """The per-class confidence histogram, int64 (classes, bins): pixels labelled c whose stored
        confidence falls in bin b (:func:`confidence_bins`); class-balanced thresholds are read from it."""
        path = self.histogram_path
        if not path.is_file():
            raise DataError(f"{self.root} has no {HIST_FILE} (made by an older segadapt); re-run pseudo-label "
                            "with --force")
        try:
            hist = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path}: {e}") from None
        if hist.ndim != 2 or hist.dtype.kind not in "iu":
            raise DataError(f"{path} is not a (classes, bins) integer histogram")
        return hist.astype(np.int64)

    def confidence(self, image_id: str) -> np.ndarray | None:
        """An image's confidence map as float32 in [0, 1] (:func:`stored_confidence`), or None without one."""
        path = self.confidence_path(image_id)
        return stored_confidence(read_label(path)) if path.exists() else None

    def items(self, target_items, with_confidence: bool = False) -> list[tuple]:
        """Training items of :class:`segadapt.data.datasets.TrainCrops`: each target item (id, image, _)
        with its pseudo-label as label; ``with_confidence`` adds the confidence map as a 4th entry (for
        methods that threshold pseudo-labels)."""
        if with_confidence:
            return [(i, img, self.label_path(i), self.confidence_path(i)) for i, img, _lab in target_items]
        return [(i, img, self.label_path(i)) for i, img, _lab in target_items]

    # -- writing (segadapt.engine.pseudo_label) ------------------------------------------------------
    def prepare(self, manifest: dict, force: bool) -> None:
        """Make the folder ready for a run described by ``manifest``: an earlier run's folder of the same
        checkpoint, protocol, data and format is kept (the run resumes it); any other is refused, or with
        ``force`` cleared."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.manifest_path.exists():
            if any(self.labels_dir.glob("*.png")) and not force:
                raise DataError(f"{self.root} holds pseudo-labels without a manifest; use --force to replace them")
        else:
            old = read_json(self.manifest_path)
            diff = [k for k in REUSE_FIELDS if old.get(k) != manifest.get(k)]
            if "version" in diff and not force:
                raise self.old_version_error(old.get("version"))
            if diff and not force:
                what = "checkpoint" if "checkpoint_sha256" in diff else ", ".join(diff)
                raise DataError(f"{self.root} was made with another {what}; use another --out or --force to replace it")
            if diff:
                self.clear()
        self.labels_dir.mkdir(exist_ok=True)
        self.confidence_dir.mkdir(exist_ok=True)

    def clear(self) -> None:
        """Remove everything a run writes (every log layout's logs, this one's and older ones)."""
        for sub in (self.labels_dir, self.confidence_dir):
            shutil.rmtree(sub, ignore_errors=True)
        for f in (self.prototypes_path, self.histogram_path, self.manifest_path):
            f.unlink(missing_ok=True)
        for f in self.root.glob("accumulator*.bin"):
            f.unlink()
        self._manifest = None

    def write_prototypes(self, payload: dict) -> None:
        tmp = self.root / f".{PROTOTYPES_FILE}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, self.prototypes_path)

    def write_histogram(self, hist: np.ndarray) -> None:
        tmp = self.root / f".{HIST_FILE}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, hist)
        os.replace(tmp, self.histogram_path)

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.manifest_path, manifest)
        self._manifest = manifest
