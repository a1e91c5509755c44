"""Data parallelism with ``torch.distributed``: the few lines a trainer needs to run under torchrun.

Launch N processes with ``torchrun --nproc-per-node N …`` (add ``--nnodes M --node-rank i
--rdzv-endpoint HOST:PORT`` for several machines); each reads its rank from the environment
torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
Backend: NCCL on CUDA, gloo on CPU. A single process with none of these variables runs
unchanged (world size 1, no process group), and every helper below is then the plain
single-process computation.

§8 in one rule: *every statistic that decides the update is global.* DDP averages gradients
over ranks. That equals the single-process gradient of the global batch only when every rank's
loss is a mean over the same number of elements; masked (token-mean) losses need the global
count (:func:`global_masked_mean`, :func:`token_mean_scale`), and the advantage whitening, the
score normalisation, the KL controller's measured KL and the early stop on approximate KL are
all-reduced (:func:`global_masked_whiten`, :func:`global_mean`, :func:`global_early_stop`), so N
ranks train exactly as one process on the same global batch and never disagree on a decision.

Sharding: DDP (:func:`wrap_model`) keeps a full copy of the model on every rank; FSDP2
(``torch.distributed.fsdp.fully_shard``, ``fsdp=True``) keeps 1/N of every parameter, gradient
and Adam moment per rank and all-gathers a layer's weights just before it runs. Both reduce
gradients in ``backward``, so the training forward must go through the wrapper; generation
runs on the unwrapped module (:func:`generation_model`, errata 11).

Shapes: B sequences, T response tokens; masks are bool ``[B, T]`` (True = counted).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ppo_lab.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from ppo_lab.core import masked_mean, masked_whiten

__all__ = [
    "DistInfo", "ForwardWith", "MicroBatchSizes", "all_reduce_stats", "cleanup",
    "derive_micro_batch_sizes", "find_checkpoint", "full_state_dict", "generation_model",
    "global_early_stop", "global_masked_mean", "global_masked_whiten", "global_mean",
    "global_mean_var", "init_distributed", "is_fsdp", "is_main_process",
    "load_distributed_checkpoint", "print_main", "rank_seed", "reduce_device",
    "save_distributed_checkpoint", "shard", "token_mean_scale", "unwrap", "world_size", "wrap_ddp",
    "wrap_fsdp", "wrap_model",
]


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
    """Join the process group torchrun describes in the environment (no-op for one plain process).

    A process started by torchrun joins the group even when ``WORLD_SIZE`` is 1, so FSDP2 (which
    needs a group) also runs on one device.

    Args:
        device: ``"cuda"``, ``"cuda:N"``, ``"cpu"`` or ``"auto"`` (CUDA when available). Under
            torchrun each process takes ``cuda:LOCAL_RANK``; a plain process keeps ``cuda:N``.
        backend: ``"nccl"`` or ``"gloo"``; default NCCL for CUDA, gloo for CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    launched = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = str(device).split(":")[0]
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"device: expected 'cuda', 'cuda:N', 'cpu' or 'auto', got {device!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested but torch.cuda.is_available() is False")
        dev = torch.device("cuda", local_rank) if launched or device == "cuda" else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if launched and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def cleanup() -> None:
    """Leave the process group (safe to call when none was started)."""
    if dist.is_initialized():
        dist.destroy_process_group()


# --- seeding, sharding, rank-0 output ----------------------------------------------------------


def rank_seed(seed: int, rank: int) -> int:
    """The seed rank ``rank`` uses for its sampling: ``seed + 1_000_003 · rank``.

    Each rank draws different samples (the same seed on every rank would generate the same
    responses N times), and the run is reproducible: rank r's stream depends only on (seed, r).
    Rank 0 keeps ``seed`` itself, so a one-process run is unchanged.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank: expected an integer >= 0, got {rank!r}")
    return seed + 1_000_003 * rank


def shard(items, info: DistInfo, name: str = "batch_size"):
    """Rank ``info.rank``'s contiguous block of a global batch (a list or a tensor on dim 0).

    Rank r takes ``items[r·n/N : (r+1)·n/N]``, so the ranks' blocks concatenated in rank order are
    the global batch — which is what lets a test compare N ranks with one process. ``n`` must be
    divisible by N (otherwise ranks would hold different numbers of prompts): a ``ValueError``
    naming ``name``, the config field that sets ``n``.
    """
    n = len(items)
    if n % info.world_size:
        raise ValueError(f"{name}: {n} is not divisible by the number of processes "
                         f"(world size {info.world_size}, torchrun --nproc-per-node × --nnodes)")
    per_rank = n // info.world_size
    return items[info.rank * per_rank : (info.rank + 1) * per_rank]


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files and prints reports."""
    return not dist.is_initialized() or dist.get_rank() == 0


def print_main(info: DistInfo, *args, **kwargs) -> None:
    """``print`` on rank 0 only (N ranks printing the same line N times helps no one)."""
    if info.is_main:
        print(*args, **kwargs)


# --- batch sizes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MicroBatchSizes:
    """Per-rank sizes derived from the global ``batch_size`` and ``minibatch_size`` (§8)."""

    batch_size: int
    """Sequences per rollout, all ranks together (global)."""
    minibatch_size: int
    """Sequences per optimiser step, all ranks together (global)."""
    local_batch_size: int
    """Sequences each rank generates per rollout: ``batch_size / world_size``."""
    local_minibatch_size: int
    """Sequences each rank contributes to one optimiser step: ``minibatch_size / world_size``."""
    micro_batch_size: int
    """Sequences per forward/backward: ``minibatch_size / (world_size · grad_accum_steps)``."""
    num_minibatches: int
    """Optimiser steps per epoch: ``batch_size / minibatch_size``."""


def derive_micro_batch_sizes(*, batch_size: int, minibatch_size: int, world_size: int,
                             grad_accum_steps: int = 1) -> MicroBatchSizes:
    """§8: ``batch_size`` and ``minibatch_size`` are global; a micro-batch is
    ``minibatch_size / (world_size · grad_accum_steps)``.

    Keeping the two sizes global means changing the number of GPUs or the accumulation steps
    changes *how* an update is computed, never *which* update: the same sequences per optimiser
    step. A combination that does not divide raises a ``ValueError`` naming the flags to change.
    """
    for name, value in (("batch_size", batch_size), ("minibatch_size", minibatch_size),
                        ("world_size", world_size), ("grad_accum_steps", grad_accum_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if batch_size % minibatch_size:
        raise ValueError(f"minibatch_size: --minibatch-size {minibatch_size} does not divide "
                         f"--batch-size {batch_size}")
    per_step = world_size * grad_accum_steps
    if minibatch_size % per_step:
        raise ValueError(
            f"grad_accum_steps: --minibatch-size {minibatch_size} is not divisible by world size "
            f"{world_size} (torchrun --nproc-per-node × --nnodes) × --grad-accum-steps {grad_accum_steps}"
            f" = {per_step}; change one of the three")
    return MicroBatchSizes(
        batch_size=batch_size, minibatch_size=minibatch_size,
        local_batch_size=batch_size // world_size, local_minibatch_size=minibatch_size // world_size,
        micro_batch_size=minibatch_size // per_step, num_minibatches=batch_size // minibatch_size)


# --- global statistics ---------------------------------------------------------------------------


def reduce_device() -> torch.device:
    """Where a small tensor to all-reduce must live: this rank's GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def _sum_count(x: torch.Tensor, mask: torch.Tensor | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Local ``sum(x·mask)`` and ``count(mask)`` in float64, without gradient."""
    if mask is not None and mask.shape != x.shape:
        raise ValueError(f"mask: shape {tuple(mask.shape)} does not match {name} {tuple(x.shape)}")
    x = x.detach().double()
    if mask is None:
        return x.sum(), torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)
    keep = mask.bool()
    return torch.where(keep, x, 0.0).sum(), keep.sum().double()


def global_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of ``x`` over the kept elements of every rank: ``Σ_ranks sum / Σ_ranks count``.

    A 0-dim tensor (float64 across ranks), identical on every rank, no gradient. Uses: the KL controller's
    current KL (mean over all sequences of each one's summed KL), the mean score, the approximate
    KL for early stopping. Not the mean of the per-rank means, which weighs a rank with fewer
    tokens as much as one with more. Without a process group: the core ``masked_mean`` itself.
    """
    if world_size() == 1:
        return masked_mean(x.detach(), mask)
    total = torch.stack(_sum_count(x, mask, "x"))
    _all_reduce(total)
    if total[1].item() == 0:
        raise ValueError("mask: no kept element on any rank")
    return total[0] / total[1]


def global_mean_var(x: torch.Tensor, mask: torch.Tensor | None = None, unbiased: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Global masked mean and (Bessel-corrected) variance, float64, equal on every rank.

    Two all-reduces: [sum, count], then the sum of squared deviations from the global mean (the
    two-pass formula, as the core's ``masked_var``: no cancellation of E[x²] − E[x]²).
    """
    total = torch.stack(_sum_count(x, mask, "x"))
    _all_reduce(total)
    n = total[1].item()
    if n < 2 and unbiased:
        raise ValueError(f"mask: the unbiased variance needs at least 2 kept elements on all ranks, got {n:g}")
    mean = total[0] / total[1]
    squares, _ = _sum_count((x.detach().double() - mean).square(), mask, "x")
    _all_reduce(squares)
    return mean, squares / (n - 1 if unbiased else n)


def global_masked_whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True
                         ) -> torch.Tensor:
    """``core.masked_whiten`` with the mean and variance of the *global* batch (§7 whitening, §8).

    ``(x − μ) / sqrt(σ² + 1e-8)`` with μ, σ² from :func:`global_mean_var`; 0 where ``mask`` is
    False; ``shift_mean=False`` adds μ back (rewards, TRL's convention). Without a process group
    it *is* ``masked_whiten``. Under N ranks each rank's slice equals the slice of
    ``masked_whiten`` on the concatenated batch — per-rank whitening would not (each rank would
    centre on its own mean). Shapes: ``x``, ``mask`` alike, e.g. ``[B, T]``; result in ``x``'s dtype.
    """
    if world_size() == 1:
        return masked_whiten(x, mask, shift_mean=shift_mean)
    mean, var = global_mean_var(x, mask)
    whitened = (x.double() - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    whitened = whitened.to(x.dtype)
    return whitened if mask is None else torch.where(mask.bool(), whitened, 0)


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


def token_mean_scale(local_count: int, global_count: int, world_size: int) -> float:
    """The factor that turns a rank's token-mean loss into its share of the global token mean.

    A loss that is a mean over this rank's ``local_count`` tokens, times
    ``local_count · world_size / global_count``, is ``world_size · Σ_local / global_count``;
    DDP/FSDP divide the summed gradients by ``world_size``, and gradient accumulation adds the
    micro-steps, leaving ``∇ Σ_all / global_count`` — the token mean of the whole minibatch over
    every micro-step and rank (§8), which :func:`global_masked_mean` computes in one go.
    """
    if global_count <= 0:
        raise ValueError(f"global_count: expected > 0 kept tokens, got {global_count}")
    return local_count * world_size / global_count


def all_reduce_stats(stats: dict[str, float], weight: float = 1.0) -> dict[str, float]:
    """Log metrics averaged over ranks, each rank weighted by ``weight`` (e.g. its token count).

    One all-reduce of ``[weight·v₁, …, weight·v_k, weight]`` (keys sorted, so every rank must
    pass the same keys; ``None`` values pass through). Without a process group the stats come
    back unchanged.
    """
    if world_size() == 1:
        return dict(stats)
    keys = sorted(k for k, v in stats.items() if v is not None)
    t = torch.tensor([weight * float(stats[k]) for k in keys] + [float(weight)], dtype=torch.float64,
                     device=reduce_device())
    _all_reduce(t)
    if t[-1].item() <= 0:
        raise ValueError(f"weight: total weight over ranks is {t[-1].item()}, expected > 0")
    reduced = {k: (t[i] / t[-1]).item() for i, k in enumerate(keys)}
    return {k: reduced.get(k) for k in stats}


def global_early_stop(approx_kl: float, threshold: float | None, weight: float = 1.0) -> bool:
    """Stop the epoch loop when the token-weighted mean approximate KL over ranks exceeds
    ``threshold`` (``None``: never). Every rank returns the same answer.

    A rank that decided alone would leave the loop while the others enter the next minibatch's
    backward and wait forever in its all-reduce. The per-rank decisions, made from the same
    all-reduced value, are reduced once more with MAX, so even a last-bit difference in the mean
    cannot split the ranks.
    """
    if threshold is None:
        return False
    mean_kl = all_reduce_stats({"approx_kl": approx_kl}, weight)["approx_kl"]
    stop = torch.tensor([1.0 if mean_kl > threshold else 0.0], device=reduce_device())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    return bool(stop.item())


# --- wrapping: DDP and FSDP2 --------------------------------------------------------------------


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when there is more than one process."""
    model = model.to(info.device)
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _block_classes(model: nn.Module) -> set[str]:
    """Class names of a Hugging Face model's transformer blocks (``_no_split_modules``)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def wrap_fsdp(model: nn.Module, info: DistInfo, mp_policy=None) -> nn.Module:
    """FSDP2: ``fully_shard`` every transformer block, then the root (§8).

    Each block is one all-gather unit: its parameters are gathered just before it runs and freed
    just after, so at most one block (plus the root's embeddings and head) is whole at a time.
    The blocks are found by Hugging Face's ``_no_split_modules`` (``GPT2Block``,
    ``LlamaDecoderLayer``, …); any other module is sharded as one unit. Parameters become
    ``DTensor`` shards; ``model`` is changed in place and returned. Needs a process group
    (launch with torchrun, also for one process).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        raise ValueError("fsdp: FSDP2 needs a process group; launch with torchrun (also for one process)")
    model = model.to(info.device)
    kwargs = {"mp_policy": mp_policy or MixedPrecisionPolicy()}
    blocks = _block_classes(model)
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in blocks:
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


class ForwardWith(nn.Module):
    """``ForwardWith(model, fn)(*args) == fn(model, *args)``: a function of a model as a module's
    ``forward``, so DDP / FSDP2 can wrap it.

    A helper such as ``token_scalars(value_model, batch)`` calls the model's trunk and head
    directly; on a DDP wrapper it would fail, and on the module inside it would run without the
    gradient all-reduce. Wrapped as ``wrap_model(ForwardWith(value_model, token_scalars), …)``,
    ``wrapper(batch)`` runs it through DDP's / FSDP2's hooks.
    """

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(self.model, *args, **kwargs)


def wrap_model(model: nn.Module, info: DistInfo, *, fsdp: bool = False) -> nn.Module:
    """The one call a trainer makes: FSDP2 when ``fsdp`` (config ``--fsdp``), else DDP (which is
    the model itself for one process)."""
    return wrap_fsdp(model, info) if fsdp else wrap_ddp(model, info)


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by FSDP2's ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP/compiled wrapper: call ``generate`` and ``save_pretrained`` on this.

    ``DistributedDataParallel`` only forwards ``forward``; ``ddp_model.generate(...)`` raises
    ``AttributeError`` (errata 11). FSDP2 has no wrapper (it changes the module's class in
    place), so an FSDP2 model is its own unwrapped module.
    """
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


@contextlib.contextmanager
def generation_model(model: nn.Module) -> Iterator[nn.Module]:
    """``with generation_model(policy) as m: m.generate(...)`` — the module to sample from (§8).

    DDP: the module inside the wrapper — sampling needs no gradient all-reduce, and DDP's
    ``forward`` would also re-broadcast buffers at every token. FSDP2: all parameters unsharded
    once (``unshard()`` on every sharded module, with resharding after each forward switched off
    so the token loop does not all-gather the weights again at every step), and ``reshard()``
    afterwards to free them. Plain module: itself.
    """
    inner = unwrap(model)
    if not is_fsdp(inner):
        yield inner
        return
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in inner.modules() if isinstance(m, FSDPModule)]
    inner.set_reshard_after_forward(False)
    for m in sharded:
        m.unshard()
    try:
        yield inner
    finally:
        for m in sharded:
            m.reshard()
        inner.set_reshard_after_forward(True)


# --- checkpoints ---------------------------------------------------------------------------------


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """FSDP2: the whole ``state_dict`` gathered to rank 0's CPU (an empty dict on the other
    ranks) — a collective, so every rank calls it; ``save_pretrained(path, state_dict=…)`` on
    rank 0 then writes ordinary weights. ``None`` for a model with no sharded parameter."""
    inner = unwrap(model)
    if not _sharded(inner):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


_STATE_KEYS = ("world_size", "optimizer", "models")  # state.pt's own entries; the rest is ``extra``


def save_distributed_checkpoint(directory: str | os.PathLike, model: nn.Module | dict[str, nn.Module],
                                optimizer: torch.optim.Optimizer, info: DistInfo,
                                extra: dict[str, Any] | None = None, *,
                                generators: Sequence[torch.Generator] = ()) -> Path:
    """Save a resumable checkpoint from every rank's point of view (§8), atomically.

    ``model`` is one module or several sharing ``optimizer`` by name (``{"policy": …, "value":
    …}``; one module is named ``"model"``), each the module inside its DDP wrapper or an FSDP2
    module. Layout of ``directory``:

    - ``state.pt`` (rank 0): ``extra`` (step, schedules, config, log …) at the top level, the
      world size, and — DDP / one process — the optimiser state and the ``state_dict`` of every
      model that has no ``save_pretrained``.
    - DDP / one process: the ranks hold identical copies, so rank 0 alone writes each Hugging
      Face model with ``save_pretrained`` into ``directory/<name>`` (adapters only for a peft
      model).
    - FSDP2: ``torch.distributed.checkpoint`` (``dcp.save``) writes each rank's shards of the
      models and the optimiser in parallel into ``directory/dcp`` — no rank ever holds a whole
      model (``get_state_dict`` gives the sharded state dicts).
    - ``rng_rank{r}.pt`` (every rank): its global RNG state and the state of each of
      ``generators``, since each rank samples from its own stream (:func:`rank_seed`).

    Every rank writes into ``<directory>.tmp``; after a barrier (all files written) rank 0 renames
    it over ``directory`` (the old one renamed aside first and removed last, so a process killed
    at any instant leaves a complete checkpoint in ``directory`` or ``<directory>.old``), and a
    last barrier makes the checkpoint complete when any rank returns. Every rank calls this; on
    several nodes ``directory`` must be on a filesystem they share (as ``dcp`` itself assumes).
    """
    directory = Path(directory)
    extra = dict(extra or {})
    if clash := set(extra) & set(_STATE_KEYS):
        raise ValueError(f"extra: keys {sorted(clash)} are reserved for the checkpoint itself")
    models = model if isinstance(model, dict) else {"model": model}
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    state = {**extra, "world_size": info.world_size}
    if _sharded(*models.values()):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(_as_module(models), optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    elif info.is_main:
        state["optimizer"], state["models"] = optimizer.state_dict(), {}
        for name, m in models.items():
            inner = unwrap(m)
            if hasattr(inner, "save_pretrained"):
                inner.save_pretrained(tmp / name)
            else:
                state["models"][name] = inner.state_dict()
    if info.is_main:
        save_checkpoint(tmp / "state.pt", state)
    save_checkpoint(tmp / f"rng_rank{info.rank}.pt",
                    {"rng": get_rng_state(), "generators": [g.get_state() for g in generators]})
    _barrier()  # every rank's files are in tmp
    if info.is_main:
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return directory


def find_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint :func:`save_distributed_checkpoint` left at ``directory``: itself, or
    ``<directory>.old`` when a process was killed between the two renames; ``None`` if neither."""
    directory = Path(directory)
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / "state.pt").is_file():
            return candidate
    return None


def load_distributed_checkpoint(directory: str | os.PathLike, model: nn.Module | dict[str, nn.Module],
                                optimizer: torch.optim.Optimizer, info: DistInfo, *,
                                generators: Sequence[torch.Generator] = (),
                                check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Restore what :func:`save_distributed_checkpoint` wrote into the already wrapped
    ``model`` (the same names) and its ``optimizer`` (built the same way); sets this rank's RNG
    state and ``generators``; returns ``extra``. Every rank calls this.

    Before anything is loaded: a checkpoint written by another number of processes is a
    ``ValueError`` naming ``world_size`` (each rank's random streams and, under FSDP2, shards
    belong to one world size), and ``check(extra)`` runs (a trainer compares its config there).
    DDP / one process: every rank reads the same files (the weights were identical when saved);
    a Hugging Face model's weights are read back from ``directory/<name>`` with safetensors.
    """
    found = find_checkpoint(directory)
    if found is None:
        raise ValueError(f"directory: no checkpoint in {str(directory)!r} (state.pt missing)")
    state = load_checkpoint(found / "state.pt", map_location=info.device)
    if "world_size" not in state:
        raise ValueError(f"directory: {str(found)!r} was not written by save_distributed_checkpoint "
                         "(no world size in state.pt)")
    if state["world_size"] != info.world_size:
        raise ValueError(
            f"world_size: checkpoint {str(found)!r} was written by {state['world_size']} process(es), "
            f"this run has {info.world_size}; resume with torchrun --nproc-per-node "
            f"{state['world_size']} (times the number of nodes)")
    extra = {k: v for k, v in state.items() if k not in _STATE_KEYS}
    if check is not None:
        check(extra)
    models = model if isinstance(model, dict) else {"model": model}
    if _sharded(*models.values()):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        container = _as_module(models)
        model_sd, optim_sd = get_state_dict(container, optimizer)
        sharded = {"model": model_sd, "optim": optim_sd}
        dcp.load(sharded, checkpoint_id=str(found / "dcp"))
        set_state_dict(container, optimizer, model_state_dict=sharded["model"],
                       optim_state_dict=sharded["optim"])
    else:
        for name, m in models.items():
            inner = unwrap(m)
            if name in state["models"]:
                inner.load_state_dict(state["models"][name])
            else:
                _load_pretrained_weights(inner, found / name)
        optimizer.load_state_dict(state["optimizer"])
    rng = found / f"rng_rank{info.rank}.pt"
    if not rng.is_file():
        raise ValueError(f"directory: {str(found)!r} has no RNG state for rank {info.rank}")
    saved = load_checkpoint(rng)
    set_rng_state(saved["rng"])
    if len(saved["generators"]) != len(generators):
        raise ValueError(f"generators: the checkpoint holds {len(saved['generators'])}, "
                         f"{len(generators)} given")
    for g, g_state in zip(generators, saved["generators"]):
        g.set_state(g_state)
    return extra


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _sharded(*models: nn.Module) -> bool:
    """Whether any parameter is an FSDP2 ``DTensor`` shard."""
    return any(type(p).__name__ == "DTensor" for m in models for p in m.parameters())


def _as_module(models: dict[str, nn.Module]) -> nn.Module:
    """One module to hand ``get_state_dict``: the model itself, or the models as children of an
    ``nn.ModuleDict`` (parameter names ``policy.…``, ``value.…``) when they share an optimiser."""
    if list(models) == ["model"]:
        return unwrap(models["model"])
    return nn.ModuleDict({name: unwrap(m) for name, m in models.items()})


def _load_pretrained_weights(model: nn.Module, path: Path) -> None:
    """Load ``save_pretrained``'s safetensors back into ``model`` in place (adapters for peft)."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        return
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"directory: no *.safetensors under {str(path)!r}")
    state = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # save_pretrained drops tied weights (lm_head = embeddings): a missing key is fine when its
    # tensor shares storage with a loaded one.
    current = model.state_dict()
    loaded = {current[k].data_ptr() for k in state if k in current}
    untied = [k for k in missing if current[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise ValueError(f"directory: {str(path)!r} does not match the model "
                         f"(missing {sorted(untied)[:3]}, unexpected {sorted(unexpected)[:3]})")
