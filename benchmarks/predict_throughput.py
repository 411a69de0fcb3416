"""`segadapt predict` throughput against plain inference, and its peak memory against the number of frames.

Throughput: the same model, the same images, the same protocol and batch size, measured in one run.
"Plain inference" reads each image, runs ``infer`` and takes the argmax, writing nothing; "predict" is
the real command's engine (``segadapt.engine.predict.predict``) into a fresh folder: the same, plus
colour map, overlay with legend, three PNGs per image and the resume bookkeeping. Each is timed
several times, interleaved, and the best taken, since this machine is shared. Goal: >= 0.9x.

Memory: ``segadapt predict`` on a generated video of 100 and of 1000 frames, each in its own process;
the peak resident set of that process (``os.wait4``'s ru_maxrss). Goal: independent of the frame count.

    python benchmarks/predict_throughput.py [--ckpt CKPT] [--images N] [--batch-size 4] [--repeats 3]
                                            [--frames 100,1000] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from segadapt.data.datasets import to_tensor
from segadapt.data.io import read_image
from segadapt.engine.inference import Protocol, infer, load_model
from segadapt.engine.predict import collect_inputs, predict


def make_checkpoint(path: Path) -> Path:
    """The synthetic benchmark's model (DeepLab-v2, tiny backbone, 19 classes) in the trainer's format."""
    from segadapt.data.labelspace import CITYSCAPES19
    from segadapt.engine.checkpoint import save_checkpoint
    from segadapt.models.segmenter import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 64, "pretrained": None}, 19)
    save_checkpoint(path, {"stage": "warmup", "method": "source-only", "iteration": 0, "model": model.state_dict(),
                           "teacher": None, "label_space": CITYSCAPES19.to_dict(), "model_spec": model.spec})
    return path


def plain_inference(ckpt, files, protocol, device, batch_size) -> float:
    t0 = time.perf_counter()  # from loading the model, as predict's time is
    model, ls, _ = load_model(ckpt, "student", device)
    for i in range(0, len(files), batch_size):
        x = torch.stack([to_tensor(read_image(f)) for f in files[i:i + batch_size]]).to(device)
        logits, _ = infer(model, x, protocol, ls.num_classes)
        logits.argmax(1).cpu()
    return time.perf_counter() - t0


def forward_only(ckpt, files, protocol, device, batch_size) -> float:
    """The strictest baseline: the images decoded beforehand, only the model's forward passes and argmax."""
    batches = [torch.stack([to_tensor(read_image(f)) for f in files[i:i + batch_size]])
               for i in range(0, len(files), batch_size)]
    t0 = time.perf_counter()
    model, ls, _ = load_model(ckpt, "student", device)
    for x in batches:
        logits, _ = infer(model, x.to(device), protocol, ls.num_classes)
        logits.argmax(1).cpu()
    return time.perf_counter() - t0


def predicting(ckpt, folder, protocol, device, batch_size, out) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    predict(ckpt, [str(folder)], out, protocol, device=device, batch_size=batch_size)
    return time.perf_counter() - t0


def write_video(path: Path, n: int, w: int = 160, h: int = 96) -> None:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, 2 * w, 3), dtype=np.uint8), (9, 9), 0)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h))
    for i in range(n):
        x = (3 * i) % w
        vw.write(np.ascontiguousarray(base[:, x:x + w]))
    vw.release()


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak resident set in MiB, seconds) of one child process."""
    env = dict(os.environ, SEGADAPT_QUIET="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0  # Linux reports KiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--images", type=int, default=120, help="synthetic target images to predict")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scales", default="1.0")
    ap.add_argument("--frames", default="100,1000", help="video lengths for the memory check ('' to skip)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="segadapt_predbench_"))
    try:
        ckpt = args.ckpt or make_checkpoint(work / "model.pt")
        from segadapt.data.prepare.synthetic import prepare_synthetic

        prepare_synthetic(work / "data", seed=0, n_source=2, n_target_train=args.images, n_target_val=1)
        folder = work / "data" / "raw" / "cityscapes" / "leftImg8bit" / "train"
        files = [s.path for s in collect_inputs([str(folder)])]  # the order predict reads them in
        h, w = read_image(files[0]).shape[:2]
        protocol = Protocol(scales=[float(s) for s in args.scales.split(",")], fusion="mean").validate()
        plain, fwd, pred = [], [], []
        plain_inference(ckpt, files, protocol, device, args.batch_size)  # warm caches and kernels
        for _ in range(args.repeats):
            plain.append(plain_inference(ckpt, files, protocol, device, args.batch_size))
            fwd.append(forward_only(ckpt, files, protocol, device, args.batch_size))
            pred.append(predicting(ckpt, folder, protocol, device, args.batch_size, work / "pred"))
        n = len(files)
        result = {"images": n, "image_size": [w, h], "device": str(device), "batch_size": args.batch_size,
                  "scales": protocol.scales, "torch_threads": torch.get_num_threads(),
                  "load_average": os.getloadavg()[0], "cpus": os.cpu_count(),
                  "plain_images_per_s": n / min(plain), "forward_only_images_per_s": n / min(fwd),
                  "predict_images_per_s": n / min(pred), "ratio": min(plain) / min(pred),
                  "ratio_forward_only": min(fwd) / min(pred), "plain_s": plain, "forward_only_s": fwd,
                  "predict_s": pred}
        print(f"predict: {n / min(pred):.1f} img/s; plain inference (read + forward + argmax): "
              f"{n / min(plain):.1f} img/s, {result['ratio']:.2f}x; forward + argmax of images decoded beforehand: "
              f"{n / min(fwd):.1f} img/s, {result['ratio_forward_only']:.2f}x (goal: >= 0.9x)", file=sys.stderr)
        memory = []
        if args.frames.strip():  # what the process holds before any frame: Python, torch, OpenCV, the model
            rss, _ = peak_rss_mb([sys.executable, "-c", "import sys, segadapt.engine.predict as P; "
                                  "P.load_model(sys.argv[1], 'student')", str(ckpt)])
            result["baseline_rss_mib"] = round(rss, 1)
            print(f"baseline (imports + model, no frame): peak RSS {rss:.1f} MiB", file=sys.stderr)
        for frames in [int(f) for f in args.frames.split(",") if f.strip()]:
            video = work / f"video_{frames}.avi"
            write_video(video, frames)
            out = work / f"pred_video_{frames}"
            cmd = [sys.executable, "-m", "segadapt", "predict", "--ckpt", str(ckpt), "--input", str(video),
                   "--out", str(out), "--device", str(device), "--batch-size", str(args.batch_size), "--json"]
            rss, secs = peak_rss_mb(cmd)
            written = len(list((out / "labels" / video.stem).glob("*.png")))
            memory.append({"frames": frames, "written": written, "peak_rss_mib": round(rss, 1),
                           "seconds": round(secs, 2), "frames_per_s": round(frames / secs, 1)})
            print(f"video of {frames} frames: peak RSS {rss:.1f} MiB, {written} frames written in {secs:.1f}s",
                  file=sys.stderr)
        result["memory"] = memory
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
