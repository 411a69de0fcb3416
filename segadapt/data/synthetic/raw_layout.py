"""Writing the benchmark in the raw layouts of the real datasets: GTA5 (palette labels indexed by
labelId) for the source, Cityscapes (``leftImg8bit``/``gtFine`` labelIds) for the target, so the real
converters are exercised on it."""

from __future__ import annotations

import io
import multiprocessing as mp
from pathlib import Path

import numpy as np

from segadapt.data.io import write_bytes, write_png
from segadapt.data.labelspace import CITYSCAPES19, CITYSCAPES_LABELID_TO_TRAINID
from segadapt.data.synthetic.composition import render_scene
from segadapt.data.synthetic.labels import LABELID_PALETTE
from segadapt.data.synthetic.style import domain_styles
from segadapt.errors import UsageError

TRAIN_CITIES = ("altwerk", "brennhof", "corvale", "dunmark")
VAL_CITIES = ("elmshafen", "fernau")

_DOMAINS = {"source": 0, "target_train": 1, "target_val": 2}  # the middle word of each image's RNG seed


def _palette_png(label: np.ndarray) -> bytes:
    from PIL import Image

    im = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes())
    pal = [v for c in LABELID_PALETTE for v in c]
    im.putpalette(pal + [0] * (768 - len(pal)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _job(args) -> tuple[str, np.ndarray]:
    domain, index, seed, style, width, height, img_path, lab_path = args
    rng = np.random.default_rng([seed, _DOMAINS[domain], index])
    img, lab = render_scene(rng, style, width, height)
    write_png(img_path, img, rgb=True)
    if domain == "source":
        write_bytes(lab_path, _palette_png(lab))
    else:
        write_png(lab_path, lab, rgb=False)
    return domain, np.bincount(lab.ravel(), minlength=256)


def _cityscapes_jobs(root: Path, split: str, cities, n: int):
    """(image path, label path) per index; images spread over the cities in contiguous runs."""
    out, seq = [], dict.fromkeys(cities, 0)
    for i in range(n):
        city = cities[i * len(cities) // n]
        stem = f"{city}_{seq[city]:06d}_{19:06d}"  # frame 19 is the annotated frame of a Cityscapes snippet
        seq[city] += 1
        out.append((root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                    root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"))
    return out


def generate_raw(out_raw: Path, *, seed: int = 0, n_source: int = 500, n_target_train: int = 300,
                 n_target_val: int = 100, width: int = 256, height: int = 128, shift: float = 1.0,
                 workers: int = 0) -> dict:
    """Write the synthetic benchmark in the raw GTA5 and Cityscapes layouts under ``out_raw``.

    ``out_raw/gta5/{images,labels}/00001.png`` (labels: palette PNGs indexed by labelId) and
    ``out_raw/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/...``. Every image has its own RNG
    seeded from (seed, domain, index), so the output does not depend on ``workers``.
    Returns counts and the pixel fraction of each trainId class per domain."""
    from segadapt.console import progress

    if min(n_source, n_target_train, n_target_val) < 0:
        raise UsageError("image counts must be >= 0")
    if width < 32 or height < 16:
        raise UsageError(f"image size {width}x{height} is too small (minimum 32x16)")
    if workers < 0:
        raise UsageError("workers must be >= 0")
    src_style, tgt_style = domain_styles(shift)
    out_raw = Path(out_raw)
    jobs = []
    for i in range(n_source):
        jobs.append(("source", i, seed, src_style, width, height, out_raw / "gta5" / "images" / f"{i + 1:05d}.png",
                     out_raw / "gta5" / "labels" / f"{i + 1:05d}.png"))
    cs = out_raw / "cityscapes"
    for domain, split, cities, n in (("target_train", "train", TRAIN_CITIES, n_target_train),
                                     ("target_val", "val", VAL_CITIES, n_target_val)):
        for i, (ip, lp) in enumerate(_cityscapes_jobs(cs, split, cities, n)):
            jobs.append((domain, i, seed, tgt_style, width, height, ip, lp))

    hist = {d: np.zeros(256, np.int64) for d in _DOMAINS}
    with progress(len(jobs), "synthetic scenes") as advance:
        if workers > 0 and len(jobs) > 1:
            with mp.get_context("spawn").Pool(workers) as pool:
                for domain, hcount in pool.imap_unordered(_job, jobs, chunksize=8):
                    hist[domain] += hcount
                    advance(1)
        else:
            for job in jobs:
                domain, hcount = _job(job)
                hist[domain] += hcount
                advance(1)

    to_train = CITYSCAPES_LABELID_TO_TRAINID
    summary = {"seed": seed, "shift": shift, "width": width, "height": height,
               "counts": {"source": n_source, "target_train": n_target_train, "target_val": n_target_val},
               "class_fraction": {}}
    for domain, hc in hist.items():
        total = max(int(hc.sum()), 1)
        summary["class_fraction"][domain] = {
            name: round(float(hc[[lid for lid, t in to_train.items() if t == k]].sum()) / total, 6)
            for k, name in enumerate(CITYSCAPES19.classes)}
    return summary
