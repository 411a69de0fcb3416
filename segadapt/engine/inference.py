"""Inference: whole-image or sliding-window, horizontal flip, multi-scale with max or mean fusion.

One function serves evaluation and pseudo-labelling, so both use the same protocol."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from segadapt.data.labelspace import LabelSpace
from segadapt.engine.checkpoint import load_checkpoint
from segadapt.engine.device import autocast
from segadapt.errors import DataError, UsageError
from segadapt.models.segmenter import Segmenter, build_segmenter


@dataclass
class Protocol:
    scales: list = field(default_factory=lambda: [1.0])
    flip: bool = False
    fusion: str = "max"  # how scales combine: max (DiGA's pseudo-labels) or mean
    mode: str = "whole"  # whole | slide
    crop: list | None = None  # [H, W] sliding window
    stride: list | None = None  # [H, W]

    def validate(self) -> "Protocol":
        if not self.scales or any(float(s) <= 0 for s in self.scales):
            raise UsageError(f"scales must be positive numbers, got {self.scales}")
        if self.fusion not in ("max", "mean"):
            raise UsageError(f"fusion must be max or mean, got '{self.fusion}'")
        if self.mode not in ("whole", "slide"):
            raise UsageError(f"inference mode must be whole or slide, got '{self.mode}'")
        if self.mode == "slide" and (not self.crop or not self.stride):
            raise UsageError("sliding-window inference needs crop and stride (H,W)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _forward_logits(model, x: torch.Tensor, out_hw, want_feat: bool):
    out = model(x)
    logits = F.interpolate(out["logits"].float(), size=out_hw, mode="bilinear", align_corners=False)
    return logits, (out["feat"].float() if want_feat else None)


def _slide(model, x: torch.Tensor, crop, stride, num_classes: int):
    b, _, h, w = x.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    sh, sw = stride
    acc = x.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    cnt = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    ys = list(range(0, max(h - ch, 0) + 1, sh))
    xs = list(range(0, max(w - cw, 0) + 1, sw))
    if ys[-1] + ch < h:
        ys.append(h - ch)
    if xs[-1] + cw < w:
        xs.append(w - cw)
    for y0 in ys:
        for x0 in xs:
            logits, _ = _forward_logits(model, x[:, :, y0:y0 + ch, x0:x0 + cw], (ch, cw), False)
            acc[:, :, y0:y0 + ch, x0:x0 + cw] += logits
            cnt[:, :, y0:y0 + ch, x0:x0 + cw] += 1
    return acc / cnt


@torch.no_grad()
def infer(model: Segmenter, image: torch.Tensor, protocol: Protocol, num_classes: int, want_feat: bool = False,
          amp=None, channels_last: bool = False):
    """image (B, 3, H, W) in [0, 1] -> (logits (B, C, H, W) fused over scales/flip, feat or None).

    The feature map (for prototypes) is taken at the first scale without flip."""
    h, w = image.shape[-2:]
    fused, feat = None, None
    for i, s in enumerate(protocol.scales):
        s = float(s)
        x = image if s == 1.0 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        views = [x, x.flip(-1)] if protocol.flip else [x]
        scale_logits = 0
        with autocast(image.device, amp):
            for v, view in enumerate(views):
                if protocol.mode == "slide":
                    lg = _slide(model, view, protocol.crop, protocol.stride, num_classes)
                    lg = F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False) if s != 1.0 else lg
                    f = None
                else:
                    lg, f = _forward_logits(model, view, (h, w), want_feat and i == 0 and v == 0)
                if v == 1:
                    lg = lg.flip(-1)
                scale_logits = scale_logits + lg
                if f is not None:
                    feat = f
        scale_logits = scale_logits / len(views)
        if fused is None:
            fused = scale_logits
        elif protocol.fusion == "max":
            fused = torch.maximum(fused, scale_logits)
        else:
            fused = fused + scale_logits
    if protocol.fusion == "mean":
        fused = fused / len(protocol.scales)
    if want_feat and feat is None:  # sliding mode: one whole-image pass for the features
        with autocast(image.device, amp):
            feat = model(image)["feat"].float()
    return fused, feat


def load_model(ckpt_path, weights: str = "student", device=torch.device("cpu")):
    """Build the model recorded in a checkpoint and load its student or EMA-teacher weights.

    ``weights``: 'student' (the default, as DiGA's and DAFormer's code evaluate) or 'teacher' (the EMA
    model), both in eval mode. A teacher trained with ``ema_bn: batch`` brings the running statistics its
    own train-mode forwards accumulated (as DiGA's saved teacher); one trained with ``averaged`` brings the
    averaged student statistics (see ``segadapt.engine.ema``). The choice is recorded in every result.
    ``ckpt_path`` may also be a folder written by `segadapt export --format safetensors`
    (``model.safetensors`` + ``config.json``); it holds one set of weights, the ones exported.
    Returns (model in eval mode, label space, checkpoint dict without the heavy optimiser state)."""
    if weights not in ("student", "teacher"):
        raise UsageError(f"--weights must be student or teacher, got '{weights}'")
    if Path(ckpt_path).is_dir():
        ckpt, state = _load_exported_folder(Path(ckpt_path), weights)
    else:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("stage") == "translator":
            raise DataError(f"{ckpt_path} is an image-translator checkpoint (train-translator), not a segmentation "
                            "model; give a warmup or self-train checkpoint")
        for key in ("model", "model_spec", "label_space"):
            if key not in ckpt:
                raise DataError(f"checkpoint {ckpt_path} lacks '{key}'")
        state = ckpt["model"] if weights == "student" else ckpt.get("teacher")
        if state is None:
            raise DataError(f"checkpoint {ckpt_path} has no {weights} weights")
        ckpt["weights_used"] = weights
    label_space = LabelSpace.from_dict(ckpt["label_space"])
    # the checkpoint holds every weight: never fetch the ImageNet initialisation again
    model = build_segmenter({**ckpt["model_spec"], "pretrained": None}, label_space.num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise DataError(f"checkpoint {ckpt_path} does not match its recorded model spec: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    ckpt.pop("optimizer", None)
    return model, label_space, ckpt


def _load_exported_folder(folder: Path, weights: str):
    """(checkpoint-like dict, state_dict) from a safetensors export folder (see engine/export.py)."""
    from segadapt.data.io import read_json

    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise DataError(f"{folder} is a folder but not a segadapt export (needs model.safetensors and config.json)")
    config = read_json(config_path)
    if not isinstance(config, dict) or config.get("format") != "segadapt-export":
        raise DataError(f"{config_path} is not a segadapt export config")
    for key in ("model_spec", "label_space", "weights"):
        if key not in config:
            raise DataError(f"{config_path} lacks '{key}'")
    if weights == "teacher" and config["weights"] != "teacher":
        raise DataError(f"{folder} holds the {config['weights']} weights only; export the teacher to use it")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UsageError(f"reading {folder} needs the 'safetensors' package: pip install 'segadapt[export]'") from None
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one line
        raise DataError(f"cannot read {weights_path}: {str(e).splitlines()[0][:200]}") from None
    ckpt = {**config, "model": state, "weights_used": config["weights"]}
    return ckpt, state
