"""Multi-process runs under ``torchrun``: process group set-up, rank queries, gradient averaging.

``torchrun --nproc_per_node=N -m segadapt warmup|self-train|pseudo-label|evaluate ...`` sets RANK,
WORLD_SIZE and LOCAL_RANK; ``init_from_env`` then joins the group (nccl on GPUs, gloo on CPU). A
single-process run never touches torch.distributed, and every helper here is a no-op in it.

Over several nodes (``torchrun --nnodes=M``) RANK counts processes over all nodes and LOCAL_RANK on
this node: the GPU is chosen by LOCAL_RANK (``local_cuda_device``), everything else by the global rank
(``info().rank``: data shards, per-rank seeds, rank 0 alone writes into the output folder, which must
be on a file system every node sees). GROUP_RANK (the node's index) and LOCAL_WORLD_SIZE are not
needed: nothing here depends on which node a process runs on.

Training averages gradients with one coalesced all-reduce per step instead of wrapping the model in
``DistributedDataParallel``: methods run the student several times per step (clean, mixed and
augmented views) and own extra trainable modules (projection heads), which DDP's reducer only
allows with ``find_unused_parameters``/``static_graph`` caveats and a ``module.`` prefix in every
checkpoint. The averaged gradient is the same; what is lost is DDP's overlap of communication with
the backward pass (a few ms per step for a ResNet-101 on NVLink).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from segadapt.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank())
    return DistInfo()


def local_rank() -> int:
    """This process's index on its own node (torchrun's LOCAL_RANK; 0 outside torchrun)."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError(f"LOCAL_RANK={os.environ['LOCAL_RANK']!r} is not a number") from None


def local_cuda_device() -> torch.device:
    """The GPU of this process: number LOCAL_RANK of its node (not RANK: on the second node of a
    2 x 8 GPU job, RANK 8 runs on that node's GPU 0). A clear error where torchrun starts more
    processes on a node than it has GPUs, instead of CUDA's 'invalid device ordinal' mid-start."""
    lr, n = local_rank(), torch.cuda.device_count()
    if lr >= n:
        raise UsageError(f"LOCAL_RANK={lr} but this node has {n} GPU(s): start torchrun with "
                         f"--nproc_per_node={n} or fewer")
    return torch.device("cuda", lr)


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def init_from_env(timeout_s: int = 1800) -> DistInfo:
    """Join the process group torchrun describes; a no-op for a plain single-process run."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return info()
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed support")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_cuda_device())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return info()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _reduce_device(t: torch.Tensor) -> torch.Tensor:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors only
    if dist.get_backend() == "nccl":
        return t.cuda() if t.device.type != "cuda" else t
    return t.cpu() if t.device.type != "cpu" else t


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average tensors over ranks in place, with one flat all-reduce (fewer, larger messages)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not tensors:
        return
    flat = _reduce_device(torch.cat([t.reshape(-1).float() for t in tensors]))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t).to(t.device, t.dtype))
        offset += n


def average_gradients(params) -> None:
    """Average .grad over ranks (parameters without a gradient on every rank count as zero)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:  # every rank must send the same layout
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_mean_([p.grad for p in params])


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable object on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's module."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for t in list(module.state_dict().values()):
        if not isinstance(t, torch.Tensor):
            continue
        buf = _reduce_device(t.detach().clone())
        dist.broadcast(buf, src=src)
        t.copy_(buf.to(t.device))


def reduce_loss_and_flag(loss: torch.Tensor, flag: bool) -> tuple[torch.Tensor, bool]:
    """(mean loss over ranks, flag set on any rank) with one all-reduce."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss.detach(), flag
    t = _reduce_device(torch.stack([loss.detach().float().reshape(()),
                                    torch.tensor(1.0 if flag else 0.0, device=loss.device)]))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t[0] / dist.get_world_size(), bool(t[1].item() > 0)


def shard(items: list) -> list:
    """This rank's share of a list: every world_size-th item from position rank."""
    d = info()
    return items[d.rank::d.world_size]
