"""Images/s of `pseudo-label` and `evaluate` (from a checkpoint) on a prepared dataset, in one process.

Each stage runs once untimed (cuDNN autotuning, allocator warm-up, page cache) and then is timed; the
figures count whole stages as a user runs them (image decode, multi-scale inference, PNG writes for
pseudo-labels, the confusion matrix for evaluation). Prints one JSON object.

    python benchmarks/infer_throughput.py --ckpt RUN/last.pt --data PREPARED [--pl-split train] [--eval-split val]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from segadapt.data.prepared import PreparedDataset
from segadapt.engine import pseudo_label as PL
from segadapt.engine.device import amp_dtype, resolve_device
from segadapt.engine.evaluate import evaluate_checkpoint
from segadapt.engine.inference import Protocol


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--pl-split", default="train")
    ap.add_argument("--eval-split", default="val")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto", help="auto (bf16 on CUDA, off on CPU), off, bf16, fp16")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    device = resolve_device(args.device)
    amp = amp_dtype(args.amp, device)
    ds = PreparedDataset(args.data)
    # DiGA's pseudo-labelling protocol (scales 1.0 and 0.5, max of logits); evaluation at one scale
    pl_protocol = Protocol(scales=[1.0, 0.5], fusion="max").validate()
    eval_protocol = Protocol(scales=[1.0]).validate()
    work = Path(tempfile.mkdtemp(prefix="segadapt_infer_"))
    try:
        result = {"device": str(device), "amp": str(amp).replace("torch.", "") if amp else "off"}
        for stage in ("pseudo_label", "evaluate"):
            times = []
            for _ in range(2):  # the first run warms up and is not counted
                shutil.rmtree(work / "pl", ignore_errors=True)
                _sync(device)
                t0 = time.perf_counter()
                if stage == "pseudo_label":
                    PL.generate(args.ckpt, ds, args.pl_split, work / "pl", pl_protocol, "student", device,
                                workers=args.workers, amp=amp)
                    n = len(ds.ids(args.pl_split))
                else:
                    out = evaluate_checkpoint(args.ckpt, ds, args.eval_split, eval_protocol, "student", device,
                                              workers=args.workers, amp=amp)
                    n = out["num_images"]
                _sync(device)
                times.append(time.perf_counter() - t0)
            h, w = _image_size(ds, args.pl_split if stage == "pseudo_label" else args.eval_split)
            result[stage] = {"images": n, "seconds": times[-1], "images_per_s": n / times[-1], "size": f"{w}x{h}"}
        if device.type == "cuda":
            result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _image_size(ds, split):
    from segadapt.data.io import read_image

    img = read_image(ds.items(split)[0][1])
    return img.shape[0], img.shape[1]


if __name__ == "__main__":
    main()
