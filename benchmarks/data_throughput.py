"""Training data pipeline throughput at paper scale, against the bare decode + resize cost.

Writes GTA5-size source frames (1914x1052 RGB PNG + trainId label PNG) and Cityscapes-size target
frames (2048x1024 RGB PNG, a pseudo-label PNG and its uint16 confidence PNG, as `segadapt
pseudo-label` writes them) from the synthetic scene renderer, with mild pixel noise so the PNGs are
photo-like in size and decode cost. Then measures, per loader worker count:

* the three training streams exactly as the trainer builds them (TrainCrops + make_stream, batch 2):
  source crops with rare-class sampling (1280x720, crop 512x896, scale 0.75-1.5, flip), target crops
  (1024x512, no labels) and pseudo-label crops with confidence (1024x512);
* the floor: the same files decoded (read_image / read_label) and resized to the stream's base size,
  nothing else, one process, one thread;
* the `prepare-data --image-size` alternative: decoding images already stored at the base size.

Crops leave the loader as uint8 (image and label) and ``batch_to_device`` makes them float / int64 on
the device, as the trainer does; what that conversion costs when the device is this CPU (CPU-only
training) is printed apart, per image.

images/s of each stream is timed after its first batch (worker start-up excluded, reported apart).

    python benchmarks/data_throughput.py [--n 16 --batches 12 --workers 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("SEGADAPT_QUIET", "1")

SOURCE_SIZE, TARGET_SIZE = (1914, 1052), (2048, 1024)
SOURCE_BASE, TARGET_BASE = (720, 1280), (512, 1024)  # data.source_resize / target_resize [H, W] of gta5_cityscapes
CROP, SCALE, BATCH = (512, 896), (0.75, 1.5), 2


def make_files(root: Path, n: int, seed: int = 0):
    """n source and n target frames; returns (source items, counts, target items, pseudo-label items)."""
    from segadapt.data.io import write_png
    from segadapt.data.labelspace import CITYSCAPES_LABELID_TO_TRAINID
    from segadapt.data.synthetic import domain_styles, render_scene

    lut = np.full(256, 255, np.uint8)
    for lid, tid in CITYSCAPES_LABELID_TO_TRAINID.items():
        lut[lid] = tid
    src_style, tgt_style = domain_styles()
    src, counts, tgt, pl = [], [], [], []
    for d in ("src/img", "src/lab", "tgt/img", "pl/labels", "pl/confidence", "resized/src", "resized/tgt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        for domain, style, (w, h) in (("src", src_style, SOURCE_SIZE), ("tgt", tgt_style, TARGET_SIZE)):
            # render at half size and upscale (rendering 2 MP scenes costs more than the benchmark)
            img, lab = render_scene(rng, style, w // 2, h // 2)
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
            lab = lut[cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)]
            img = np.clip(img.astype(np.int16) + rng.normal(0, 4, img.shape).astype(np.int16), 0, 255).astype(np.uint8)
            i = f"{k:05d}"
            write_png(root / domain / "img" / f"{i}.png", img)
            base = SOURCE_BASE if domain == "src" else TARGET_BASE
            write_png(root / "resized" / domain / f"{i}.png", cv2.resize(img, base[::-1], interpolation=cv2.INTER_AREA))
            if domain == "src":
                write_png(root / "src/lab" / f"{i}.png", lab, rgb=False)
                src.append((i, root / "src/img" / f"{i}.png", root / "src/lab" / f"{i}.png"))
                counts.append(np.bincount(lab.ravel(), minlength=256)[:19])
            else:
                conf = (rng.random((h // 16, w // 16)) * 65535).astype(np.uint16)
                conf = cv2.resize(conf, (w, h), interpolation=cv2.INTER_LINEAR)
                write_png(root / "pl/labels" / f"{i}.png", lab, rgb=False)
                write_png(root / "pl/confidence" / f"{i}.png", conf, rgb=False)
                tgt.append((i, root / "tgt/img" / f"{i}.png", None))
                pl.append((i, root / "tgt/img" / f"{i}.png", root / "pl/labels" / f"{i}.png",
                           root / "pl/confidence" / f"{i}.png"))
    return src, np.stack(counts), tgt, pl


def floor_per_image(items, base) -> tuple[float, float]:
    """(wall, CPU) seconds per image to decode the item's files and resize them to ``base``: nothing else."""
    from segadapt.data.io import read_image, read_label

    best, cpu = float("inf"), float("inf")
    for _ in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        for it in items:
            cv2.resize(read_image(it[1]), base[::-1], interpolation=cv2.INTER_AREA)
            for p in it[2:]:
                if p is not None:
                    cv2.resize(read_label(p), base[::-1], interpolation=cv2.INTER_NEAREST)
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return best / len(items), cpu / len(items)


def decode_only(paths) -> float:
    from segadapt.data.io import read_image

    t0 = time.perf_counter()
    for p in paths:
        read_image(p)
    return (time.perf_counter() - t0) / len(paths)


def stream_rate(ds, workers: int, batches: int, choose=None, stream: int = 0) -> tuple[float, float, float]:
    """(images/s after the first batch, seconds to the first batch, CPU s/image of this process) of
    make_stream over ``ds`` (the CPU figure is the whole cost only with workers=0)."""
    from segadapt.data.sampling import make_stream

    t0 = time.perf_counter()
    it = make_stream(ds, BATCH, seed=0, stream=stream, start=0, total=batches + 1, workers=workers, choose=choose)
    next(it)
    t1, c1 = time.perf_counter(), time.process_time()
    n = 0
    for b in it:
        n += b["image"].shape[0]
    return n / (time.perf_counter() - t1), t1 - t0, (time.process_time() - c1) / n


def conversion_ms(ds) -> float:
    """CPU ms per image of batch_to_device(batch, 'cpu') on one collated batch of ``ds``: the float /
    int64 conversion a GPU does on the copied batch, here on this CPU (best of 5)."""
    from segadapt.data.datasets import batch_to_device
    from torch.utils.data import default_collate

    batch = default_collate([ds[(i % len(ds), i)] for i in range(BATCH)])
    best = float("inf")
    for _ in range(5):
        c0 = time.process_time()
        batch_to_device(batch, "cpu")
        best = min(best, time.process_time() - c0)
    return 1000 * best / BATCH


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="frames per domain")
    ap.add_argument("--batches", type=int, default=12, help="timed batches per stream and worker count")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from segadapt.data.datasets import TrainCrops
    from segadapt.data.sampling import RareClassSampling

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src, counts, tgt, pl = make_files(root, a.n)
        mb = {k: np.mean([Path(it[1]).stat().st_size for it in v]) / 2**20
              for k, v in (("source", src), ("target", tgt))}
        rcs = RareClassSampling(counts, 0.01, 3000)
        streams = {
            "source crops + RCS": (TrainCrops(src, CROP, SCALE, True, resize=SOURCE_BASE), rcs, src, SOURCE_BASE),
            "target crops": (TrainCrops(tgt, CROP, SCALE, True, resize=TARGET_BASE), None, tgt, TARGET_BASE),
            "pseudo-label crops + conf": (TrainCrops(pl, CROP, SCALE, True, resize=TARGET_BASE), None, pl,
                                          TARGET_BASE),
        }
        floors = {k: floor_per_image(v[2], v[3]) for k, v in streams.items()}  # also warms the page cache
        rates = {}
        for w in a.workers:
            for k, (ds, choose, _, _) in streams.items():
                rates[k, w] = stream_rate(ds, w, a.batches, choose)
        floors2 = {k: floor_per_image(v[2], v[3]) for k, v in streams.items()}  # again, after: load drifts
        convert = {k: conversion_ms(v[0]) for k, v in streams.items()}
        dec = {"source 1914x1052": decode_only([it[1] for it in src]),
               "source --image-size 720x1280": decode_only(sorted((root / "resized/src").glob("*.png"))),
               "target 2048x1024": decode_only([it[1] for it in tgt]),
               "target --image-size 512x1024": decode_only(sorted((root / "resized/tgt").glob("*.png")))}
    load1 = os.getloadavg()

    print(f"{a.n} frames per domain, PNG sizes: source {mb['source']:.1f} MiB, target {mb['target']:.1f} MiB; "
          f"batch {BATCH}, crop {CROP[0]}x{CROP[1]}, {a.batches} timed batches")
    print(f"cpu cores {os.cpu_count()}, load average before {load0[0]:.1f}, after {load1[0]:.1f}")
    print(f"{'stream':28s} {'floor img/s':>12s} " + " ".join(f"{'w=' + str(w) + ' img/s':>11s} {'/floor':>6s}"
                                                            for w in a.workers) + "   start-up s")
    for k in streams:
        fl = 1 / min(floors[k][0], floors2[k][0])
        cells = " ".join(f"{rates[k, w][0]:11.2f} {fl * max(1, w) / rates[k, w][0]:6.2f}" for w in a.workers)
        starts = ", ".join(f"{rates[k, w][1]:.1f}" for w in a.workers)
        print(f"{k:28s} {fl:12.2f} {cells}   {starts}")
    print("(/floor: floor x max(1, workers) / stream rate; 1.0 = the stream costs no more than decode + resize)")
    if 0 in a.workers:  # CPU time does not depend on how many other jobs share the cores
        print("CPU ms per image, workers=0 (stream / decode + resize floor): " + ", ".join(
            f"{k} {1000 * rates[k, 0][2]:.0f} / {1000 * min(floors[k][1], floors2[k][1]):.0f}" for k in streams))
    print("uint8 -> float/int64 conversion (batch_to_device) on this CPU, ms/image (on a GPU it runs on the "
          "device): " + ", ".join(f"{k} {v:.1f}" for k, v in convert.items()))
    print("image decode alone (read_image), ms/image: "
          + ", ".join(f"{k} {1000 * v:.1f}" for k, v in dec.items()))


if __name__ == "__main__":
    main()
