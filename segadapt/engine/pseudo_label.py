"""Offline pseudo-labels: argmax of the (multi-scale) model on every target image, a confidence map,
and class prototypes (per-class mean feature over pixels predicted as that class).

Folder contract:  labels/<id>.png (uint8, 255 = ignored), confidence/<id>.png (uint16, conf * 65535),
prototypes.pt, manifest.json. Memory does not grow with the number of images: labels go to disk as
they are made, prototype sums are fixed-size. A kill loses nothing finished: each image's prototype
contribution is appended to ``accumulator.bin`` only after its files are written, and a re-run skips
every image recorded there. A folder made by another checkpoint or protocol is refused unless forced.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from segadapt.console import log, progress
from segadapt.data.datasets import InferenceImages
from segadapt.data.io import read_json, write_json, write_png
from segadapt.engine.checkpoint import file_sha256
from segadapt.engine.inference import Protocol, infer, load_model
from segadapt.errors import DataError

MANIFEST_FORMAT = "segadapt-pseudo-labels"
_ID_BYTES = 256


class Accumulator:
    """Per-class feature sums and pixel counts, with an append-only on-disk log of per-image records
    (id, counts, sums) so that a resumed run rebuilds the exact totals without recomputing."""

    def __init__(self, path: Path, num_classes: int, feat_dim: int):
        self.path, self.c, self.d = path, num_classes, feat_dim
        self.record = _ID_BYTES + 8 * num_classes + 8 * num_classes * feat_dim
        self.sums = np.zeros((num_classes, feat_dim), np.float64)
        self.counts = np.zeros(num_classes, np.int64)
        self.done: set[str] = set()

    def load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        n = len(data) // self.record  # a truncated last record (killed mid-append) is dropped
        for i in range(n):
            rec = data[i * self.record:(i + 1) * self.record]
            self._add(*self._unpack(rec))
        if n * self.record != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(n * self.record)

    def _unpack(self, rec: bytes):
        (length,) = struct.unpack("<H", rec[:2])
        _id = rec[2:2 + length].decode()
        off = _ID_BYTES
        counts = np.frombuffer(rec[off:off + 8 * self.c], np.int64)
        sums = np.frombuffer(rec[off + 8 * self.c:], np.float64).reshape(self.c, self.d)
        return _id, counts, sums

    def _add(self, _id, counts, sums) -> None:
        self.counts += counts
        self.sums += sums
        self.done.add(_id)

    def append(self, _id: str, counts: np.ndarray, sums: np.ndarray, handle) -> None:
        raw = _id.encode()
        if len(raw) > _ID_BYTES - 2:
            raise DataError(f"image id too long for the pseudo-label log: {_id}")
        head = struct.pack("<H", len(raw)) + raw
        handle.write(head.ljust(_ID_BYTES, b"\0") + counts.astype(np.int64).tobytes() + sums.astype(np.float64).tobytes())
        handle.flush()
        self._add(_id, counts, sums)

    def prototypes(self) -> torch.Tensor:
        return torch.from_numpy(self.sums / np.maximum(self.counts, 1)[:, None]).float()


def _check_existing(out: Path, manifest: dict, force: bool) -> None:
    path = out / "manifest.json"
    if not path.exists():
        if any(out.glob("labels/*.png")) and not force:
            raise DataError(f"{out} holds pseudo-labels without a manifest; use --force to replace them")
        return
    old = read_json(path)
    fields = ("checkpoint_sha256", "weights", "protocol", "data", "split")
    diff = [k for k in fields if old.get(k) != manifest.get(k)]
    if diff and not force:
        what = "checkpoint" if "checkpoint_sha256" in diff else ", ".join(diff)
        raise DataError(f"{out} was made with another {what}; use another --out or --force to replace it")
    if diff:
        for sub in ("labels", "confidence"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for f in ("accumulator.bin", "prototypes.pt", "manifest.json"):
            (out / f).unlink(missing_ok=True)


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
        "format": MANIFEST_FORMAT, "version": 1,
        "checkpoint": str(ckpt_path.resolve()), "checkpoint_sha256": file_sha256(ckpt_path),
        "weights": ckpt["weights_used"], "protocol": {**protocol.to_dict(), "size": list(size) if size else None},
        "data": str(Path(dataset.root).resolve()), "split": split, "label_space": label_space.name,
        "num_images": len(items),
    }
    out.mkdir(parents=True, exist_ok=True)
    _check_existing(out, manifest, force)
    (out / "labels").mkdir(exist_ok=True)
    (out / "confidence").mkdir(exist_ok=True)

    c = label_space.num_classes
    feat_dim = int(model.spec["feat_dim"])
    acc = Accumulator(out / "accumulator.bin", c, feat_dim)
    acc.load()
    todo = [it for it in items if it[0] not in acc.done]
    if acc.done:
        log(f"resuming: {len(items) - len(todo)} of {len(items)} images already done")

    loader = DataLoader(InferenceImages([(i, p, None) for i, p, _ in todo], base_size=size), batch_size=1,
                        num_workers=workers)
    t0 = time.time()
    # PNG encoding runs in threads (OpenCV releases the GIL) so the model never waits for the disk
    with ThreadPoolExecutor(max_workers=2) as pool, open(out / "accumulator.bin", "ab") as handle, \
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
            # prototypes: class means of the feature map over pixels predicted as that class
            small = torch.nn.functional.interpolate(logits, size=feat.shape[-2:], mode="bilinear",
                                                    align_corners=False).argmax(1)
            f = feat.permute(0, 2, 3, 1).reshape(-1, feat_dim).double()
            sums = torch.zeros(c, feat_dim, dtype=torch.float64, device=f.device).index_add_(0, small.reshape(-1), f)
            counts = torch.bincount(label.reshape(-1), minlength=c)
            _id = batch["id"][0]
            lab_np = label[0].to(torch.uint8).cpu().numpy()
            conf_np = (conf[0] * 65535).round().to(torch.int32).cpu().numpy().astype(np.uint16)
            futs = [pool.submit(write_png, out / "labels" / f"{_id}.png", lab_np, False),
                    pool.submit(write_png, out / "confidence" / f"{_id}.png", conf_np, False)]
            pending.append((_id, futs, counts.cpu().numpy(), sums.cpu().numpy()))
            # record an image only once its files are on disk; keep at most a few in flight
            while pending and (len(pending) > 4 or all(fu.done() for fu in pending[0][1])):
                pid, pf, pc, ps = pending.pop(0)
                for fu in pf:
                    fu.result()
                acc.append(pid, pc, ps, handle)
            advance(1)
        for pid, pf, pc, ps in pending:
            for fu in pf:
                fu.result()
            acc.append(pid, pc, ps, handle)
        handle.flush()
        os.fsync(handle.fileno())

    torch.save({"prototypes": acc.prototypes(), "counts": torch.from_numpy(acc.counts.copy()),
                "feat_dim": feat_dim, "label_space": label_space.name}, out / ".prototypes.pt.tmp")
    os.replace(out / ".prototypes.pt.tmp", out / "prototypes.pt")
    manifest["class_pixels"] = {name: int(n) for name, n in zip(label_space.classes, acc.counts)}
    manifest["complete"] = len(acc.done) >= len(items)
    manifest["seconds"] = round(time.time() - t0, 3)
    write_json(out / "manifest.json", manifest)
    log(f"pseudo-labels for {len(items)} images in {out} ({len(todo)} computed now, {time.time() - t0:.1f}s)")
    return manifest


def load_pseudo_labels(pl_dir: Path, dataset, split: str) -> tuple[dict, torch.Tensor | None]:
    """Validate a pseudo-label folder against the target data; returns (manifest, prototypes)."""
    pl_dir = Path(pl_dir)
    if not pl_dir.is_dir():
        raise DataError(f"pseudo-label folder {pl_dir} does not exist")
    manifest = read_json(pl_dir / "manifest.json")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{pl_dir} is not a segadapt pseudo-label folder")
    if not manifest.get("complete"):
        raise DataError(f"pseudo-labels in {pl_dir} are incomplete; re-run pseudo-label to finish them")
    missing = [i for i in dataset.ids(split) if not (pl_dir / "labels" / f"{i}.png").exists()]
    if missing:
        raise DataError(f"{len(missing)} target images have no pseudo-label in {pl_dir} (first: {missing[0]})")
    protos = None
    if (pl_dir / "prototypes.pt").exists():
        protos = torch.load(pl_dir / "prototypes.pt", map_location="cpu", weights_only=True)["prototypes"]
    return manifest, protos

