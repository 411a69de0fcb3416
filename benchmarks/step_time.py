"""Training step time and peak memory of every method relative to source-only, measured in one run on
the same model, crop and batch.

Each method gets the same random batch (source crops with labels, target crops with a made-up
pseudo-label and confidence) and runs forward, backward, optimiser step and its after-step hook, as
the engine does. Steps of all methods are interleaved over several rounds and the median taken, since
this machine is shared. The student's forward calls are counted, so the table also shows how much of
a method's cost is inherent (images pushed through the student, with backward, and through the EMA
teacher without) and how much is overhead (losses, mixing, sampling, EMA updates).

Peak memory of a method = what it keeps (its networks' parameters and buffers, optimiser state,
prototypes; counted tensor by tensor) + the most its training step adds while it runs (activations,
gradients, temporaries). The second part is measured: on CUDA by the allocator's peak, on the CPU by
sampling the process's resident memory every millisecond during the step. All methods share one
process, so the other methods' networks do not count against a method.

    python benchmarks/step_time.py                                   # CPU scale: tiny model, 128x128 x 8
    python benchmarks/step_time.py --arch deeplabv2 --backbone resnet101 --crop 512x896 --batch 1 --rounds 2
    python benchmarks/step_time.py --arch segformer --backbone mit_b5 --head daformer --crop 512x512 --batch 2
    python benchmarks/step_time.py ... --amp bf16 --channels-last --compile --json   # the GPU paths (gpu_check.sh)

``--amp``, ``--channels-last`` and ``--compile`` take the engine's own code paths (autocast, the
channels_last memory format of networks and batches, ``train.compile``'s in-place torch.compile), so the
figures are those of a training run with the same settings. ``--json`` prints one JSON object per
method (s/step, images/s of the source batch, peak GiB) for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import numpy as np
import torch

from segadapt.engine.device import amp_dtype, autocast, compile_modules
from segadapt.engine.optim import build_optimizer
from segadapt.pipeline import resolve_train_config
from segadapt.data.pseudo_labels import CONF_BINS
from segadapt.methods import STAGES
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


try:
    import ctypes

    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:
    _LIBC = None


class _PeakRSS:
    """Largest resident set size of this process while the context is open, minus the size at entry
    (Linux /proc; large tensors are mmap-ed by the allocator, so freeing them shows up in RSS)."""

    PAGE = 4096

    def __init__(self, interval: float = 0.001):
        self.interval = interval

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PeakRSS.PAGE

    def __enter__(self):
        if _LIBC is not None:
            _LIBC.malloc_trim(0)  # hand freed heap memory back, so the baseline is what is really in use
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def added(self) -> int:
        return self.peak - self.start


def _kept_bytes(method, opt) -> int:
    """Bytes a method holds between steps: every distinct tensor of its modules and its optimiser state."""
    seen, total = set(), 0
    tensors = [t for m in method.modules().values() for t in list(m.parameters()) + list(m.buffers())]
    tensors += [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
    tensors += [v for v in vars(method).values() if torch.is_tensor(v)]  # prototypes, thresholds, ...
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _batch(args, c, device):
    g = torch.Generator().manual_seed(0)
    h, w = args.crop
    lab = lambda: torch.randint(0, c, (args.batch, h, w), generator=g)  # noqa: E731
    src = {"image": torch.rand(args.batch, 3, h, w, generator=g), "label": lab(), "index": torch.arange(args.batch)}
    tgt = {"image": torch.rand(args.batch, 3, h, w, generator=g), "label": lab(), "index": torch.arange(args.batch),
           "confidence": torch.rand(args.batch, h, w, generator=g)}
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    move = lambda d: {k: (v.to(device).contiguous(memory_format=fmt) if v.dim() == 4 else v.to(device))  # noqa: E731
                      for k, v in d.items()}
    return {"source": move(src), "target": move(tgt)}


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Folder:
    """What a pseudo-label folder gives the methods (``Method.use_pseudo_labels``), made up: random class
    prototypes and a flat confidence histogram (class-balanced thresholds from it)."""

    root = "(made up for the benchmark)"

    def __init__(self, prototypes: torch.Tensor, num_classes: int):
        self._prototypes, self.num_classes = prototypes, num_classes

    def prototypes(self):
        return self._prototypes

    def histogram(self):
        return np.ones((self.num_classes, CONF_BINS), np.int64)


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
    ap.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="autocast dtype (fp16 unscaled)")
    ap.add_argument("--channels-last", action="store_true", help="networks and batches in channels_last")
    ap.add_argument("--compile", action="store_true", help="torch.compile student and teacher (train.compile)")
    ap.add_argument("--compile-backend", default="inductor", help="with --compile: inductor or aot_eager")
    ap.add_argument("--json", action="store_true", help="one JSON object per method on stdout")
    args = ap.parse_args()
    args.crop = tuple(int(v) for v in args.crop.lower().split("x"))
    device = torch.device(args.device)
    if device.type == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc otherwise raises its mmap threshold after frees and keeps large freed blocks in the
        # heap, where RSS cannot see them come and go; a fixed threshold maps every large tensor
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)})
    c = 19
    spec = {"arch": args.arch, "backbone": args.backbone, "pretrained": None}
    if args.head:
        spec["head"] = args.head
    if args.backbone == "tiny":
        spec["feat_dim"] = 64
    runs = [r for r in RUNS if r[1] in STAGES[r[0]]]
    if args.methods:
        keep = set(args.methods.split(","))
        runs = [r for r in runs if f"{r[0]}:{r[1]}" in keep or r[1] in keep]

    setups = []
    for stage, name, config in runs:
        cfg = resolve_train_config(config, [], None, None, stage)  # complete: every default filled in
        torch.manual_seed(0)
        student = build_segmenter(spec, c).to(device)
        method = STAGES[stage].get(name)(cfg[name], student, c)
        method.use_pseudo_labels(_Folder(torch.randn(c, student.spec.get("feat_dim", 256)), c))
        for m in method.modules().values():
            m.to(device)
            if args.channels_last:
                m.to(memory_format=torch.channels_last)
        # hooks after the method is built: an EMA teacher deep-copied from the student would copy them
        counter = _Counter([m for k, m in method.modules().items() if k in ("student", "teacher")])
        opt = build_optimizer(method.param_groups(), {**cfg["optim"], "lr": 1e-5})
        if args.compile:  # after the hooks: the compiled forward still calls them
            compile_modules([m for k, m in method.modules().items() if k in ("student", "teacher")], "force", device,
                            args.compile_backend)
        method.train()
        setups.append((f"{stage}:{name}", method, opt, counter))

    batch = _batch(args, c, device)
    amp = amp_dtype(args.amp, device)
    times = {k: [] for k, *_ in setups}
    passes = {}
    for r in range(args.rounds + 1):  # round 0 warms up (allocator, caches) and is not timed
        for key, method, opt, counter in setups:
            counter.train_images = counter.nograd_images = 0
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                start_mem = torch.cuda.memory_allocated()
            rss = _PeakRSS() if device.type == "cpu" else None
            t0 = time.perf_counter()
            with rss or _Nothing():
                with autocast(device, amp):
                    loss, _ = method.training_step(batch, 100 + r)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                method.after_step(100 + r)
                del loss
                if device.type == "cuda":
                    torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            added = rss.added if rss else torch.cuda.max_memory_allocated() - start_mem
            if r > 0:
                times[key].append(dt)
            # round 0 allocates the optimiser state, so the kept size is read after it
            peak = _kept_bytes(method, opt) + added
            passes[key] = (counter.train_images, counter.nograd_images, max(peak, passes.get(key, (0, 0, 0))[2]))

    if args.json:
        for key, *_ in setups:
            t = statistics.median(times[key])
            print(json.dumps({"method": key, "arch": args.arch, "backbone": args.backbone, "head": args.head,
                              "crop": list(args.crop), "batch": args.batch, "device": str(device), "amp": args.amp,
                              "channels_last": args.channels_last,
                              "compile": args.compile_backend if args.compile else False,
                              "s_per_step": t, "images_per_s": args.batch / t,
                              "peak_gib": passes[key][2] / 2**30}), flush=True)
        return
    if "warmup:source-only" not in times:
        raise SystemExit("the ratio table needs source-only among --methods (or use --json)")
    base = statistics.median(times["warmup:source-only"])
    base_train = passes["warmup:source-only"][0]
    print(f"model {args.arch}/{args.backbone}{'/' + args.head if args.head else ''}, crop {args.crop[0]}x{args.crop[1]}, "
          f"batch {args.batch}, {device}, median of {args.rounds} rounds")
    print(f"{'method':24} {'s/step':>8} {'x source-only':>14} {'student imgs':>13} {'teacher imgs':>13} "
          f"{'inherent x':>11} {'overhead':>9} {'peak GiB':>9}")
    for key, *_ in setups:
        t = statistics.median(times[key])
        tr, ng, mem = passes[key]
        # a forward+backward costs ~3 forwards; a no-grad forward ~1: the cost a method cannot avoid
        inherent = (3 * tr + ng) / (3 * base_train)
        overhead = t / base - inherent
        print(f"{key:24} {t:8.3f} {t / base:14.2f} {tr:13d} {ng:13d} {inherent:11.2f} {overhead:+9.2f} "
              f"{mem / 2**30:9.2f}")


if __name__ == "__main__":
    main()
