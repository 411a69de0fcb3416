"""The training loop shared by every method and stage: deterministic batches, optimiser and poly
schedule, EMA via the method's hooks, JSONL metrics, periodic atomic checkpoints, exact resume.

The engine never knows which method runs: it asks the method for its modules, parameter groups,
the kind of target batches it needs, and the loss of one iteration."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from segadapt.config import dump_config, provenance
from segadapt.console import log
from segadapt.data.datasets import TrainCrops
from segadapt.data.io import write_text
from segadapt.data.sampling import RareClassSampling, make_stream, sample_seed
from segadapt.engine.checkpoint import copy_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from segadapt.engine import distributed as D
from segadapt.engine.device import amp_dtype, autocast, compile_modules, use_channels_last
from segadapt.engine.loop import run_iterations
from segadapt.engine.runlog import tensorboard_enabled
from segadapt.engine.optim import build_optimizer, set_lr
from segadapt.errors import DataError, UsageError

RUN_FILES = ("last.pt", "metrics.jsonl", "config.yaml")
#: modules with a top-level checkpoint key of their own (the layout every segadapt checkpoint has had:
#: inference reads "model"); any other module of a method is stored under "modules"
TOP_LEVEL_MODULES = {"student": "model", "teacher": "teacher", "method_state": "method_state"}


def prepare_run_dir(out: Path, resume: bool, force: bool) -> bool:
    """Returns True when a checkpoint to resume from exists. Refuses to overwrite an earlier run."""
    out = Path(out)
    has_ckpt = (out / "last.pt").is_file()
    has_run = any((out / f).exists() for f in RUN_FILES)
    if resume and force:
        raise UsageError("--resume and --force contradict each other")
    if has_run and not (resume or force):
        raise DataError(f"{out} already holds a run; pass --resume to continue it or --force to start over")
    if force and has_run:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
        has_ckpt = False
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.pt.*.tmp"):  # a checkpoint write cut short by kill -9; last.pt is intact
        stale.unlink(missing_ok=True)
    return has_ckpt and resume


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _to_device(batch: dict, device, channels_last: bool) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


class Trainer:
    """Runs ``method`` for ``cfg['optim']['iters']`` iterations, writing into ``out``."""

    def __init__(self, *, cfg: dict, method, label_space, source_items, target_items, out: Path, device,
                 resume_ckpt: dict | None, extra_ckpt: dict | None = None, source_counts=None,
                 source_label_lut=None):
        self.cfg, self.method, self.label_space = cfg, method, label_space
        self.out, self.device = Path(out), device
        self.dist = D.info()  # rank 0 alone writes; every rank trains on its slice of the global batch
        self.seed = int(cfg["seed"])
        self.iters = int(cfg["optim"]["iters"])
        tcfg = cfg["train"]
        self.amp = amp_dtype(tcfg.get("amp", "auto"), device)
        self.channels_last = use_channels_last(tcfg.get("channels_last", "auto"), device)
        self.extra_ckpt = extra_ckpt or {}
        for m in method.modules().values():
            m.to(device)
            if self.channels_last:
                m.to(memory_format=torch.channels_last)
        for m in method.modules().values():  # every rank starts from rank 0's weights
            D.broadcast_module_(m)
        # the networks the methods run every step; extra heads (projectors) are small and stay eager
        self.compiled = compile_modules([m for k, m in method.modules().items() if k in ("student", "teacher")],
                                        tcfg.get("compile", False), device,
                                        str(tcfg.get("compile_backend", "inductor")))
        self.optimizer = build_optimizer(method.param_groups(), cfg["optim"])
        self.accum = int(tcfg.get("grad_accum", 1))
        if self.accum < 1:
            raise UsageError(f"train.grad_accum must be >= 1, got {self.accum}")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.start = 0
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        d = cfg["data"]
        crop, scale, flip = d["crop"], d.get("scale", [1.0, 1.0]), d.get("flip", True)
        self.source_ds = TrainCrops(source_items, crop, scale, flip, base_size=d.get("source_size"),
                                    label_lut=source_label_lut)
        self.target_ds = (TrainCrops(target_items, crop, scale, flip, base_size=d.get("target_size"))
                          if target_items is not None else None)
        self.workers = int(d.get("workers", 0))
        self.source_choice = None
        rcs = d.get("rare_class_sampling") or {}
        if rcs.get("enabled"):
            if source_counts is None:
                raise UsageError("rare-class sampling needs the source's class counts (stats/ of prepare-data)")
            self.source_choice = RareClassSampling(source_counts, float(rcs.get("temperature", 0.01)),
                                                   int(rcs.get("min_pixels", 3000)))

    # -- checkpointing -------------------------------------------------------------------------
    def _restore(self, ckpt: dict) -> None:
        for name, module in self.method.modules().items():
            key = TOP_LEVEL_MODULES.get(name)
            state = ckpt.get(key) if key is not None else ckpt.get("modules", {}).get(name)
            if state is None:
                raise DataError(f"checkpoint lacks the '{name}' weights this method needs")
            module.load_state_dict(state)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt.get("rng", {}))
        self.start = int(ckpt["iteration"])

    def checkpoint_payload(self, iteration: int) -> dict:
        modules = self.method.modules()
        return {
            "stage": self.method.stage,
            "method": self.method.name,
            "iteration": iteration,  # the next iteration to run
            "model": modules["student"].state_dict(),
            "teacher": modules["teacher"].state_dict() if "teacher" in modules else None,
            "modules": {k: m.state_dict() for k, m in modules.items() if k not in TOP_LEVEL_MODULES},
            "method_state": modules["method_state"].state_dict() if "method_state" in modules else {},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng_state(),
            "label_space": self.label_space.to_dict(),
            "model_spec": modules["student"].spec,
            "config": self.cfg,
            "provenance": provenance(),
            **self.extra_ckpt,
        }

    def save(self, iteration: int) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(self.out / "last.pt", self.checkpoint_payload(iteration))
        keep = int(self.cfg["train"].get("keep_every", 0))
        if keep and iteration % keep == 0 and iteration < self.iters:
            copy_checkpoint(self.out / "last.pt", self.out / f"iter_{iteration:07d}.pt")  # atomic: kill -9 safe

    # -- the loop ----------------------------------------------------------------------------------
    def _streams(self):
        bs = int(self.cfg["data"]["batch_size"])  # the global batch, split over ranks
        if bs % (self.dist.world_size * self.accum):
            raise UsageError(f"data.batch_size {bs} must be a multiple of processes x grad_accum "
                             f"({self.dist.world_size} x {self.accum})")
        r, w = self.dist.rank, self.dist.world_size
        streams = {"source": make_stream(self.source_ds, bs, self.seed, 0, self.start, self.iters, self.workers,
                                         rank=r, world_size=w, choose=self.source_choice)}
        if self.method.target_batches is not None:
            if self.target_ds is None:
                raise UsageError(f"method '{self.method.name}' needs target images (--target)")
            streams["target"] = make_stream(self.target_ds, bs, self.seed, 1, self.start, self.iters, self.workers,
                                            rank=r, world_size=w)
        return streams

    def _step(self, batch: dict, it: int) -> tuple[torch.Tensor, dict]:
        """Forward and backward of one iteration, in ``grad_accum`` micro-batches (same global batch,
        less memory); returns the loss and logs averaged over micro-batches."""
        if self.accum == 1:
            micro = [batch]
        else:
            micro = [{dom: {k: (v.chunk(self.accum)[i] if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
                      for dom, b in batch.items()} for i in range(self.accum)]
        total, logs = 0.0, {}
        for mb in micro:
            with autocast(self.device, self.amp):
                loss, mlogs = self.method.training_step(mb, it)
            if not torch.isfinite(loss):
                return loss, mlogs
            self.scaler.scale(loss / self.accum).backward()
            total = total + loss.detach() / self.accum
            for k, v in mlogs.items():
                logs[k] = logs.get(k, 0.0) + float(v) / self.accum
        return total, logs

    def _params(self):
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def fit(self) -> dict:
        if self.dist.is_main:
            write_text(self.out / "config.yaml",
                       "# resolved configuration of this run\n" + dump_config({**self.cfg, "provenance": {**provenance(), "compile": self.compiled}}))
        if self.start >= self.iters:
            log(f"run in {self.out} already finished ({self.iters} iterations)")
            return {"iterations": self.iters}
        tcfg = self.cfg["train"]
        streams = self._streams()
        self.method.train()
        updating = [False]  # True between the optimiser step and the EMA update: no consistent state to save

        def step(it, stop):
            # every iteration's randomness (mixing, augmentation choices) derives from (seed, it)
            torch.manual_seed(sample_seed(self.seed, 99 + 1000 * self.dist.rank, it))
            batch = {k: _to_device(next(s), self.device, self.channels_last) for k, s in streams.items()}
            lr = set_lr(self.optimizer, it, self.iters, self.cfg["optim"])
            self.optimizer.zero_grad(set_to_none=True)
            loss, logs = self._step(batch, it)
            # one small all-reduce: the global mean loss and whether any rank was asked to stop,
            # so that every rank stops (or fails) at the same iteration
            loss, stopping = D.reduce_loss_and_flag(loss, stop.signal is not None)
            if not torch.isfinite(loss):
                raise DataError(f"loss became {loss.item()} at iteration {it}; last good checkpoint: "
                                f"{self.out / 'last.pt'}")
            D.average_gradients(self._params())
            updating[0] = True
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.method.after_step(it)
            updating[0] = False
            return lr, {"loss": loss.item(), **logs}, stopping

        return run_iterations(step, start=self.start, iters=self.iters, out=self.out, save=self.save,
                              log_every=int(tcfg.get("log_every", 10)), ckpt_every=int(tcfg.get("ckpt_every", 500)),
                              label=f"{self.method.stage} {self.method.name}", info=lambda g: f"loss {g['loss']:.4f}",
                              in_update=lambda: updating[0], is_main=self.dist.is_main,
                              batch_size=int(self.cfg["data"]["batch_size"]), device=self.device,
                              tensorboard=tensorboard_enabled(self.cfg))


def check_resume_config(ckpt: dict, cfg: dict, out: Path) -> None:
    old = dict(ckpt.get("config", {}))
    # log settings change what is written beside the run, and compiling how fast it runs, not the run
    # itself: they may differ on resume
    free = ("train.compile", "train.compile_backend")
    diff = [k for k in _config_diff(old, cfg) if k.split(".")[0] not in ("provenance", "log") and k not in free]
    if diff:
        raise UsageError(f"{out} was started with a different configuration (differs in: {', '.join(diff[:6])}); "
                         "resume with the same options, or use --force to start over")


def load_resume(out: Path) -> dict:
    return load_checkpoint(Path(out) / "last.pt")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
