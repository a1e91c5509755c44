"""Clipping, §3: the clipped surrogate L^CLIP and value clipping.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms", their eq. 7; value clipping as in
OpenAI baselines ``ppo2`` (Engstrom et al. 2020 found it does not help — the book measures it).
"""

from __future__ import annotations

import torch

from . import _validate as check
from .importance import approx_kl, ratio_terms
from .masked import mean_kept, zero_dropped


def clipped_surrogate_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (3.2), §3.1: ``loss = −mean[min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)]``.

    ρ_t ↔ ``ratio`` = exp(``logprobs − old_logprobs``), A_t ↔ ``advantages``, ε ↔ ``clip_eps``.
    Shapes alike, ``[T, N]`` or ``[B, T]``; the mean is over kept elements. ``old_logprobs``
    and ``advantages`` are constants (detached).

    The min is a pessimistic bound (§3.2): the gradient (Eq. (3.4), §3.3) is 0 exactly where the
    clipped term is the smaller one (A > 0 and ρ > 1 + ε, or A < 0 and ρ < 1 − ε), and
    −A·ρ·∇log π elsewhere. ``stats["clip_fraction"]`` (Eq. (3.5)): fraction of kept elements
    with ``|ρ − 1| > ε`` (CleanRL's definition, a superset of the zero-gradient set).
    ``stats["approx_kl"]`` (Eq. (3.6)): masked mean of (ρ − 1) − log ρ, the k3 estimate of
    KL(π_old‖π_θ) from samples of π_old.
    """
    clip_eps = check.positive(clip_eps, "clip_eps")
    log_ratio, advantages, keep = ratio_terms(logprobs, old_logprobs, advantages, mask)
    ratio = torch.exp(log_ratio)  # (B, T); exactly 1 at dropped positions
    clamped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = -mean_kept(torch.minimum(ratio * advantages, clamped * advantages), keep)
    with torch.no_grad():  # |ρ − 1| > ε exactly where the clamp moved ρ; ρ = 1 where dropped
        clip_fraction = mean_kept((clamped != ratio).to(ratio.dtype), keep).item()
    return loss, {"clip_fraction": clip_fraction, "approx_kl": approx_kl(log_ratio, keep)}


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_eps: float | None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (3.8), §3.7: ``½ · mean[max((v − R)², (v_old + clip(v − v_old, −ε, ε) − R)²)]``.

    v ↔ ``values``, v_old ↔ ``old_values``, R ↔ ``returns``, ε ↔ ``clip_eps`` (the config
    field is ``vf_clip_eps``). ``clip_eps=None`` gives the plain ``½ · mean[(v − R)²]`` (Eq. (3.7)).
    ``old_values`` and ``returns`` are constants (detached). ``stats["clip_fraction"]``:
    fraction of kept elements with ``|v − v_old| > ε`` (0.0 without clipping).
    """
    if clip_eps is not None:
        clip_eps = check.positive(clip_eps, "clip_eps")
    values, old_values, returns = check.floats(values=values, old_values=old_values, returns=returns)
    keep = check.keep_mask(mask, values.shape, "values")
    values = zero_dropped(values, keep)
    old_values = zero_dropped(old_values.detach(), keep)
    returns = zero_dropped(returns.detach(), keep)
    squared_error = (values - returns).square()  # (B, T)
    if clip_eps is None:
        return 0.5 * mean_kept(squared_error, keep), {"clip_fraction": 0.0}
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    loss = 0.5 * mean_kept(torch.maximum(squared_error, (clipped_values - returns).square()), keep)
    with torch.no_grad():
        clip_fraction = mean_kept(((values - old_values).abs() > clip_eps).to(values.dtype), keep).item()
    return loss, {"clip_fraction": clip_fraction}
