"""Stage orchestration between the CLI and the engine: resolve the config, open the data, check that
checkpoints, data and pseudo-labels fit together, build the method, hand it to the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segadapt import config as C
from segadapt.console import log
from segadapt.data.labelspace import IGNORE, class_map_lut
from segadapt.data.prepared import PreparedDataset
from segadapt.data.pseudo_labels import PseudoLabelFolder
from segadapt.engine import distributed as D
from segadapt.engine.checkpoint import RunLock, file_sha256
from segadapt.engine.device import resolve_device
from segadapt.engine.inference import load_model
from segadapt.engine.runlog import check_log_config
from segadapt.engine.trainer import Trainer, check_resume_config, load_resume, prepare_run_dir, seed_everything
from segadapt.errors import DataError, SegadaptError, UsageError
from segadapt.methods import method_class
from segadapt.models import model_signature
from segadapt.models.segmenter import build_segmenter


def resolve_train_config(config: str, overrides: list[str], method: str | None, iters: int | None,
                         stage: str) -> dict:
    cfg = C.apply_overrides(C.load_config(config), overrides)
    if method is not None:
        cfg["method"] = method
    if iters is not None:
        if iters <= 0:
            raise UsageError(f"--iters must be positive, got {iters}")
        cfg.setdefault("optim", {})["iters"] = iters
    for key in ("seed", "method", "model", "data", "optim", "train"):
        C.require(cfg, key)
    name = cfg["method"]
    method_class(stage, name)  # an unknown method is named before its missing config section
    if not isinstance(cfg.get(name), dict):
        raise UsageError(f"config has no settings section for method '{name}' (add a '{name}:' section)")
    check_log_config(cfg)
    return cfg


class SourceData:
    """The labelled source as training sees it: in the training label space (the target's when a
    ``data.source_label_map`` maps source classes onto target classes)."""

    def __init__(self, src: PreparedDataset, tgt: PreparedDataset | None, cfg: dict):
        # 'train+val' trains on the union of splits (e.g. every labelled day frame of CamVid)
        self.dataset, self.splits = src, [s.strip() for s in str(cfg["data"]["source_split"]).split("+")]
        for split in self.splits:
            if not src.has_labels(split):
                raise DataError(f"source {src.root} split '{split}' has no labels to train on")
        mapping = cfg["data"].get("source_label_map")
        self.label_space, self.lut = src.label_space, None
        if mapping:
            if tgt is None:
                raise UsageError("data.source_label_map maps source classes onto the target's: pass --target")
            self.lut = class_map_lut(src.label_space, tgt.label_space, mapping)
            self.label_space = tgt.label_space
        elif tgt is not None and tgt.label_space.classes != src.label_space.classes:
            raise DataError(f"source label space '{src.label_space.name}' differs from target "
                            f"'{tgt.label_space.name}'; give data.source_label_map (source class -> target class "
                            "or null) or prepare both in one label space")

    def items(self):
        return [it for split in self.splits for it in self.dataset.items(split)]

    def class_counts(self, cfg: dict):
        """Per-image counts in the training label space, only when rare-class sampling needs them."""
        if not (cfg["data"].get("rare_class_sampling") or {}).get("enabled"):
            return None
        counts = np.concatenate([self.dataset.class_counts(split) for split in self.splits])
        if self.lut is None:
            return counts
        out = np.zeros((counts.shape[0], self.label_space.num_classes), np.int64)
        for c in range(counts.shape[1]):
            if self.lut[c] != IGNORE:
                out[:, self.lut[c]] += counts[:, c]
        return out


def _open_pair(source: Path, target: Path | None, cfg: dict):
    src = PreparedDataset(source)
    tgt = PreparedDataset(target) if target is not None else None
    return SourceData(src, tgt, cfg), tgt


def _target_items(tgt, cfg):
    if tgt is None:
        return None
    return [(i, p, None) for i, p, _ in tgt.items(cfg["data"]["target_split"])]  # target labels never reach training


def _start(out: Path, cfg: dict, resume: bool, force: bool):
    """Lock and check the run folder on rank 0, then load the checkpoint to resume on every rank."""
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
        check_resume_config(ckpt, cfg, out)
        log(f"resuming {out} at iteration {ckpt['iteration']}")
    elif resume:
        log(f"nothing to resume in {out}; starting from iteration 0")
    return ckpt


def _sync_bn(student, cfg: dict, device):
    """BatchNorm over the global batch when asked for and several GPUs train together."""
    if not cfg["train"].get("sync_bn") or D.info().world_size == 1:
        return student
    if device.type != "cuda":
        raise UsageError("train.sync_bn needs CUDA GPUs (torch's SyncBatchNorm does not run on CPU)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)


def run_warmup(*, config: str, source: Path, target: Path | None, out: Path, overrides=(), method=None, iters=None,
               resume=False, force=False) -> dict:
    cfg = resolve_train_config(config, list(overrides), method, iters, "warmup")
    src, tgt = _open_pair(source, target, cfg)
    resume_ckpt = _start(out, cfg, resume, force)
    try:
        return _warmup(cfg, src, tgt, out, resume_ckpt)
    finally:
        RunLock.release_folder(out)


def _warmup(cfg, src, tgt, out, resume_ckpt) -> dict:
    seed_everything(int(cfg["seed"]))
    device = resolve_device(cfg["train"].get("device", "auto"))
    label_space = src.label_space
    student = _sync_bn(build_segmenter(cfg["model"], label_space.num_classes), cfg, device)
    method_obj = method_class("warmup", cfg["method"])(cfg[cfg["method"]], student, label_space.num_classes)
    if method_obj.target_batches is not None and tgt is None:
        raise UsageError(f"warm-up method '{cfg['method']}' needs target images: pass --target")
    trainer = Trainer(cfg=cfg, method=method_obj, label_space=label_space,
                      source_items=src.items(), target_items=_target_items(tgt, cfg),
                      out=out, device=device, resume_ckpt=resume_ckpt,
                      source_counts=src.class_counts(cfg), source_label_lut=src.lut)
    return trainer.fit()


def run_self_train(*, config: str, ckpt: Path, pseudo_labels: Path, source: Path, target: Path, out: Path,
                   overrides=(), method=None, iters=None, resume=False, force=False,
                   allow_other_checkpoint=False) -> dict:
    cfg = resolve_train_config(config, list(overrides), method, iters, "self-train")
    src, tgt = _open_pair(source, target, cfg)
    if tgt is None:
        raise UsageError("self-training needs --target")
    device = resolve_device(cfg["train"].get("device", "auto"))
    weights = cfg["train"].get("init_weights", "student")
    init_model, init_ls, init_ckpt = load_model(ckpt, weights, torch.device("cpu"))
    if init_ls.classes != src.label_space.classes:
        raise DataError(f"checkpoint {ckpt} was trained on label space '{init_ls.name}', the data is "
                        f"'{src.label_space.name}'")
    if "model" in cfg and model_signature(cfg["model"] | {"num_classes": init_ls.num_classes}) != \
            model_signature(init_ckpt["model_spec"]):
        log("note: the config's model section differs from the checkpoint's; the checkpoint's architecture is used")
    cfg["model"] = {**init_ckpt["model_spec"], "pretrained": None}  # weights come from the checkpoint
    cfg["model"].pop("num_classes", None)
    tsplit = cfg["data"]["target_split"]
    folder = PseudoLabelFolder.open(pseudo_labels, tgt, tsplit)
    manifest = folder.manifest()
    sha = file_sha256(ckpt)
    if manifest.get("checkpoint_sha256") != sha and not allow_other_checkpoint:
        raise DataError(f"pseudo-labels in {pseudo_labels} were made by another checkpoint ({manifest.get('checkpoint')}); "
                        "pass --allow-other-checkpoint if that is intended")
    resume_ckpt = _start(out, cfg, resume, force)
    try:
        return _self_train(cfg, src, tgt, out, resume_ckpt, device, init_model, init_ls, ckpt, sha, folder, tsplit)
    finally:
        RunLock.release_folder(out)


def _self_train(cfg, src, tgt, out, resume_ckpt, device, init_model, init_ls, ckpt, sha, folder, tsplit) -> dict:
    seed_everything(int(cfg["seed"]))
    student = build_segmenter(cfg["model"], init_ls.num_classes)
    student.load_state_dict(init_model.state_dict())
    student = _sync_bn(student, cfg, device)
    method_obj = method_class("self-train", cfg["method"])(cfg[cfg["method"]], student, init_ls.num_classes)
    method_obj.use_pseudo_labels(folder)  # what the method takes from the folder (prototypes, statistics)
    # methods that threshold pseudo-labels read each crop's confidence next to its pseudo-label
    target_items = folder.items(tgt.items(tsplit), with_confidence=method_obj.needs_confidence)
    trainer = Trainer(cfg=cfg, method=method_obj, label_space=src.label_space,
                      source_items=src.items(), target_items=target_items,
                      out=out, device=device, resume_ckpt=resume_ckpt,
                      source_counts=src.class_counts(cfg), source_label_lut=src.lut,
                      extra_ckpt={"init_checkpoint": str(Path(ckpt).resolve()), "init_checkpoint_sha256": sha,
                                  "pseudo_labels": str(folder.root.resolve())})
    return trainer.fit()
