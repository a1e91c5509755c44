"""Gradient accumulation (§8): one optimiser step from K forward/backward micro-steps.

A minibatch that does not fit in memory is cut into K micro-batches; their gradients add up in
``.grad`` and the optimiser steps once. Two details make that *the same update* as one big batch:

1. **The token mean of the whole minibatch.** A PPO loss is a mean over response tokens. The
   mean of K per-micro-batch means weighs a micro-batch of short responses as much as one of
   long responses; the minibatch's token mean is Σ_all tokens / N_all. So each micro-step's
   token-mean loss is multiplied by ``n_local · world_size / N_all`` (n_local: its own kept
   tokens; N_all: kept tokens of the whole minibatch over every micro-step and rank, one
   all-reduce before the first micro-step) — ``distributed.token_mean_scale``.
2. **One gradient all-reduce per step.** DDP all-reduces in every ``backward``; inside
   ``model.no_sync()`` it only accumulates locally. So micro-steps 1…K−1 run under ``no_sync``
   and the last one syncs the sum (FSDP2: ``set_requires_gradient_sync(False)``). Same result,
   1/K of the communication.

Shapes: a micro-batch is a ``SequenceBatch`` (or any object with a ``response_mask [b, T]``, or a
dict with a ``"response_mask"`` / ``"mask"`` entry).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .distributed import all_reduce_stats, is_fsdp, reduce_device, token_mean_scale, unwrap, world_size
from .precision import Precision

__all__ = ["accumulate_gradients", "gradient_sync", "micro_batches", "token_mask"]


def token_mask(batch) -> torch.Tensor:
    """The kept-token mask of a micro-batch: ``batch.response_mask`` or ``batch["response_mask"]``
    (``batch["mask"]``)."""
    if isinstance(batch, dict):
        for key in ("response_mask", "mask"):
            if key in batch:
                return batch[key]
        raise ValueError("batch: a dict micro-batch needs a 'response_mask' or 'mask' entry")
    return batch.response_mask


def micro_batches(batch, num: int) -> list:
    """Cut a (local) minibatch into ``num`` equal contiguous micro-batches (``batch.select`` for a
    ``SequenceBatch``; for a dict, row slices of its tensors and ``select`` of its batches). ``len(batch)`` must divide by ``num``."""
    n = len(token_mask(batch))
    if isinstance(num, bool) or not isinstance(num, int) or num < 1 or n % num:
        raise ValueError(f"grad_accum_steps: {num!r} does not divide the local minibatch of {n} sequences")
    size = n // num
    parts = [slice(i * size, (i + 1) * size) for i in range(num)]
    if isinstance(batch, dict):
        return [{k: v[s] if isinstance(v, torch.Tensor) else v.select(s) for k, v in batch.items()} for s in parts]
    return [batch.select(s) for s in parts]


@contextlib.contextmanager
def gradient_sync(models, enabled: bool):
    """Inside, ``backward`` reduces gradients across ranks only when ``enabled``.

    ``models``: one module or several (the policy and a separate value model). DDP:
    ``model.no_sync()`` when not enabled. FSDP2: ``set_requires_gradient_sync``. A plain module
    (one process): nothing to do.
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    with contextlib.ExitStack() as stack:
        if not enabled:
            for model in models:
                if isinstance(model, nn.parallel.DistributedDataParallel):
                    stack.enter_context(model.no_sync())
                elif is_fsdp(unwrap(model)):
                    inner = unwrap(model)
                    inner.set_requires_gradient_sync(False)
                    stack.callback(inner.set_requires_gradient_sync, True)
        yield


def accumulate_gradients(
    models,
    batches: Sequence,
    loss_fn: Callable,
    *,
    precision: Precision | None = None,
) -> dict[str, float]:
    """§8: backward over K micro-batches whose gradients add up to the gradient of the token mean
    over the whole minibatch on every rank. The caller zeroes gradients before and steps after.

    Args:
        models: the wrapped model(s) (DDP, FSDP2 or plain) whose ``forward`` ``loss_fn`` calls.
        batches: this rank's K micro-batches (:func:`micro_batches`).
        loss_fn: ``loss_fn(micro_batch) -> (loss, stats)``, ``loss`` a float32 token mean over
            the micro-batch's own kept tokens (e.g. ``core.ppo_loss`` with
            ``mask=response_mask``); it runs under ``precision.autocast()``.
        precision: the compute dtype and fp16 loss scaler (default fp32).

    Returns the stats of the whole minibatch: each micro-step's stats weighted by its kept
    tokens, averaged over micro-steps and ranks (``all_reduce_stats``); one micro-batch on one
    process returns its stats unchanged.
    """
    if not batches:
        raise ValueError("batches: expected at least one micro-batch")
    precision = precision or Precision("fp32")
    counts = [int(token_mask(b).sum()) for b in batches]
    if min(counts) == 0:
        raise ValueError("batches: a micro-batch has no kept token (every response has at least one)")
    total = torch.tensor(float(sum(counts)), dtype=torch.float64, device=reduce_device())
    if world_size() > 1:
        torch.distributed.all_reduce(total)  # N_all: kept tokens of the minibatch, all ranks
    total_count = int(total.item())
    sums: dict[str, float] = {}
    for i, (batch, count) in enumerate(zip(batches, counts)):
        with gradient_sync(models, enabled=i == len(batches) - 1):
            with precision.autocast():
                loss, stats = loss_fn(batch)
            precision.backward(loss * token_mean_scale(count, total_count, world_size()))
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + count * float(v)
    if len(batches) == 1 and world_size() == 1:
        return dict(stats)
    local = sum(counts)
    return all_reduce_stats({k: v / local for k, v in sums.items()}, weight=local)
