"""Data parallelism with ``torch.distributed``: the few lines a trainer needs to run under torchrun.

Launch N processes with ``torchrun --nproc-per-node N …``; each reads its rank from the
environment torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``). Backend: NCCL on CUDA, gloo on CPU. A single process with none of these
variables runs unchanged (world size 1, no process group).

DDP averages gradients over ranks. That equals the single-process gradient of the global batch
only when every rank's loss is a mean over the same number of elements; masked (token-mean)
losses need the global count, see :func:`global_masked_mean`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "init_distributed", "wrap_ddp", "unwrap", "global_masked_mean", "cleanup"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process).

    Args:
        device: ``"cuda"``, ``"cpu"`` or ``"auto"`` (CUDA when available). With CUDA each
            process takes ``cuda:LOCAL_RANK``.
        backend: ``"nccl"`` or ``"gloo"``; default NCCL for CUDA, gloo for CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device: expected 'cuda', 'cpu' or 'auto', got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but torch.cuda.is_available() is False")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when there is more than one process."""
    model = model.to(info.device)
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP/compiled wrapper: call ``generate`` and ``save_pretrained`` on this.

    ``DistributedDataParallel`` only forwards ``forward``; ``ddp_model.generate(...)`` raises
    ``AttributeError`` (seed erratum 11).
    """
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def global_masked_mean(x: torch.Tensor, mask: torch.Tensor, world_size: int | None = None) -> torch.Tensor:
    """Masked mean over the kept elements of *all* ranks, scaled so DDP's gradient average is exact.

    Each rank returns ``world_size · sum(x·mask) / global_count``; DDP then divides the summed
    gradients by ``world_size``, which leaves ``∇ sum_all(x·mask) / global_count`` — the
    single-process gradient of the global batch, whatever each rank's own count is.
    """
    if x.shape != mask.shape:
        raise ValueError(f"mask: shape {tuple(mask.shape)} does not match x {tuple(x.shape)}")
    keep = mask.bool()
    local_sum = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()
    count = keep.sum().to(torch.float64)
    ws = world_size if world_size is not None else (dist.get_world_size() if dist.is_initialized() else 1)
    if dist.is_initialized():
        dist.all_reduce(count)
    if count.item() == 0:
        raise ValueError("mask: no kept element on any rank")
    return local_sum * ws / count.to(x.dtype)


def cleanup() -> None:
    """Leave the process group (safe to call when none was started)."""
    if dist.is_initialized():
        dist.destroy_process_group()
