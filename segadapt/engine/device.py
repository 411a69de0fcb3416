"""Device, mixed precision and memory-format choices: AMP and channels_last on CUDA, plain fp32 on CPU."""

from __future__ import annotations

import contextlib

import torch

from segadapt.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            import os

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' asked for but no CUDA GPU is available")
    return dev


def amp_dtype(setting: str, device: torch.device):
    """'auto' -> bf16 on CUDA GPUs that support it (else fp16), none on CPU; 'off'/'bf16'/'fp16' explicit."""
    setting = str(setting).lower()
    if setting in ("off", "false", "none", "fp32"):
        return None
    if device.type != "cuda":
        return None if setting == "auto" else torch.bfloat16
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting in ("bf16", "bfloat16"):
        return torch.bfloat16
    if setting in ("fp16", "float16", "half"):
        return torch.float16
    raise UsageError(f"unknown amp setting '{setting}' (auto, off, bf16, fp16)")


def autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(setting, device: torch.device) -> bool:
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)
