"""Stage orchestration between the CLI and the engine: resolve the config, open the data, check that
checkpoints, data and pseudo-labels fit together, build the method, hand it to the engine."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from segadapt import config as C
from segadapt import schema
from segadapt.console import log
from segadapt.data.labelspace import IGNORE, class_map_lut
from segadapt.data.prepared import PreparedDataset
from segadapt.data.pseudo_labels import PseudoLabelFolder
from segadapt.engine import distributed as D
from segadapt.engine.checkpoint import RunLock, file_sha256
from segadapt.engine.device import resolve_device
from segadapt.engine.inference import load_model
from segadapt.engine.runlog import check_log_config
from segadapt.engine.trainer import Trainer, seed_everything, start_run
from segadapt.errors import DataError, SegadaptError, UsageError
from segadapt.methods import STAGES, method_class
from segadapt.models import model_signature, resolve_spec
from segadapt.models.segmenter import build_segmenter


def resolve_train_config(config: str, overrides: list[str], method: str | None, iters: int | None,
                         stage: str) -> dict:
    raw = C.load_config(config)
    cfg = C.apply_overrides(raw, overrides, settable=settable_keys(stage))
    if method is not None:
        cfg["method"] = method
    C.set_iters(cfg, iters)
    for key in ("seed", "method", "model", "data", "optim", "train"):
        C.require(cfg, key)
    method_class(stage, cfg["method"])  # an unknown method is named before its settings are checked
    cfg = validate_train_config(cfg, stage)
    check_log_config(cfg)
    return cfg


def _section_classes(stage: str) -> dict:
    """{method name: its config dataclass}: this stage's methods, then the other stage's (a config may
    carry the section of a method of the other stage, e.g. a self-train file based on a warm-up one)."""
    other = [s for s in STAGES if s != stage]
    out = {}
    for s in [stage, *other]:
        for name, cls in STAGES[s].items():
            out.setdefault(name, cls.config_class)
    return out


def config_sections(cfg: dict, stage: str) -> dict:
    """{top-level key: its section dataclass (or its doc line)} for the keys of ``cfg``: what validates,
    and documents in RUN/config.yaml, each part of a training config."""
    from segadapt.engine.run_config import ENGINE_SECTIONS, TOP_LEVEL_DOCS

    methods = _section_classes(stage)
    if cfg.get("method") in STAGES[stage]:
        methods[cfg["method"]] = method_class(stage, cfg["method"]).config_class
    return {**TOP_LEVEL_DOCS, **ENGINE_SECTIONS, **{k: methods[k] for k in cfg if k in methods}}


def settable_keys(stage: str) -> set:
    """Dotted keys ``--set`` may set even when the YAML omits them: every key of the typed sections."""
    from segadapt.engine.run_config import ENGINE_SECTIONS

    return schema.settable_keys({**ENGINE_SECTIONS, **_section_classes(stage)}) | {"method"}


def validate_train_config(cfg: dict, stage: str) -> dict:
    """The one check of a whole training config (after `base:` merging and `--set`): every engine
    section and every method section present (not only the selected method's) parsed by its typed
    dataclass, the model section by its architecture's spec, unknown top-level keys refused. Returns the
    complete config: every field, defaults filled in (what RUN/config.yaml and the checkpoint record)."""
    from segadapt.engine.run_config import ENGINE_SECTIONS, TOP_LEVEL_DOCS

    sections = config_sections(cfg, stage)
    schema.check_top_level(cfg, [*TOP_LEVEL_DOCS, *ENGINE_SECTIONS, *_section_classes(stage)])
    out = {}
    for key, value in cfg.items():
        cls = sections.get(key)
        if key == "model":
            if not isinstance(value, dict):
                raise UsageError(f"config 'model' must be a section, got {value!r}")
            resolve_spec(value)  # unknown keys and bad values per architecture
            out[key] = value
        elif isinstance(cls, type):
            out[key] = schema.to_dict(schema.parse(cls, value, key))
        else:
            out[key] = value
    for key, cls in ENGINE_SECTIONS.items():  # a section the YAML leaves out gets its defaults
        if key not in out:
            out[key] = schema.to_dict(schema.parse(cls, {}, key))
    name = cfg["method"]
    if name not in out:
        out[name] = schema.to_dict(schema.parse(method_class(stage, name).config_class, {}, name))
    return out


def stored_config_upgrade(stage: str):
    """For resuming: a run's stored config in today's terms, so that a run started by an older segadapt
    (sizes as ``data.source_size``/``target_size`` [W, H], no defaults filled in, an ``eval:`` section
    nothing read) resumes when its settings are the same; anything else is compared as it is."""
    def upgrade(old: dict) -> dict:
        cfg = copy.deepcopy({k: v for k, v in old.items() if k != "provenance"})
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        for side in ("source", "target"):
            if f"{side}_size" in data:
                wh = data.pop(f"{side}_size")
                data[f"{side}_resize"] = None if wh is None else [wh[1], wh[0]]
        cfg.pop("eval", None)
        try:
            return validate_train_config(cfg, stage)
        except SegadaptError:
            return old
    return upgrade


class SourceData:
    """The labelled source as training sees it: in the training label space (the target's when a
    ``data.source_label_map`` maps source classes onto target classes)."""

    def __init__(self, src: PreparedDataset, tgt: PreparedDataset | None, cfg: dict):
        # 'train+val' trains on the union of splits (e.g. every labelled day frame of CamVid)
        self.dataset, self.splits = src, [s.strip() for s in str(cfg["data"]["source_split"]).split("+")]
        for split in self.splits:
            if not src.has_labels(split):
                raise DataError(f"source {src.root} split '{split}' has no labels to train on")
        mapping = cfg["data"]["source_label_map"]
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
        if not cfg["data"]["rare_class_sampling"]["enabled"]:
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


def _sync_bn(student, cfg: dict, device):
    """BatchNorm over the global batch when asked for and several GPUs train together."""
    if not cfg["train"]["sync_bn"] or D.info().world_size == 1:
        return student
    if device.type != "cuda":
        raise UsageError("train.sync_bn needs CUDA GPUs (torch's SyncBatchNorm does not run on CPU)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)


def run_warmup(*, config: str, source: Path, target: Path | None, out: Path, overrides=(), method=None, iters=None,
               resume=False, force=False) -> dict:
    cfg = resolve_train_config(config, list(overrides), method, iters, "warmup")
    src, tgt = _open_pair(source, target, cfg)
    resume_ckpt = start_run(out, cfg, resume, force, upgrade=stored_config_upgrade("warmup"))
    try:
        return _warmup(cfg, src, tgt, out, resume_ckpt)
    finally:
        RunLock.release_folder(out)


def _warmup(cfg, src, tgt, out, resume_ckpt) -> dict:
    seed_everything(int(cfg["seed"]))
    device = resolve_device(cfg["train"]["device"])
    label_space = src.label_space
    student = _sync_bn(build_segmenter(cfg["model"], label_space.num_classes), cfg, device)
    method_obj = method_class("warmup", cfg["method"])(cfg[cfg["method"]], student, label_space.num_classes)
    if method_obj.target_batches is not None and tgt is None:
        raise UsageError(f"warm-up method '{cfg['method']}' needs target images: pass --target")
    trainer = Trainer(cfg=cfg, method=method_obj, label_space=label_space,
                      source_items=src.items(), target_items=_target_items(tgt, cfg),
                      out=out, device=device, resume_ckpt=resume_ckpt,
                      source_counts=src.class_counts(cfg), source_label_lut=src.lut,
                      config_docs=config_sections(cfg, "warmup"))
    return trainer.fit()


def run_self_train(*, config: str, ckpt: Path, pseudo_labels: Path, source: Path, target: Path, out: Path,
                   overrides=(), method=None, iters=None, resume=False, force=False,
                   allow_other_checkpoint=False) -> dict:
    cfg = resolve_train_config(config, list(overrides), method, iters, "self-train")
    src, tgt = _open_pair(source, target, cfg)
    if tgt is None:
        raise UsageError("self-training needs --target")
    device = resolve_device(cfg["train"]["device"])
    weights = cfg["train"]["init_weights"]
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
    resume_ckpt = start_run(out, cfg, resume, force, upgrade=stored_config_upgrade("self-train"))
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
                                  "pseudo_labels": str(folder.root.resolve())},
                      config_docs=config_sections(cfg, "self-train"))
    return trainer.fit()
