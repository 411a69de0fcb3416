"""The engine's config sections (data, optim, train, log) as typed dataclasses: their defaults live
here and nowhere else; a packaged YAML states only what differs. The model section is checked per
architecture by :func:`segadapt.models.resolve_spec`, each method's section by the method's own
``config_class`` (see ``pipeline.validate_train_config``).

The engine reads the validated, complete dict (``cfg["train"]["amp"]``): it is what the checkpoint
stores and what a resumed run is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

from segadapt.schema import setting

SIZE_RENAMED = {
    "source_size": "data.source_size was [W, H]; use data.source_resize: [H, W]",
    "target_size": "data.target_size was [W, H]; use data.target_resize: [H, W]",
}


@dataclass
class RareClassSamplingConfig:
    """DAFormer's rare-class sampling: draw source images by class, P(c) = softmax((1 - f_c) / T)."""
    enabled: bool = setting(False, "draw source images by class (DAFormer RCS) instead of uniformly")
    temperature: float = setting(0.01, "T: smaller = rarer classes drawn more often", lo=0, lo_open=True)
    min_pixels: int = setting(3000, "an image counts as holding class c from this many pixels of it", lo=0)


@dataclass
class CropsConfig:
    """Random crops of both domains (what segmentation stages and the translator share)."""
    renamed = SIZE_RENAMED
    source_split: str = setting(doc="split of --source used for training (with labels)")
    target_split: str = setting(doc="split of --target used for training (images only, or pseudo-labels)")
    crop: list[int] = setting(doc="training crop [H, W]", length=2, lo=1)
    batch_size: int = setting(doc="images per iteration from each domain (the global batch)", lo=1)
    source_resize: list[int] | None = setting(None, "[H, W] every source image is resized to before augmentation "
                                              "(null = as stored)", length=2, lo=1)
    target_resize: list[int] | None = setting(None, "[H, W] the same for target images", length=2, lo=1)
    scale: list[float] = setting([1.0, 1.0], "random rescale range [min, max] before cropping", length=2, lo=0,
                                 lo_open=True)
    flip: bool = setting(True, "random horizontal flip")
    workers: int = setting(0, "data-loader processes (0 = in the main process)", lo=0)


@dataclass
class DataConfig(CropsConfig):
    source_label_map: dict | None = setting(None, "{source class: target class or null} to train a source of "
                                            "another label space")
    rare_class_sampling: RareClassSamplingConfig = setting(RareClassSamplingConfig,
                                                           "DAFormer rare-class sampling of source images")


@dataclass
class OptimConfig:
    name: str = setting(doc="optimiser", choices=("sgd", "adamw"))
    lr: float = setting(doc="backbone learning rate", lo=0)
    head_lr_mult: float = setting(doc="the head (and method heads) learn this many times faster", lo=0)
    weight_decay: float = setting(doc="weight decay", lo=0)
    iters: int = setting(doc="training iterations of the stage", lo=1)
    momentum: float = setting(0.9, "SGD momentum", lo=0, hi=1)
    betas: list[float] = setting([0.9, 0.999], "AdamW betas", length=2, lo=0, hi=1, hi_open=True)
    poly_power: float = setting(0.9, "lr = base * (1 - it / iters) ** power", lo=0)
    warmup_iters: int = setting(0, "linear warm-up of the learning rate over this many iterations", lo=0)


@dataclass
class TrainConfig:
    log_every: int = setting(10, "write a metrics.jsonl record every N iterations", lo=1)
    ckpt_every: int = setting(500, "write RUN/last.pt every N iterations (and at the end)", lo=1)
    keep_every: int = setting(0, "also keep RUN/iter_N.pt every N iterations (0 = never)", lo=0)
    amp: bool | str = setting("auto", "mixed precision: auto (bf16/fp16 on CUDA, off on CPU), off, bf16, fp16")
    channels_last: bool | str = setting("auto", "channels_last memory format: auto (on for CUDA), true, false")
    compile: bool | str = setting(False, "torch.compile student and teacher on CUDA (true), or on any device (force)")
    compile_backend: str = setting("inductor", "torch.compile backend: inductor, or aot_eager to debug")
    grad_accum: int = setting(1, "split each iteration's batch into N micro-batches (same global batch)", lo=1)
    sync_bn: bool = setting(False, "multi-GPU (torchrun): BatchNorm statistics over the global batch (CUDA only)")
    device: str = setting("auto", "auto = cuda when available, else cpu; or a torch device name")
    init_weights: str = setting("student", "self-train starts from these weights of --ckpt",
                                choices=("student", "teacher"))


@dataclass
class LogConfig:
    tensorboard: bool = setting(False, "mirror every metrics.jsonl scalar into RUN/tensorboard/ "
                                "(needs segadapt[tensorboard])")


#: top-level engine sections of a training config (the method sections come from the methods)
ENGINE_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig, "log": LogConfig}
TOP_LEVEL_DOCS = {"seed": "every random choice of the run derives from (seed, iteration)",
                  "method": "which method section trains this stage",
                  "model": "the network (checked per architecture by segadapt.models.resolve_spec)"}
