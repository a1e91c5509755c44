"""Importance sampling, §2: the ratio ρ_t = π_θ/π_θold, the surrogate L^CPI, trajectory ratios.

Kakade & Langford 2002 ("conservative policy iteration") and Schulman et al. 2015 (TRPO), eq. (14).
"""

from __future__ import annotations

import torch

from . import _validate as check
from .kl import k3
from .masked import mean_kept, zero_dropped


def ratio_terms(logprobs, old_logprobs, advantages, mask):
    """Validated ``(log_ratio, advantages, keep)`` for the surrogate losses (§2, §3).

    ``log_ratio = logprobs − old_logprobs``; ``old_logprobs`` and ``advantages`` are constants
    (detached). Both are 0 at dropped positions, so the ratio there is exactly 1.
    """
    logprobs, old_logprobs, advantages = check.floats(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages
    )
    keep = check.keep_mask(mask, logprobs.shape, "logprobs")
    log_ratio = zero_dropped(logprobs - old_logprobs.detach(), keep)
    return log_ratio, zero_dropped(advantages.detach(), keep), keep


@torch.no_grad()
def approx_kl(log_ratio: torch.Tensor, keep: torch.Tensor | None) -> float:
    """Eq. (3.6), §3.5: masked mean of (ρ − 1) − log ρ, the k3 estimate of KL(π_old‖π_θ).

    It is ``kl_estimate``'s k3 with the roles swapped: samples of π_old, d = log π_old − log π_θ
    = −log ρ, so k3 = e^{log ρ} − 1 − log ρ. 0 at dropped positions, where log ρ is 0.
    """
    return mean_kept(k3(-log_ratio), keep).item()


def cpi_surrogate_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (2.8), §2.3: ``loss = −mean[ρ_t · A_t]`` with ρ_t = exp(logprobs − old_logprobs), i.e. −L^CPI.

    L^CPI is the first-order (per-step) surrogate: it ignores the shift of the state distribution,
    so it is *not* an identity for J(θ) — that needs the product of per-step ratios
    (``trajectory_ratio``; errata 13). At θ = θ_old its gradient equals the policy gradient.
    Shapes alike, ``[T, N]`` or ``[B, T]``. ``stats["approx_kl"]`` as in ``clipped_surrogate_loss``.
    """
    log_ratio, advantages, keep = ratio_terms(logprobs, old_logprobs, advantages, mask)
    loss = -mean_kept(torch.exp(log_ratio) * advantages, keep)
    return loss, {"approx_kl": approx_kl(log_ratio, keep)}


def trajectory_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``Π_t π_θ(a_t|s_t) / π_θold(a_t|s_t)`` over time (dim 0) and kept steps: ``[T, N]`` → ``[N]``.

    Eq. (2.4), §2.2: the exact importance weight of a whole trajectory (errata 13). Its variance grows with the
    horizon T and with the drift between the policies, which is why PPO uses per-step ratios.
    """
    logprobs, old_logprobs = check.floats(logprobs=logprobs, old_logprobs=old_logprobs)
    check.time_major(logprobs, "logprobs")
    keep = check.keep_mask(mask, logprobs.shape, "logprobs")
    return torch.exp(zero_dropped(logprobs - old_logprobs, keep).sum(dim=0))
