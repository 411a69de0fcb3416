"""Training of the source -> target translator (``segadapt train-translator``).

One iteration (CycleGAN's order): G and F are updated on
    L_G = w_adv L_adv + w_cyc L_cyc + w_idt L_idt + w_edge L_edge            (losses.py)
with the discriminators frozen, then D_T and D_S on their LSGAN loss against the (detached) fakes of
the same iteration. Adam (lr 2e-4, betas 0.5/0.999) for both; the learning rate stays constant, then
decays linearly towards 0 from ``optim.decay_start`` (a fraction of the iterations), as in CycleGAN.

The run is the segmentation stages' (engine/trainer.py): ``start_run`` locks the folder and refuses to
overwrite without --resume/--force, ``StageTrainer`` writes ``config.yaml``, draws the batches from the
deterministic streams of data/sampling.py and runs the shared loop (``metrics.jsonl``, an atomic
``last.pt`` readable with ``weights_only=True``), so a resumed run logs exactly what the uninterrupted
one would have logged. The translator supplies its networks, one iteration and its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segadapt import config as C
from segadapt import schema
from segadapt.config import provenance
from segadapt.data.datasets import TrainCrops
from segadapt.data.prepared import PreparedDataset
from segadapt.engine import distributed as D
from segadapt.engine.checkpoint import RunLock, rng_state, save_checkpoint, set_rng_state
from segadapt.engine.device import amp_dtype, autocast, resolve_device
from segadapt.engine.run_config import CropsConfig, LogConfig
from segadapt.engine.runlog import check_log_config
from segadapt.engine.trainer import StageTrainer, seed_everything, start_run
from segadapt.errors import DataError, UsageError
from segadapt.schema import setting
from segadapt.translation.losses import (EDGE_MODES, cycle_loss, discriminator_loss, lsgan_loss,
                                         semantic_edge_loss)
from segadapt.translation.networks import (DiscriminatorConfig, GeneratorConfig, build_discriminator,
                                           build_generator)

STAGE = "translator"  # the checkpoint's "stage": what DiGA checks before loading a generator


# -- configuration ---------------------------------------------------------------------------------

@dataclass
class TranslatorDataConfig(CropsConfig):
    """The segmentation stages' crops of both domains; the edge loss reads the source labels."""
    crop: list[int] = setting(doc="training crop [H, W]; the generator is fully convolutional", length=2, lo=4)


@dataclass
class TranslatorLossConfig:
    adv_weight: float = setting(doc="w_adv of the LSGAN generator loss (CycleGAN: 1; DiGA: 0.5)", lo=0)
    cycle_weight: float = setting(doc="w_cyc of |F(G(x)) - x|_1 + |G(F(y)) - y|_1 (CycleGAN and DiGA: 10)", lo=0)
    identity_weight: float = setting(doc="w_idt of |G(y) - y|_1 + |F(x) - x|_1 (0 = off)", lo=0)
    edge_weight: float = setting(doc="w_edge of the semantic-edge loss (0 = off, labels then not needed)", lo=0)
    edge_mode: str = setting(doc="sobel: keep relative Sobel edge strength on label boundaries; pixel: keep pixel "
                             "values (DiGA code)", choices=EDGE_MODES)
    edge_radius: int = setting(doc="dilate the 1-pixel boundary mask by this many pixels", lo=0)


@dataclass
class TranslatorOptimConfig:
    lr: float = setting(doc="Adam learning rate of generators and discriminators", lo=0)
    betas: list[float] = setting(doc="Adam betas (CycleGAN: [0.5, 0.999])", length=2, lo=0, hi=1, hi_open=True)
    decay_start: float = setting(doc="constant lr for this fraction of the iterations, then linear decay to 0",
                                 lo=0, hi=1)
    iters: int = setting(doc="training iterations", lo=1)


@dataclass
class TranslatorTrainConfig:
    log_every: int = setting(doc="a metrics.jsonl record every N iterations", lo=1)
    ckpt_every: int = setting(doc="write RUN/last.pt every N iterations (and at the end)", lo=1)
    amp: bool | str = setting("off", "off, or bf16 / auto (bf16 on CUDA GPUs that have it; no fp16 for GANs here)")
    device: str = setting("auto", "auto = cuda when available, else cpu")


#: {top-level key: section dataclass or doc} of a translator config; generator: G: S->T and F: T->S,
#: discriminator: D_T and D_S (multi-scale PatchGANs), both defined beside the networks
TRANSLATOR_SECTIONS = {"seed": "every random choice (initialisation, crops) derives from it",
                       "data": TranslatorDataConfig, "generator": GeneratorConfig,
                       "discriminator": DiscriminatorConfig, "loss": TranslatorLossConfig,
                       "optim": TranslatorOptimConfig, "train": TranslatorTrainConfig, "log": LogConfig}


def resolve_translator_config(config: str, overrides: list[str], iters: int | None) -> dict:
    cfg = C.apply_overrides(C.load_config(config), list(overrides), settable=schema.settable_keys(TRANSLATOR_SECTIONS))
    C.set_iters(cfg, iters)
    for key in ("seed", "data", "generator", "discriminator", "loss", "optim", "train"):
        C.require(cfg, key)
    cfg = check_translator_config(cfg)
    check_log_config(cfg)
    return cfg


def check_translator_config(cfg: dict) -> dict:
    """Every section checked by its dataclass (bad keys and values -> one-line UsageError before anything
    is built or written); returns the complete config, defaults filled in."""
    schema.check_top_level(cfg, TRANSLATOR_SECTIONS)
    out = {k: schema.to_dict(schema.parse(cls, cfg.get(k), k)) if isinstance(cls, type) else cfg[k]
           for k, cls in TRANSLATOR_SECTIONS.items() if k in cfg or isinstance(cls, type)}
    # the coarsest PatchGAN sees the crop pooled (scales - 1) times by 2; after its `layers` stride-2 convs
    # it needs 3 pixels left (else instance norm meets a 1x1 map)
    layers, scales = out["discriminator"]["layers"], out["discriminator"]["scales"]
    crop = out["data"]["crop"]
    need = 3 * 2 ** layers * 2 ** (scales - 1)
    if min(crop) < need:
        raise UsageError(f"data.crop {crop} is too small for a {scales}-scale PatchGAN with {layers} layers "
                         f"(needs >= {need} px; lower discriminator.scales or discriminator.layers)")
    return out


def decayed_lr(base_lr: float, it: int, total: int, decay_start: float) -> float:
    """CycleGAN's schedule: ``base_lr`` until iteration round(decay_start * total), then linearly to
    base_lr / (total - start) at the last iteration."""
    start = int(round(decay_start * total))
    return base_lr * (1.0 - max(0, it - start) / max(1, total - start))


# -- the four networks and one training step -------------------------------------------------------

class CycleGAN(nn.Module):
    """G (g_st: source -> target), F (g_ts: target -> source), D_T (d_t), D_S (d_s)."""

    def __init__(self, generator: dict | None, discriminator: dict | None):
        super().__init__()
        self.g_st, self.g_ts = build_generator(generator), build_generator(generator)
        self.d_t, self.d_s = build_discriminator(discriminator), build_discriminator(discriminator)

    def generators(self):
        return list(self.g_st.parameters()) + list(self.g_ts.parameters())

    def discriminators(self):
        return list(self.d_t.parameters()) + list(self.d_s.parameters())


def _requires_grad(params, flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


class TranslatorStep:
    """Networks, their two Adam optimisers and one G-then-D update (usable without a run folder)."""

    def __init__(self, cfg: dict, device=torch.device("cpu"), amp=None):
        self.cfg, self.device, self.amp = cfg, device, amp
        self.nets = CycleGAN(cfg.get("generator"), cfg.get("discriminator")).to(device)
        o = cfg["optim"]
        betas = tuple(float(b) for b in o["betas"])
        self.opt_g = torch.optim.Adam(self.nets.generators(), lr=float(o["lr"]), betas=betas)
        self.opt_d = torch.optim.Adam(self.nets.discriminators(), lr=float(o["lr"]), betas=betas)
        self.in_update = False  # True between the first optimiser step and the last: no state to save

    def set_lr(self, it: int, total: int) -> float:
        lr = decayed_lr(float(self.cfg["optim"]["lr"]), it, total, float(self.cfg["optim"]["decay_start"]))
        for opt in (self.opt_g, self.opt_d):
            for g in opt.param_groups:
                g["lr"] = lr
        return lr

    def step(self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor) -> dict:
        n, L = self.nets, self.cfg["loss"]
        w_adv, w_cyc = float(L["adv_weight"]), float(L["cycle_weight"])
        w_idt, w_edge = float(L["identity_weight"]), float(L["edge_weight"])
        n.train()
        # generators, discriminators frozen (their gradients are not needed for L_G)
        _requires_grad(n.discriminators(), False)
        with autocast(self.device, self.amp):
            fake_t = n.g_st(xs)
            fake_s = n.g_ts(xt)
            rec_s, rec_t = n.g_ts(fake_t), n.g_st(fake_s)
            adv = lsgan_loss(n.d_t(fake_t), 1.0) + lsgan_loss(n.d_s(fake_s), 1.0)
            cyc = cycle_loss(xs, rec_s) + cycle_loss(xt, rec_t)
            loss_g = w_adv * adv + w_cyc * cyc
            logs = {"loss_adv": adv.item(), "loss_cycle": cyc.item()}
            if w_edge > 0:
                edge = semantic_edge_loss(fake_t, xs, ys, L["edge_mode"], int(L["edge_radius"]))
                loss_g = loss_g + w_edge * edge
                logs["loss_edge"] = edge.item()
            if w_idt > 0:  # a target image should pass G unchanged (CycleGAN's colour-preserving term)
                idt = cycle_loss(xt, n.g_st(xt)) + cycle_loss(xs, n.g_ts(xs))
                loss_g = loss_g + w_idt * idt
                logs["loss_identity"] = idt.item()
        if not torch.isfinite(loss_g):
            raise DataError(f"translator loss became {loss_g.item()}")
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.in_update = True
        self.opt_g.step()
        # discriminators on real images and this iteration's fakes; no history pool of fakes (CycleGAN keeps 50):
        # at 512x896 it would add ~270 MB per domain to every checkpoint, and DiGA's code has none either
        _requires_grad(n.discriminators(), True)
        with autocast(self.device, self.amp):
            loss_d = (discriminator_loss(n.d_t(xt), n.d_t(fake_t.detach()))
                      + discriminator_loss(n.d_s(xs), n.d_s(fake_s.detach())))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        self.in_update = False
        return {"loss_g": loss_g.item(), **logs, "loss_d": loss_d.item()}

    def state(self) -> dict:
        return {"modules": {k: getattr(self.nets, k).state_dict() for k in ("g_st", "g_ts", "d_t", "d_s")},
                "optimizer": {"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()}}

    def load_state(self, ckpt: dict) -> None:
        try:
            for k in ("g_st", "g_ts", "d_t", "d_s"):
                getattr(self.nets, k).load_state_dict(ckpt["modules"][k])
            self.opt_g.load_state_dict(ckpt["optimizer"]["g"])
            self.opt_d.load_state_dict(ckpt["optimizer"]["d"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise DataError(f"translator checkpoint does not fit this configuration: {str(e).splitlines()[0][:200]}") \
                from None


# -- the run ---------------------------------------------------------------------------------------

class TranslatorTrainer(StageTrainer):
    label = "train-translator"
    noun = "translator iterations"
    config_docs = TRANSLATOR_SECTIONS  # comments of RUN/config.yaml

    def __init__(self, cfg: dict, source_items, target_items, out: Path, device, resume_ckpt: dict | None = None):
        super().__init__(cfg, out, device)
        setting = str(cfg["train"]["amp"])
        amp = amp_dtype(setting, device)
        if amp == torch.float16:  # fp16 needs a loss scaler per optimiser; bf16 does not
            if setting.lower() != "auto":
                raise UsageError("train.amp: the translator trains in fp32 or bf16 (off, auto, bf16)")
            amp = None
        self.core = TranslatorStep(cfg, device, amp)
        if resume_ckpt is not None:
            self.core.load_state(resume_ckpt)
            set_rng_state(resume_ckpt.get("rng", {}))
            self.start = int(resume_ckpt["iteration"])
        d = cfg["data"]
        crop, scale, flip = d["crop"], d["scale"], d["flip"]
        self.source_ds = TrainCrops(source_items, crop, scale, flip, resize=d["source_resize"])
        self.target_ds = TrainCrops(target_items, crop, scale, flip, resize=d["target_resize"])

    def payload(self, iteration: int) -> dict:
        return {"stage": STAGE, "method": "cyclegan", "iteration": iteration, **self.core.state(),
                "generator_spec": self.core.nets.g_st.spec, "discriminator_spec": self.core.nets.d_t.spec,
                "rng": rng_state(), "config": self.cfg, "provenance": provenance()}

    def save(self, iteration: int) -> None:
        save_checkpoint(self.out / "last.pt", self.payload(iteration))

    def streams(self):
        return {"source": self.stream(self.source_ds, 0), "target": self.stream(self.target_ds, 1)}

    def in_update(self):
        return self.core.in_update

    def info(self, logs):
        return f"G {logs['loss_g']:.3f} D {logs['loss_d']:.3f}"

    def iteration(self, it, batch, stop):
        xs, ys, xt = batch["source"]["image"], batch["source"]["label"], batch["target"]["image"]
        lr = self.core.set_lr(it, self.iters)
        try:
            logs = self.core.step(xs, ys, xt)
        except DataError as e:
            raise DataError(f"{e} at iteration {it}; last good checkpoint: {self.out / 'last.pt'}") from None
        return lr, logs, stop.signal is not None


def _items(root: Path, split: str, need_labels: bool, what: str):
    ds = PreparedDataset(root)
    if need_labels and not ds.has_labels(split):
        raise DataError(f"{what} {ds.root} split '{split}' has no labels; the semantic-edge loss needs them "
                        "(or set loss.edge_weight=0)")
    items = ds.items(split)
    if not items:
        raise DataError(f"{what} {ds.root} split '{split}' holds no images")
    if not need_labels:
        items = [(i, p, None) for i, p, _ in items]
    return items


def run_train_translator(*, config: str, source: Path, target: Path, out: Path, overrides=(), iters=None,
                         resume=False, force=False) -> dict:
    cfg = resolve_translator_config(config, list(overrides), iters)
    if D.info().world_size > 1:
        raise UsageError("train-translator runs in one process (start it without torchrun)")
    d = cfg["data"]
    source_items = _items(source, str(d["source_split"]), float(cfg["loss"]["edge_weight"]) > 0, "source")
    target_items = _items(target, str(d["target_split"]), False, "target")  # target labels never reach training
    device = resolve_device(cfg["train"]["device"])
    try:
        resume_ckpt = start_run(out, cfg, resume, force, stage=STAGE)
        seed_everything(int(cfg["seed"]))
        trainer = TranslatorTrainer(cfg, source_items, target_items, out, device, resume_ckpt)
        return trainer.fit()
    finally:
        RunLock.release_folder(out)
