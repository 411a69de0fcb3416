"""Offline pseudo-labels: argmax of the (multi-scale) model on every target image, a confidence map,
and class prototypes as DiGA's ``calc_centroids.py`` makes them (see ``Accumulator``). The folder's
layout and formats belong to :class:`segadapt.data.pseudo_labels.PseudoLabelFolder`; this module runs the
model and writes through it.

Memory does not grow with the number of images: labels go to disk as they are made, prototype totals and
the per-class confidence histogram (class-balanced thresholds are read from it) are fixed-size. A kill
loses nothing finished: each image's prototype and histogram contribution is appended to the log
(``accumulator-v2.bin``) only after its files are written, and a re-run skips every image recorded there. A folder
made by another checkpoint or protocol, or by an older segadapt (``FORMAT_VERSION``), is refused unless
forced.
"""

from __future__ import annotations

import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from segadapt.console import log, progress
from segadapt.data.datasets import InferenceImages
from segadapt.data.io import write_png
from segadapt.data.pseudo_labels import (CONF_BINS, FORMAT_VERSION, MANIFEST_FORMAT, PseudoLabelFolder,
                                         confidence_histogram, quantize_confidence)
from segadapt.engine import distributed as D
from segadapt.engine.checkpoint import RunLock, file_sha256
from segadapt.engine.inference import Protocol, infer, load_model
from segadapt.errors import DataError, SegadaptError

#: DiGA's calc_centroids skips a class with fewer feature pixels than this in an image
PROTO_MIN_PIXELS = 5
_ID_BYTES = 256


def class_feature_sums(feat: torch.Tensor, label: torch.Tensor, num_classes: int, dtype=torch.float64):
    """Feature maps (B, D, h, w) and class maps at the same resolution (B, h, w; IGNORE or any value
    >= num_classes skipped) -> per-image, per-class feature sums (B, C, D) in ``dtype`` and pixel counts
    (B, C) int64. Sums, not means, so that they add up over images (this folder's streaming totals;
    the methods' class means divide them, ``methods.common.class_feature_means``)."""
    b, d = feat.shape[:2]
    f = feat.permute(0, 2, 3, 1).reshape(b, -1, d).to(dtype)
    lab = label.reshape(b, -1).long()
    valid = lab < num_classes
    # one row per (image, class): index image * C + class
    row = (lab + num_classes * torch.arange(b, device=lab.device)[:, None])[valid]
    sums = torch.zeros(b * num_classes, d, dtype=dtype, device=feat.device).index_add_(0, row, f[valid])
    counts = torch.bincount(row, minlength=b * num_classes)
    return sums.view(b, num_classes, d), counts.view(b, num_classes)


def image_class_stats(feat: torch.Tensor, pred: torch.Tensor, num_classes: int):
    """One image's feature map (D, h, w) and class map at the same resolution (h, w; IGNORE or any value
    >= num_classes skipped) -> per-class feature sums (C, D) float64 and pixel counts (C,) int64."""
    sums, counts = class_feature_sums(feat[None], pred[None], num_classes, torch.float64)
    return sums[0], counts[0]


class Accumulator:
    """Class prototypes, label-resolution pixel counts and confidence histograms, with an append-only
    on-disk log of per-image records (id, label-resolution counts, feature-resolution counts, feature
    sums, histogram) so that a resumed run rebuilds the exact totals without recomputing.

    Prototype of class c = mean over images of the image's class-c mean feature, over the images where
    the model's own argmax at feature resolution gives c to at least ``min_pixels`` pixels (and whose mean
    is not all-zero), as DiGA's ``calc_centroids.py`` (target branch) does. This is not the pooled mean
    (all class-c pixels of all images / their number): the pooled mean weights an image by how many
    class-c pixels it has, so one image with a large region dominates; here every image where the class
    is seen counts once, and an image with fewer than ``min_pixels`` class-c pixels not at all. (The
    official script runs 5 passes of a count-capped running mean, cap 3000; for a class seen in at most
    600 images that equals this mean exactly, beyond it weights the last images slightly more.)

    Totals are fixed-size: label counts (C,) and histogram (C, bins) int64, the sum of per-image means
    (C, D) float64 and the number of images behind it (C,). The histogram is stored as int32 per image
    (an image has < 2^31 pixels) to keep the log small."""

    def __init__(self, path: Path, num_classes: int, feat_dim: int, bins: int = CONF_BINS,
                 min_pixels: int = PROTO_MIN_PIXELS):
        self.path, self.c, self.d, self.bins, self.min_pixels = path, num_classes, feat_dim, bins, min_pixels
        self.record = _ID_BYTES + 16 * num_classes + 8 * num_classes * feat_dim + 4 * num_classes * bins
        self.mean_sums = np.zeros((num_classes, feat_dim), np.float64)  # sum over images of per-image means
        self.images = np.zeros(num_classes, np.int64)  # images behind each class's sum
        self.counts = np.zeros(num_classes, np.int64)  # label-resolution pixels per class (class_pixels)
        self.hist = np.zeros((num_classes, bins), np.int64)
        self.done: set[str] = set()

    def load(self, paths=None) -> None:
        """Add the records of ``paths`` (default: this log). A multi-process run keeps one log per rank
        (``PseudoLabelFolder.log_path``); any run, of any process count, reads them all."""
        for path in (paths if paths is not None else [self.path]):
            if not path.exists():
                continue
            data = path.read_bytes()
            n = len(data) // self.record  # a truncated last record (killed mid-append) is dropped
            for i in range(n):
                _id, *parts = self._unpack(data[i * self.record:(i + 1) * self.record])
                if _id not in self.done:  # an image recorded twice (two logs) counts once
                    self._add(_id, *parts)
            if n * self.record != len(data):
                with open(path, "r+b") as f:
                    f.truncate(n * self.record)

    def _unpack(self, rec: bytes):
        (length,) = struct.unpack("<H", rec[:2])
        _id = rec[2:2 + length].decode()
        off = _ID_BYTES
        counts = np.frombuffer(rec[off:off + 8 * self.c], np.int64)
        off += 8 * self.c
        feat_counts = np.frombuffer(rec[off:off + 8 * self.c], np.int64)
        off += 8 * self.c
        sums = np.frombuffer(rec[off:off + 8 * self.c * self.d], np.float64).reshape(self.c, self.d)
        off += 8 * self.c * self.d
        hist = np.frombuffer(rec[off:], np.int32).reshape(self.c, self.bins)
        return _id, counts, feat_counts, sums, hist

    def _add(self, _id, counts, feat_counts, sums, hist) -> None:
        means = sums / np.maximum(feat_counts, 1)[:, None]
        # the official script skips a class under min_pixels in the image, and an all-zero mean vector
        seen = (feat_counts >= self.min_pixels) & (means.sum(1) != 0)
        self.mean_sums[seen] += means[seen]
        self.images += seen
        self.counts += counts
        self.hist += hist
        self.done.add(_id)

    def append(self, _id: str, counts: np.ndarray, feat_counts: np.ndarray, sums: np.ndarray, hist: np.ndarray,
               handle) -> None:
        raw = _id.encode()
        if len(raw) > _ID_BYTES - 2:
            raise DataError(f"image id too long for the pseudo-label log: {_id}")
        head = struct.pack("<H", len(raw)) + raw
        handle.write(head.ljust(_ID_BYTES, b"\0") + counts.astype(np.int64).tobytes()
                     + feat_counts.astype(np.int64).tobytes() + sums.astype(np.float64).tobytes()
                     + hist.astype(np.int32).tobytes())
        handle.flush()
        self._add(_id, counts, feat_counts, sums, hist)

    def prototypes(self) -> torch.Tensor:
        """(C, D) float32; a class seen in no image keeps a zero prototype (the official initial value)."""
        return torch.from_numpy(self.mean_sums / np.maximum(self.images, 1)[:, None]).float()


def generate(ckpt_path: Path, dataset, split: str, out: Path, protocol: Protocol, weights: str, device,
             force: bool = False, workers: int = 0, amp=None, limit: int | None = None, size=None) -> dict:
    """``size`` (W, H): run the model on images resized to it (DiGA: Cityscapes at 1024x512); labels and
    confidence are always written at the stored image resolution, the resolution training reads."""
    ckpt_path, out = Path(ckpt_path), Path(out)
    model, label_space, ckpt = load_model(ckpt_path, weights, device)
    if label_space.to_dict() != dataset.label_space.to_dict():
        raise DataError(f"checkpoint label space '{label_space.name}' differs from the data's "
                        f"'{dataset.label_space.name}'")
    items = dataset.items(split)[:limit] if limit else dataset.items(split)
    manifest = {
        "format": MANIFEST_FORMAT, "version": FORMAT_VERSION,
        "checkpoint": str(ckpt_path.resolve()), "checkpoint_sha256": file_sha256(ckpt_path),
        "weights": ckpt["weights_used"], "protocol": {**protocol.to_dict(), "size": list(size) if size else None},
        "data": str(Path(dataset.root).resolve()), "split": split, "label_space": label_space.name,
        "num_images": len(items), "confidence_bins": CONF_BINS, "prototype_min_pixels": PROTO_MIN_PIXELS,
    }
    rank = D.info()
    folder = PseudoLabelFolder(out)
    problem = None
    if rank.is_main:  # rank 0 checks (and with --force clears) the folder while the others wait
        try:
            out.mkdir(parents=True, exist_ok=True)
            RunLock(out).acquire()
            folder.prepare(manifest, force)
        except SegadaptError as e:
            problem = e
    problem = D.broadcast_object(problem)
    if problem is not None:
        raise problem

    try:
        return _generate(model, label_space, items, folder, manifest, protocol, device, workers, amp, size, rank)
    finally:
        RunLock.release_folder(out)


def _generate(model, label_space, items, folder, manifest, protocol, device, workers, amp, size, rank) -> dict:
    c = label_space.num_classes
    feat_dim = int(model.spec["feat_dim"])
    my_log = folder.log_path(rank.rank)
    acc = Accumulator(my_log, c, feat_dim)
    # rank 0 alone reads the logs (and trims a record cut by a kill) and sends every rank the same list
    # of finished images, so all shares come from one view of the folder: on a network file system
    # another node may briefly still list the files rank 0 has just cleared (--force). The others wait
    # in the broadcast, so nothing is appended before rank 0 has read.
    if rank.is_main:
        acc.load(folder.all_logs())
    done = D.broadcast_object(acc.done)
    todo = [it for it in items if it[0] not in done]
    if done:
        log(f"resuming: {len(items) - len(todo)} of {len(items)} images already done")
    todo = D.shard(todo)  # under torchrun each rank labels every world_size-th remaining image

    loader = DataLoader(InferenceImages([(i, p, None) for i, p, _ in todo], base_size=size), batch_size=1,
                        num_workers=workers)
    t0 = time.time()
    # PNG encoding runs in threads (OpenCV releases the GIL) so the model never waits for the disk
    with ThreadPoolExecutor(max_workers=2) as pool, open(my_log, "ab") as handle, \
            progress(len(todo), "pseudo-label") as advance:
        pending = []
        for batch in loader:
            image = batch["image"].to(device)
            logits, feat = infer(model, image, protocol, c, want_feat=True, amp=amp)
            stored = tuple(int(v) for v in batch["size"][0])
            if tuple(logits.shape[-2:]) != stored:
                logits = torch.nn.functional.interpolate(logits, size=stored, mode="bilinear", align_corners=False)
            prob = logits.softmax(1)
            conf, label = prob.max(1)
            # prototypes (DiGA's calc_centroids): pixels are selected by the model's own argmax at feature
            # resolution, from the pass that gave the features (forward = classify(features)), not by the
            # fused multi-scale label; class_pixels and the histogram count the written labels
            with torch.no_grad():
                small = model.classify(feat.to(next(model.parameters()).dtype)).argmax(1)
            sums, feat_counts = image_class_stats(feat[0], small[0], c)
            counts = torch.bincount(label.reshape(-1), minlength=c)
            _id = batch["id"][0]
            lab_np = label[0].to(torch.uint8).cpu().numpy()
            conf_q = quantize_confidence(conf[0])
            # histogram of the values as stored, so thresholds derived from it match the files exactly
            hist = confidence_histogram(label[0], conf_q, c)
            conf_np = conf_q.cpu().numpy().astype(np.uint16)
            futs = [pool.submit(write_png, folder.label_path(_id), lab_np, False),
                    pool.submit(write_png, folder.confidence_path(_id), conf_np, False)]
            stats = [t.cpu().numpy() for t in (counts, feat_counts, sums, hist)]
            pending.append((_id, futs, stats))
            # record an image only once its files are on disk; keep at most a few in flight
            while pending and (len(pending) > 4 or all(fu.done() for fu in pending[0][1])):
                pid, pf, pstats = pending.pop(0)
                for fu in pf:
                    fu.result()
                acc.append(pid, *pstats, handle)
            advance(1)
        for pid, pf, pstats in pending:
            for fu in pf:
                fu.result()
            acc.append(pid, *pstats, handle)
        handle.flush()
        os.fsync(handle.fileno())

    D.barrier()  # every rank's images are on disk and logged; rank 0 sums all logs and writes the rest
    if not rank.is_main:
        return D.broadcast_object(None)  # rank 0's final manifest
    acc = Accumulator(folder.log_path(), c, feat_dim)
    acc.load(folder.all_logs())
    # counts: label-resolution pixels per class; images: the images behind each prototype
    folder.write_prototypes({"prototypes": acc.prototypes(), "counts": torch.from_numpy(acc.counts.copy()),
                             "images": torch.from_numpy(acc.images.copy()), "min_pixels": acc.min_pixels,
                             "feat_dim": feat_dim, "label_space": label_space.name})
    folder.write_histogram(acc.hist)
    manifest["class_pixels"] = {name: int(n) for name, n in zip(label_space.classes, acc.counts)}
    manifest["prototype_images"] = {name: int(n) for name, n in zip(label_space.classes, acc.images)}
    manifest["complete"] = len(acc.done) >= len(items)
    manifest["seconds"] = round(time.time() - t0, 3)
    folder.write_manifest(manifest)
    log(f"pseudo-labels for {len(items)} images in {folder.root} ({len(todo)} computed now, {time.time() - t0:.1f}s)")
    return D.broadcast_object(manifest)
