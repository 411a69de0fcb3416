"""Device, mixed precision and memory-format choices: AMP and channels_last on CUDA, plain fp32 on CPU."""

from __future__ import annotations

import contextlib

import torch

from segadapt.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            from segadapt.engine.distributed import local_cuda_device

            return local_cuda_device()  # under torchrun: this node's GPU LOCAL_RANK
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


def compile_modules(modules, setting, device: torch.device, backend: str = "inductor") -> str:
    """``train.compile``: false (default), true (torch.compile the networks' forward on CUDA; skipped on
    the CPU, where the reduce-overhead gains are small and inductor needs a C++ compiler) or 'force'
    (compile on any device; used to check on the CPU that compiling changes no loss). ``backend``
    (``train.compile_backend``): torch.compile's backend, inductor (generated kernels) or aot_eager
    (graph capture and autograd tracing without code generation: the usual first step when a compiled
    run misbehaves).

    Modules are compiled in place (``nn.Module.compile``), so state-dict keys, EMA updates and
    checkpoints are those of the plain modules. Returns what was done, one line, for the run's
    config.yaml: 'off', 'on', or 'off (why)' when compile was asked for but is unavailable."""
    if setting in (False, None, "false", "off"):
        return "off"
    if setting not in (True, "true", "on", "force"):
        raise UsageError(f"train.compile must be false, true or force, got {setting!r}")
    if device.type != "cuda" and setting != "force":
        return "off (torch.compile is used on CUDA only; set train.compile=force to compile on the CPU)"
    if backend not in ("inductor", "aot_eager", "eager"):
        raise UsageError(f"train.compile_backend must be inductor, aot_eager or eager, got {backend!r}")
    why = _compile_unavailable(device) if backend == "inductor" else None
    if why:
        from segadapt.console import log

        log(f"warning: train.compile asked for but unavailable ({why}); training uncompiled")
        return f"off ({why})"
    for m in modules:
        m.compile(backend=backend)
    return "on" if backend == "inductor" else f"on ({backend})"


def _compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None. Checked up front so that a missing compiler is a
    warning at start-up, not a failure at the first forward pass."""
    import shutil

    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return "torch.compile does not support this Python/platform"
    except Exception as e:  # noqa: BLE001 - any import problem means: not available
        return f"torch._dynamo cannot be imported: {e}"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "triton is not installed"
        if not has_triton():
            return "triton is not installed or does not support this GPU"
    elif not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "no C++ compiler for inductor's CPU code"
    return None
