"""`segadapt predict`: the adapted model on a user's own images, folders, globs and videos.

No prepared dataset, no labels: the label space and palette come from the checkpoint. Inference is
``engine.inference.infer`` with the same protocol and resizing as ``evaluate`` (the model runs on the
image resized to ``size`` when given, the logits are upsampled bilinearly to the image's resolution).

Output folder (one key per image; ``<video key>/<frame:06d>`` per video frame, the frame index taken
from the frame's timestamp so it stays aligned with the source even when a frame is lost)::

    labels/<key>.png       uint8 trainIds (``evaluate --pred-dir OUT/labels`` reads them)
    color/<key>.png        RGB palette colours
    overlay/<key>.png      image blended with the colours, with a legend of the classes present
    confidence/<key>.png   uint16 max softmax probability * 65535, as pseudo-labels store it (--confidence)
    videos/<video key>.mp4 the overlay frames of a video, at its frame rate
    predict.json           manifest: checkpoint sha256, weights, protocol, overlay settings, finished videos

Keys are the inputs' paths relative to the common folder of all inputs, without the extension, so
files of the same name in different folders stay apart. Every file is written atomically; an item is
finished when all its files exist, and a re-run skips finished items (``force`` redoes them). A folder
made by another checkpoint or protocol is refused unless forced. Images and frames stream through a
bounded pipeline (a reader thread, the model, writer threads), so memory does not grow with the
number of frames. An unreadable image or an undecodable frame is reported and skipped; the summary
lists them and the caller exits 1 after writing everything else.
"""

from __future__ import annotations

import glob
import os
import queue
import shutil
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segadapt.console import log, progress
from segadapt.data.datasets import unit_float
from segadapt.data.io import read_image, read_json, read_label, write_json, write_png
from segadapt.data.pseudo_labels import quantize_confidence
from segadapt.engine.checkpoint import RunLock, file_sha256
from segadapt.engine.inference import Protocol, infer, load_model
from segadapt.errors import DataError, UsageError
from segadapt.viz.overlay import alpha_weight, overlay

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
MANIFEST = "predict.json"
FORMAT = "segadapt-predictions"
KINDS = ("labels", "color", "overlay", "confidence")
#: consecutive undecodable frames after which a video is given up (the rest is reported missing)
MAX_BAD_FRAMES = 25


# -- inputs ----------------------------------------------------------------------------------------

@dataclass
class Source:
    path: Path
    key: str
    video: bool
    frames: int = 0  # the container's frame count (an estimate, for the progress bar)


def _kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    return "video" if ext in VIDEO_EXTS else "image" if ext in IMAGE_EXTS else None


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (keys are made relative to it)."""
    parts = Path(pattern).parts
    fixed = []
    for p in parts:
        if glob.has_magic(p):
            break
        fixed.append(p)
    return Path(*fixed) if fixed else Path(".")


def _walk(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _kind(p) is not None)


def collect_inputs(inputs: list[str], exclude: Path | None = None) -> list[Source]:
    """Image files, folders (recursive), globs and video files -> sources with unique output keys.

    An input that matches nothing is a usage error (a typo must not silently predict fewer files).
    Files under ``exclude`` (the output folder, when it lies inside an input folder) are left out, so a
    re-run never predicts its own overlays."""
    if not inputs:
        raise UsageError("give at least one --input (image, folder, glob or video)")
    found: list[tuple[Path, Path, str]] = []  # (file, base folder, kind)
    for text in inputs:
        p = Path(text).expanduser()
        if p.is_dir():
            found += [(f, p, _kind(f)) for f in _walk(p)]
            matched = any(b == p for _, b, _ in found)
        elif p.is_file():
            # a file named explicitly is an image unless its extension says video (a bad one is reported later)
            found.append((p, p.parent, _kind(p) or "image"))
            matched = True
        elif glob.has_magic(text):
            base = _glob_base(str(p))
            matched = False
            for m in sorted(glob.glob(str(p), recursive=True)):
                m = Path(m)
                if m.is_dir():
                    found += [(f, base, _kind(f)) for f in _walk(m)]
                    matched = matched or bool(_walk(m))
                elif _kind(m) is not None:
                    found.append((m, base, _kind(m)))
                    matched = True
        else:
            raise UsageError(f"input {text} does not exist")
        if not matched:
            raise UsageError(f"input {text} matched no image or video "
                             f"({', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))})")
    skip = Path(exclude).resolve() if exclude is not None else None
    seen, unique = set(), []
    for f, base, kind in found:
        r = f.resolve()
        if skip is not None and r.is_relative_to(skip):
            continue
        if r not in seen:  # the same file named twice (a folder and a glob inside it) is predicted once
            seen.add(r)
            unique.append((f.absolute(), base.absolute(), kind))
    if not unique:
        raise UsageError(f"the inputs hold nothing but the output folder {exclude}")
    root = Path(os.path.commonpath([str(b) for _, b, _ in unique]))
    rels = [f.relative_to(root) for f, _, _ in unique]
    stems = [r.with_suffix("").as_posix() for r in rels]
    clash = {s for s in stems if stems.count(s) > 1}
    keys, taken = [], set()
    for r, s in zip(rels, stems):
        # a.jpg beside a.png: both keep their extension in the key
        k = f"{s}_{r.suffix[1:].lower()}" if s in clash else s
        while k in taken:
            k += "_"
        taken.add(k)
        keys.append(k)
    sources = []
    for (f, _, kind), k in zip(unique, keys):
        if kind == "video" and any(o != k and o.startswith(k + "/") for o in taken):
            k = k + "_video"  # a video and a folder of the same name must not share output folders
        sources.append(Source(f, k, kind == "video"))
    for s in sources:
        if s.video:
            cap = cv2.VideoCapture(str(s.path))
            s.frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))) if cap.isOpened() else 0
            cap.release()
    return sources


# -- the pipeline's events -------------------------------------------------------------------------

@dataclass
class Frame:
    """An image or video frame to predict: the RGB image at its own size and the model's input."""
    key: str
    source: Source
    index: int | None  # frame index, None for an image
    image: np.ndarray
    model_input: np.ndarray


@dataclass
class Finished:
    """An item whose outputs exist already (resume): its class counts, and for a video whose overlay
    video is being rebuilt, the overlay read back."""
    key: str
    source: Source
    index: int | None
    counts: np.ndarray
    overlay: np.ndarray | None = None


@dataclass
class Failed:
    source: Source
    index: int | None
    error: str
    earlier: bool = False  # recorded by an earlier run (a video finished with lost frames)


@dataclass
class VideoStart:
    source: Source
    fps: float
    size: tuple[int, int]  # (W, H)


@dataclass
class VideoEnd:
    source: Source
    frames: int
    lost: list = field(default_factory=list)


def _outputs(out: Path, key: str, confidence: bool) -> list[Path]:
    kinds = KINDS if confidence else KINDS[:3]
    return [out / k / f"{key}.png" for k in kinds]


def _counts_of(path: Path, num_classes: int) -> np.ndarray:
    return np.bincount(read_label(path).reshape(-1), minlength=256)[:num_classes].astype(np.int64)


class _Reader:
    """Produces the events in input order on a thread, through a bounded queue (memory stays flat)."""

    def __init__(self, sources, out, ls, size, confidence, force, done_videos, depth):
        self.sources, self.out, self.ls, self.size = sources, out, ls, size
        self.confidence, self.force, self.done_videos = confidence, force, done_videos
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __iter__(self):
        self.thread.start()
        while True:
            ev = self.q.get()
            if ev is None:
                return
            if isinstance(ev, BaseException):
                raise ev
            yield ev

    def close(self):
        self.stop.set()
        while self.thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                self.q.get(timeout=0.05)
            except queue.Empty:
                pass

    def _put(self, ev) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(ev, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped()

    def _run(self):
        try:
            for s in self.sources:
                (self._video if s.video else self._image)(s)
            self._put(None)
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            try:
                self._put(e)
            except _Stopped:
                pass

    def _finished(self, key: str) -> bool:
        return not self.force and all(p.exists() for p in _outputs(self.out, key, self.confidence))

    def _model_input(self, image: np.ndarray) -> np.ndarray:
        if self.size is not None and (image.shape[1], image.shape[0]) != tuple(self.size):
            return cv2.resize(image, tuple(self.size), interpolation=cv2.INTER_AREA)  # as evaluate does
        return image

    def _image(self, s: Source):
        if self._finished(s.key):
            self._put(Finished(s.key, s, None, _counts_of(self.out / "labels" / f"{s.key}.png", self.ls.num_classes)))
            return
        try:
            image = read_image(s.path)
        except DataError as e:
            self._put(Failed(s, None, str(e)))
            return
        self._put(Frame(s.key, s, None, image, self._model_input(image)))

    def _video(self, s: Source):
        done = self.done_videos.get(s.key)
        video_file = self.out / "videos" / f"{s.key}.mp4"
        c = self.ls.num_classes
        if done is not None and video_file.exists() and not self.force:
            lost = set(done.get("lost", []))
            idx = [i for i in range(int(done["frames"]) + len(lost)) if i not in lost]
            # finished, unless outputs of a frame went missing since: then the video is decoded again
            if all(self._finished(f"{s.key}/{i:06d}") for i in idx):
                for i in range(len(idx) + len(lost)):
                    key = f"{s.key}/{i:06d}"
                    if i in lost:
                        self._put(Failed(s, i, "frame could not be decoded", earlier=True))
                    else:
                        self._put(Finished(key, s, i, _counts_of(self.out / "labels" / f"{key}.png", c)))
                return
        cap = cv2.VideoCapture(str(s.path))
        if not cap.isOpened():
            self._put(Failed(s, None, f"cannot open video {s.path}"))
            return
        try:
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            total = s.frames
            started, nxt, bad, frames, lost = False, 0, 0, 0, []
            while not self.stop.is_set():
                ok = cap.grab()
                frame = cap.retrieve()[1] if ok else None
                if frame is None:
                    if total and nxt >= total:
                        break  # the normal end
                    bad += 1
                    if bad >= MAX_BAD_FRAMES or not total:
                        break
                    continue
                # the frame's index from its timestamp, so a lost frame does not shift the ones after it
                ms = cap.get(cv2.CAP_PROP_POS_MSEC)
                idx = int(round(ms * fps / 1000.0)) if fps > 0 and ms >= 0 else nxt
                idx = max(idx, nxt)
                for j in range(nxt, idx):  # frames the decoder could not give
                    lost.append(j)
                    self._put(Failed(s, j, "frame could not be decoded"))
                bad, nxt = 0, idx + 1
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                if not started:
                    self._put(VideoStart(s, fps if fps > 0 else 25.0, (rgb.shape[1], rgb.shape[0])))
                    started = True
                key = f"{s.key}/{idx:06d}"
                frames += 1
                if self._finished(key):
                    ov = read_image(self.out / "overlay" / f"{key}.png")
                    self._put(Finished(key, s, idx, _counts_of(self.out / "labels" / f"{key}.png", c), ov))
                else:
                    self._put(Frame(key, s, idx, rgb, self._model_input(rgb)))
            for j in range(nxt, total):  # the container promised more frames than could be decoded
                lost.append(j)
                self._put(Failed(s, j, "frame could not be decoded"))
            if not started:
                self._put(Failed(s, None, f"no decodable frame in video {s.path}"))
                return
            self._put(VideoEnd(s, frames, lost))
        finally:
            cap.release()


class _Stopped(Exception):
    pass


# -- the folder ------------------------------------------------------------------------------------

def _check_existing(out: Path, manifest: dict, force: bool) -> dict:
    """Refuse a folder holding another model's predictions unless forced (then clear it). Returns the
    finished-video records to keep."""
    path = out / MANIFEST
    ours = any((out / k).is_dir() and any((out / k).iterdir()) for k in (*KINDS, "videos"))
    if not path.exists():
        if ours and not force:
            raise DataError(f"{out} holds predictions without a {MANIFEST}; use another --out or --force")
        return {}
    old = read_json(path)
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise DataError(f"{path} is not a segadapt prediction manifest")
    fields = ("checkpoint_sha256", "weights", "protocol", "overlay", "label_space")
    diff = [k for k in fields if old.get(k) != manifest.get(k)]
    if diff and not force:
        what = "model (checkpoint)" if "checkpoint_sha256" in diff else ", ".join(diff)
        raise DataError(f"{out} holds predictions made with another {what}; use another --out or --force")
    if diff:  # forced: nothing of the other model's may stay mixed with the new predictions
        for k in (*KINDS, "videos"):
            shutil.rmtree(out / k, ignore_errors=True)
        return {}
    return dict(old.get("videos", {}))


# -- the run ---------------------------------------------------------------------------------------

def predict(ckpt, inputs: list[str], out, protocol: Protocol, weights: str = "student", device=torch.device("cpu"),
            amp=None, size=None, batch_size: int = 1, confidence: bool = False, force: bool = False,
            alpha: float = 0.5, legend: bool = True, workers: int = 2, exported: bool = False) -> dict:
    """Predict every input; returns the summary (see ``segadapt predict --json``). ``exported``: ``ckpt``
    is an ONNX or TorchScript file of `segadapt export` (`--model`), run through ``load_exported``."""
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if workers < 1:
        raise UsageError("--writers must be at least 1")
    try:
        alpha_weight(alpha)
    except ValueError as e:
        raise UsageError(str(e)) from None
    ckpt, out = Path(ckpt), Path(out)
    sources = collect_inputs(list(inputs), exclude=out)
    if exported:
        from segadapt.engine.export import load_exported

        model, ls, meta = load_exported(ckpt, device)
    else:
        model, ls, meta = load_model(ckpt, weights, device)  # refuses a translator checkpoint
    manifest = {"format": FORMAT, "version": 1, "checkpoint": str(ckpt.resolve()),
                "checkpoint_sha256": file_sha256(ckpt), "weights": meta["weights_used"],
                "protocol": {**protocol.to_dict(), "size": list(size) if size else None},
                "overlay": {"alpha": float(alpha), "legend": bool(legend)},
                "label_space": ls.to_dict(), "videos": {}}
    out.mkdir(parents=True, exist_ok=True)
    RunLock(out).acquire()
    try:
        manifest["videos"] = _check_existing(out, manifest, force)
        if force:  # redone videos are rebuilt; their old records go
            for s in sources:
                manifest["videos"].pop(s.key, None)
        write_json(out / MANIFEST, manifest)
        return _run(model, ls, sources, out, manifest, protocol, device, amp, size, batch_size, confidence,
                    force, alpha, legend, workers)
    finally:
        RunLock.release_folder(out)


def _run(model, ls, sources, out, manifest, protocol, device, amp, size, batch_size, confidence, force, alpha,
         legend, workers) -> dict:
    c = ls.num_classes
    totals = np.zeros(c, np.int64)
    stats = {"images": 0, "frames": 0, "computed": 0, "skipped": 0}
    failed: list[dict] = []
    writers: dict[str, tuple] = {}  # video key -> (cv2.VideoWriter, temp path, final path)
    t0 = time.time()

    def finish(item: Frame, pred: np.ndarray, conf: np.ndarray | None, counts: np.ndarray):
        color, ov = overlay(item.image, pred, ls, alpha, counts, legend)
        write_png(out / "color" / f"{item.key}.png", color)
        write_png(out / "overlay" / f"{item.key}.png", ov)
        if conf is not None:
            write_png(out / "confidence" / f"{item.key}.png", conf, rgb=False)
        write_png(out / "labels" / f"{item.key}.png", pred, rgb=False)
        return ov if item.index is not None else None

    def run_batch(batch: list[Frame]):
        x = torch.from_numpy(np.stack([b.model_input for b in batch]))
        if device.type == "cuda":
            x = x.pin_memory()
        # uint8 to the device, then the training batches' float conversion
        x = unit_float(x.to(device, non_blocking=True).permute(0, 3, 1, 2))
        logits, _ = infer(model, x, protocol, c, amp=amp)
        hw = batch[0].image.shape[:2]
        if tuple(logits.shape[-2:]) != hw:  # at the image's resolution, as evaluate scores
            logits = F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)
        if confidence:
            prob, pred = logits.softmax(1).max(1)
            conf = quantize_confidence(prob).cpu().numpy().astype(np.uint16)  # as pseudo-labels store it
        else:
            pred, conf = logits.argmax(1), None
        pred = pred.to(torch.uint8)
        counts = torch.stack([torch.bincount(p.reshape(-1).long(), minlength=c)[:c] for p in pred]).cpu().numpy()
        pred = pred.cpu().numpy()
        return [(b, pool.submit(finish, b, pred[i], None if conf is None else conf[i], counts[i]), counts[i])
                for i, b in enumerate(batch)]

    def account(src: Source, counts):
        totals[:] += counts
        stats["frames" if src.video else "images"] += 1

    def settle(entry) -> None:
        """Complete the oldest pipeline entry, in input order (the video writer needs the order)."""
        kind = entry[0]
        if kind == "frame":
            _, item, fut, counts = entry
            ov = fut.result()
            stats["computed"] += 1
            account(item.source, counts)
            if item.index is not None and item.source.key in writers:
                writers[item.source.key][0].write(cv2.cvtColor(ov, cv2.COLOR_RGB2BGR))
        elif kind == "finished":
            ev = entry[1]
            stats["skipped"] += 1
            account(ev.source, ev.counts)
            if ev.overlay is not None and ev.source.key in writers:
                writers[ev.source.key][0].write(cv2.cvtColor(ev.overlay, cv2.COLOR_RGB2BGR))
        elif kind == "start":
            ev = entry[1]
            final = out / "videos" / f"{ev.source.key}.mp4"
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.stem}.tmp.mp4")
            w = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), ev.fps, ev.size)
            if not w.isOpened():
                raise DataError(f"OpenCV cannot write the overlay video {final} (no mp4v encoder)")
            writers[ev.source.key] = (w, tmp, final)
        elif kind == "end":
            ev = entry[1]
            w, tmp, final = writers.pop(ev.source.key)
            w.release()
            os.replace(tmp, final)
            manifest["videos"][ev.source.key] = {"frames": ev.frames, "lost": ev.lost}
            write_json(out / MANIFEST, manifest)

    reader = _Reader(sources, out, ls, size, confidence, force, dict(manifest["videos"]), depth=2 * batch_size + 2)
    pending: deque = deque()
    limit = batch_size + 2 * workers + 2  # items in flight after the model: bounds the memory

    bar = [lambda n=1, **kw: None]  # the progress bar's advance, once it is open

    def drain(keep: int) -> None:
        while pending and (len(pending) > keep or pending[0][0] != "frame" or pending[0][2].done()):
            entry = pending.popleft()
            settle(entry)
            if entry[0] in ("frame", "finished"):
                bar[0](1)

    total = sum(s.frames if s.video else 1 for s in sources)
    batch: list[Frame] = []

    def flush():
        for b, fut, counts in run_batch(batch):
            pending.append(("frame", b, fut, counts))
        batch.clear()

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool, progress(total, "predict") as advance:
            bar[0] = advance
            for ev in reader:
                if isinstance(ev, Frame):
                    if batch and (batch[0].model_input.shape != ev.model_input.shape
                                  or batch[0].image.shape != ev.image.shape):
                        flush()
                    batch.append(ev)
                    if len(batch) >= batch_size:
                        flush()
                else:
                    if batch:  # keep the input order around video boundaries and resumed items
                        flush()
                    if isinstance(ev, Failed):
                        name = f"{ev.source.path} frame {ev.index}" if ev.index is not None else str(ev.source.path)
                        log(f"skipped {name}: {ev.error}" + (" (in an earlier run)" if ev.earlier else ""))
                        failed.append({"input": str(ev.source.path), "frame": ev.index, "error": ev.error})
                        bar[0](1)
                    elif isinstance(ev, Finished):
                        pending.append(("finished", ev))
                    elif isinstance(ev, VideoStart):
                        pending.append(("start", ev))
                    elif isinstance(ev, VideoEnd):
                        pending.append(("end", ev))
                drain(limit)
            if batch:
                flush()
            drain(0)
    finally:
        reader.close()
        for w, tmp, _final in writers.values():  # an interrupted video: no half-written file left behind
            w.release()
            Path(tmp).unlink(missing_ok=True)
    pixels = int(totals.sum())
    summary = {
        "out": str(out), "checkpoint": manifest["checkpoint"], "weights": manifest["weights"],
        "label_space": ls.name, "images": stats["images"], "frames": stats["frames"],
        "videos": sum(1 for s in sources if s.video), "computed": stats["computed"], "skipped": stats["skipped"],
        "failed": failed, "seconds": round(time.time() - t0, 3),
        "class_pixel_share": {name: (float(n) / pixels if pixels else 0.0) for name, n in zip(ls.classes, totals)},
        "protocol": manifest["protocol"],
    }
    log(f"predicted {stats['images']} images and {stats['frames']} video frames into {out} "
        f"({stats['computed']} computed, {stats['skipped']} already done, {len(failed)} failed, "
        f"{summary['seconds']:.1f}s)")
    return summary
