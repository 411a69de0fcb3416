"""The training loop shared by every method and stage: deterministic batches, optimiser and poly
schedule, EMA via the method's hooks, JSONL metrics, periodic atomic checkpoints, exact resume.

The engine never knows which method runs: it asks the method for its modules, parameter groups,
the kind of target batches it needs, and the loss of one iteration. ``start_run`` and ``StageTrainer``
are the run start and the run every training stage shares (the segmentation stages' ``Trainer`` and
the image translator's ``translation.train.TranslatorTrainer``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from segadapt.config import dump_config, provenance
from segadapt.console import log
from segadapt.data.datasets import TrainCrops, batch_to_device
from segadapt.data.io import write_text
from segadapt.data.sampling import RareClassSampling, make_stream, sample_seed
from segadapt.engine.checkpoint import (RunLock, copy_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                                       set_rng_state)
from segadapt.engine import distributed as D
from segadapt.engine.device import amp_dtype, autocast, compile_modules, use_channels_last
from segadapt.engine.loop import run_iterations
from segadapt.engine.runlog import tensorboard_enabled
from segadapt.engine.optim import build_optimizer, set_lr
from segadapt.errors import DataError, SegadaptError, UsageError

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


def start_run(out: Path, cfg: dict, resume: bool, force: bool, stage: str | None = None,
              upgrade: Callable[[dict], dict] | None = None) -> dict | None:
    """Lock and check the run folder on rank 0, then load the checkpoint to resume on every rank (None
    when the run starts from iteration 0). ``stage``: the checkpoint's ``stage`` must be this one;
    ``upgrade``: puts the checkpoint's stored config in today's terms before it is compared."""
    outcome = None
    if D.info().is_main:
        try:
            RunLock(out).acquire()
            outcome = prepare_run_dir(out, resume, force)
        except SegadaptError as e:
            outcome = e
    outcome = D.broadcast_object(outcome)  # the other ranks fail with rank 0's error instead of hanging
    if isinstance(outcome, SegadaptError):
        raise outcome
    resuming = outcome
    ckpt = None
    if resuming:
        ckpt = load_resume(out)
        if stage is not None and ckpt.get("stage") != stage:
            raise DataError(f"{out}/last.pt is not a {stage} checkpoint (stage {ckpt.get('stage')!r})")
        check_resume_config(ckpt, cfg, out, upgrade)
        log(f"resuming {out} at iteration {ckpt['iteration']}")
    elif resume:
        log(f"nothing to resume in {out}; starting from iteration 0")
    return ckpt


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


class StageTrainer:
    """One training run of ``cfg['optim']['iters']`` iterations into ``out``, as every stage runs it: the
    resolved config written beside the run, a finished run left alone, deterministic batch streams
    (``data.sampling``), the iteration's seed derived from (seed, rank, iteration) before its batches are
    drawn, and the shared loop (``engine.loop.run_iterations``: metrics, checkpoints, graceful stop).

    A stage sets ``start`` (the iteration a resumed run continues at) and supplies ``streams`` (named batch
    iterators), ``iteration`` (one optimisation step on the batches on the device), ``save`` (its
    checkpoint), ``in_update``, ``info`` and ``label``."""

    label = "train"
    noun = "iterations"
    channels_last = False
    config_docs: dict | None = None  # {top-level key: section dataclass or doc}: the comments of RUN/config.yaml

    def __init__(self, cfg: dict, out: Path, device):
        self.cfg, self.out, self.device = cfg, Path(out), device
        self.dist = D.info()  # rank 0 alone writes; every rank trains on its slice of the global batch
        self.seed = int(cfg["seed"])
        self.iters = int(cfg["optim"]["iters"])
        self.start = 0

    def stream(self, dataset, index: int, choose=None):
        """Batches of ``dataset`` for iterations start..iters-1, this rank's share of the global batch;
        ``index`` tells the stage's streams apart (0 source, 1 target)."""
        bs = int(self.cfg["data"]["batch_size"])
        workers = int(self.cfg["data"]["workers"])
        return make_stream(dataset, bs, self.seed, index, self.start, self.iters, workers,
                           rank=self.dist.rank, world_size=self.dist.world_size, choose=choose)

    def run_provenance(self) -> dict:
        """What config.yaml records about this run besides the package's provenance."""
        return {}

    def streams(self) -> dict:
        raise NotImplementedError

    def iteration(self, it: int, batch: dict, stop) -> tuple[float, dict, bool]:
        """One iteration on ``batch`` (each stream's next batch, on the device): (lr, logs, stop now?)."""
        raise NotImplementedError

    def save(self, iteration: int) -> None:
        raise NotImplementedError

    def in_update(self) -> bool:
        """True while an interrupt would land between an optimiser step and the end of the iteration."""
        return False

    def info(self, logs: dict) -> str:
        return ""

    def before_loop(self) -> None:
        pass

    def fit(self) -> dict:
        if self.dist.is_main:
            write_text(self.out / "config.yaml", "# resolved configuration of this run\n"
                       + dump_config({**self.cfg, "provenance": {**provenance(), **self.run_provenance()}},
                                   self.config_docs))
        if self.start >= self.iters:
            log(f"run in {self.out} already finished ({self.iters} iterations)")
            return {"iterations": self.iters}
        tcfg = self.cfg["train"]
        streams = self.streams()
        self.before_loop()

        def step(it, stop):
            # every iteration's randomness (mixing, augmentation choices) derives from (seed, it)
            torch.manual_seed(sample_seed(self.seed, 99 + 1000 * self.dist.rank, it))
            batch = {k: batch_to_device(next(s), self.device, self.channels_last) for k, s in streams.items()}
            return self.iteration(it, batch, stop)

        return run_iterations(step, start=self.start, iters=self.iters, out=self.out, save=self.save,
                              log_every=int(tcfg["log_every"]), ckpt_every=int(tcfg["ckpt_every"]),
                              label=self.label, info=self.info, in_update=self.in_update, is_main=self.dist.is_main,
                              noun=self.noun, batch_size=int(self.cfg["data"]["batch_size"]), device=self.device,
                              tensorboard=tensorboard_enabled(self.cfg))


class Trainer(StageTrainer):
    """Runs ``method`` for ``cfg['optim']['iters']`` iterations, writing into ``out``."""

    def __init__(self, *, cfg: dict, method, label_space, source_items, target_items, out: Path, device,
                 resume_ckpt: dict | None, extra_ckpt: dict | None = None, source_counts=None,
                 source_label_lut=None, config_docs: dict | None = None):
        """``config_docs``: {top-level key: section dataclass or doc} that comment RUN/config.yaml."""
        super().__init__(cfg, out, device)
        self.config_docs = config_docs
        self.method, self.label_space = method, label_space
        self.label = f"{method.stage} {method.name}"
        tcfg = cfg["train"]
        self.amp = amp_dtype(tcfg["amp"], device)
        self.channels_last = use_channels_last(tcfg["channels_last"], device)
        self.extra_ckpt = extra_ckpt or {}
        for m in method.modules().values():
            m.to(device)
            if self.channels_last:
                m.to(memory_format=torch.channels_last)
        for m in method.modules().values():  # every rank starts from rank 0's weights
            D.broadcast_module_(m)
        # the networks the methods run every step; extra heads (projectors) are small and stay eager
        self.compiled = compile_modules([m for k, m in method.modules().items() if k in ("student", "teacher")],
                                        tcfg["compile"], device,
                                        tcfg["compile_backend"])
        self.optimizer = build_optimizer(method.param_groups(), cfg["optim"])
        self.accum = int(tcfg["grad_accum"])
        if self.accum < 1:
            raise UsageError(f"train.grad_accum must be >= 1, got {self.accum}")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self._updating = False  # True between the optimiser step and the EMA update: no consistent state to save
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        d = cfg["data"]
        crop, scale, flip = d["crop"], d["scale"], d["flip"]
        self.source_ds = TrainCrops(source_items, crop, scale, flip, resize=d["source_resize"],
                                    label_lut=source_label_lut)
        self.target_ds = (TrainCrops(target_items, crop, scale, flip, resize=d["target_resize"])
                          if target_items is not None else None)
        self.source_choice = None
        rcs = d["rare_class_sampling"]
        if rcs["enabled"]:
            if source_counts is None:
                raise UsageError("rare-class sampling needs the source's class counts (stats/ of prepare-data)")
            self.source_choice = RareClassSampling(source_counts, float(rcs["temperature"]),
                                                   int(rcs["min_pixels"]))

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
        keep = int(self.cfg["train"]["keep_every"])
        if keep and iteration % keep == 0 and iteration < self.iters:
            copy_checkpoint(self.out / "last.pt", self.out / f"iter_{iteration:07d}.pt")  # atomic: kill -9 safe

    # -- the loop ----------------------------------------------------------------------------------
    def streams(self):
        bs = int(self.cfg["data"]["batch_size"])  # the global batch, split over ranks
        if bs % (self.dist.world_size * self.accum):
            raise UsageError(f"data.batch_size {bs} must be a multiple of processes x grad_accum "
                             f"({self.dist.world_size} x {self.accum})")
        streams = {"source": self.stream(self.source_ds, 0, choose=self.source_choice)}
        if self.method.target_batches is not None:
            if self.target_ds is None:
                raise UsageError(f"method '{self.method.name}' needs target images (--target)")
            streams["target"] = self.stream(self.target_ds, 1)
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

    def run_provenance(self):
        return {"compile": self.compiled}

    def before_loop(self):
        self.method.train()

    def in_update(self):
        return self._updating

    def info(self, logs):
        return f"loss {logs['loss']:.4f}"

    def iteration(self, it, batch, stop):
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
        self._updating = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step(it)
        self._updating = False
        return lr, {"loss": loss.item(), **logs}, stopping


def check_resume_config(ckpt: dict, cfg: dict, out: Path, upgrade: Callable[[dict], dict] | None = None) -> None:
    old = dict(ckpt.get("config", {}))
    if upgrade is not None:  # a run started by an older segadapt resumes when its settings are the same
        old = upgrade(old)
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
