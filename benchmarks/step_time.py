"""Training step time (and, on CUDA, peak memory) of every method relative to source-only, measured in
one run on the same model, crop and batch.

Each method gets the same random batch (source crops with labels, target crops with a made-up
pseudo-label and confidence) and runs forward, backward, optimiser step and its after-step hook, as
the engine does. Steps of all methods are interleaved over several rounds and the median taken, since
this machine is shared. The student's forward calls are counted, so the table also shows how much of
a method's cost is inherent (images pushed through the student, with backward, and through the EMA
teacher without) and how much is overhead (losses, mixing, sampling, EMA updates).

    python benchmarks/step_time.py                                   # CPU scale: tiny model, 128x128 x 8
    python benchmarks/step_time.py --arch deeplabv2 --backbone resnet101 --crop 512x896 --batch 1 --rounds 2
    python benchmarks/step_time.py --arch segformer --backbone mit_b5 --head daformer --crop 512x512 --batch 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segadapt.config import load_config
from segadapt.engine.optim import build_optimizer
from segadapt.methods import METHODS
from segadapt.models.segmenter import build_segmenter

# (stage, method, packaged config whose method section is used)
RUNS = [
    ("warmup", "source-only", "synthetic/source_only"),
    ("warmup", "diga", "synthetic/diga_warmup"),
    ("warmup", "plca", "synthetic/plca"),
    ("warmup", "dacs", "synthetic/dacs"),
    ("self-train", "diga", "synthetic/diga_self_train"),
    ("self-train", "t2s", "synthetic/t2s"),
    ("self-train", "threshold", "synthetic/threshold"),
]


class _Counter:
    """Counts images through a module's forward, split by whether autograd records them."""

    def __init__(self, modules):
        self.train_images = self.nograd_images = 0
        for m in modules:
            m.register_forward_hook(self._hook)

    def _hook(self, _m, inputs, _out):
        n = inputs[0].shape[0]
        if torch.is_grad_enabled():
            self.train_images += n
        else:
            self.nograd_images += n


def _batch(args, c, device):
    g = torch.Generator().manual_seed(0)
    h, w = args.crop
    lab = lambda: torch.randint(0, c, (args.batch, h, w), generator=g)  # noqa: E731
    src = {"image": torch.rand(args.batch, 3, h, w, generator=g), "label": lab(), "index": torch.arange(args.batch)}
    tgt = {"image": torch.rand(args.batch, 3, h, w, generator=g), "label": lab(), "index": torch.arange(args.batch),
           "confidence": torch.rand(args.batch, h, w, generator=g)}
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return {"source": move(src), "target": move(tgt)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="deeplabv2")
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--head", default=None, help="segformer: segformer or daformer")
    ap.add_argument("--crop", default="128x128", help="HxW")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--methods", default=None, help="comma-separated stage:method subset")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    args.crop = tuple(int(v) for v in args.crop.lower().split("x"))
    device = torch.device(args.device)
    c = 19
    spec = {"arch": args.arch, "backbone": args.backbone, "pretrained": None}
    if args.head:
        spec["head"] = args.head
    if args.backbone == "tiny":
        spec["feat_dim"] = 64
    runs = [r for r in RUNS if r[1] in METHODS.get(r[0], {})]
    if args.methods:
        keep = set(args.methods.split(","))
        runs = [r for r in runs if f"{r[0]}:{r[1]}" in keep or r[1] in keep]

    setups = []
    for stage, name, config in runs:
        cfg = load_config(config)
        torch.manual_seed(0)
        student = build_segmenter(spec, c).to(device)
        protos = torch.randn(c, student.spec.get("feat_dim", 256))
        method = METHODS[stage][name](cfg[name], student, c, prototypes=protos.to(device))
        for m in method.modules().values():
            m.to(device)
        # hooks after the method is built: an EMA teacher deep-copied from the student would copy them
        counter = _Counter([m for k, m in method.modules().items() if k in ("student", "teacher")])
        opt = build_optimizer(method.param_groups(), {**cfg["optim"], "lr": 1e-5})
        if getattr(method, "thresholds", 0) is None:  # class-balanced thresholds come from a pseudo-label folder
            from segadapt.methods.threshold import fixed_thresholds

            method.thresholds = fixed_thresholds(c, 0.5).to(device)
        method.train()
        setups.append((f"{stage}:{name}", method, opt, counter))

    batch = _batch(args, c, device)
    times = {k: [] for k, *_ in setups}
    passes = {}
    for r in range(args.rounds + 1):  # round 0 warms up (allocator, caches) and is not timed
        for key, method, opt, counter in setups:
            counter.train_images = counter.nograd_images = 0
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            loss, _ = method.training_step(batch, 100 + r)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step(100 + r)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if r > 0:
                times[key].append(dt)
            passes[key] = (counter.train_images, counter.nograd_images,
                           torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None)

    base = statistics.median(times["warmup:source-only"])
    base_train = passes["warmup:source-only"][0]
    print(f"model {args.arch}/{args.backbone}{'/' + args.head if args.head else ''}, crop {args.crop[0]}x{args.crop[1]}, "
          f"batch {args.batch}, {device}, median of {args.rounds} rounds")
    print(f"{'method':24} {'s/step':>8} {'x source-only':>14} {'student imgs':>13} {'teacher imgs':>13} "
          f"{'inherent x':>11} {'overhead':>9}" + ("  peak GiB" if device.type == "cuda" else ""))
    for key, *_ in setups:
        t = statistics.median(times[key])
        tr, ng, mem = passes[key]
        # a forward+backward costs ~3 forwards; a no-grad forward ~1: the cost a method cannot avoid
        inherent = (3 * tr + ng) / (3 * base_train)
        overhead = t / base - inherent
        line = f"{key:24} {t:8.3f} {t / base:14.2f} {tr:13d} {ng:13d} {inherent:11.2f} {overhead:+9.2f}"
        if mem is not None:
            line += f"  {mem:8.2f}"
        print(line)


if __name__ == "__main__":
    main()
