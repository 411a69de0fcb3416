"""Pseudo-labelling throughput against plain model inference on the same images, measured in one run.

"Plain inference" loads each image, runs the same multi-scale protocol and takes the argmax, writing
nothing. "Pseudo-label" is the real stage: the same, plus confidence, prototype sums, two PNG files
per image and the resumable record. Each is timed several times, interleaved, and the best taken,
since this machine is shared. Goal: pseudo-labelling within 15% of plain inference.

    python benchmarks/pseudo_label_throughput.py [--ckpt CKPT --data PREPARED] [--split train] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from segadapt.data.datasets import InferenceImages
from segadapt.data.prepared import PreparedDataset
from segadapt.engine import pseudo_label as PL
from segadapt.engine.inference import Protocol, infer, load_model


def plain_inference(ckpt, ds, split, protocol, device) -> float:
    model, ls, _ = load_model(ckpt, "student", device)
    items = [(i, p, None) for i, p, _ in ds.items(split)]
    t0 = time.perf_counter()
    for batch in DataLoader(InferenceImages(items), batch_size=1):
        logits, _ = infer(model, batch["image"].to(device), protocol, ls.num_classes)
        logits.argmax(1).cpu()
    return time.perf_counter() - t0


def pseudo_labelling(ckpt, ds, split, protocol, device, out) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    PL.generate(ckpt, ds, split, out, protocol, "student", device)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scales", default="1.0,0.5")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="segadapt_plbench_"))
    try:
        if args.ckpt is None or args.data is None:
            from segadapt.data.prepare.synthetic import prepare_synthetic
            from segadapt.pipeline import run_warmup

            prepare_synthetic(work / "data", seed=0, n_source=8, n_target_train=120, n_target_val=4)
            run_warmup(config="synthetic/source_only", source=work / "data" / "source", target=None,
                       out=work / "run", iters=1)
            args.ckpt, args.data = work / "run" / "last.pt", work / "data" / "target"
        ds = PreparedDataset(args.data)
        protocol = Protocol(scales=[float(s) for s in args.scales.split(",")], fusion="max").validate()
        plain, pl = [], []
        plain_inference(args.ckpt, ds, args.split, protocol, device)  # warm caches and kernels
        for _ in range(args.repeats):
            plain.append(plain_inference(args.ckpt, ds, args.split, protocol, device))
            pl.append(pseudo_labelling(args.ckpt, ds, args.split, protocol, device, work / "pl"))
        n = len(ds.ids(args.split))
        result = {"images": n, "device": str(device), "scales": protocol.scales,
                  "plain_images_per_s": n / min(plain), "pseudo_label_images_per_s": n / min(pl),
                  "overhead": min(pl) / min(plain) - 1, "plain_s": plain, "pseudo_label_s": pl}
        print(json.dumps(result, indent=2))
        print(f"pseudo-labelling: {n / min(pl):.1f} img/s, plain inference: {n / min(plain):.1f} img/s, "
              f"overhead {100 * result['overhead']:+.1f}% (goal: within +15%)", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
