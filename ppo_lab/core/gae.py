"""Generalised advantage estimation (GAE), §4: TD residuals, the backward recursion, λ-returns.

Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation", eqs. (10)–(16). Terminated and truncated episodes differ only in the bootstrap:
a terminated step has no future value, a truncated one bootstraps from V(final observation)
(SB3 and gymnasium >= 0.26 do the same). Both stop the recursion.
"""

from __future__ import annotations

import torch

from . import _validate as check
from .returns import backward_discounted_sum


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    episode_ends: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (4.9), §4.5. Returns ``(advantages, returns)``, all ``[T, N]`` (or ``[T, ...]``).

    δ_t = r_t + γ (1 − terminated_t) · next_values_t − values_t   (Eq. (4.2); no bootstrap after a termination)
    A_t = δ_t + γλ (1 − episode_ends_t) · A_{t+1},  A_T = 0 past the last step   (Eq. (4.6))
    returns_t = A_t + values_t   (the λ-return G^λ_t of Eq. (4.7), the value target)

    Symbols: r_t ↔ ``rewards``, V(s_t) ↔ ``values``, δ_t ↔ ``deltas``, A_t ↔ ``advantages``,
    γ ↔ ``gamma``, λ ↔ ``gae_lambda``; time on dim 0.

    ``next_values_t`` is V(s_{t+1}), or V(final observation) where the episode was truncated at
    ``t``; it is ignored (NaN allowed) where ``terminated_t``. At the last step of a rollout
    that did not end, it is the bootstrap V(s_T). ``episode_ends_t = terminated_t or
    truncated_t``; a step that is terminated but not an episode end is a ``ValueError``.
    ``gae_lambda=0`` gives A_t = δ_t; ``gae_lambda=1`` gives the bootstrapped discounted return
    minus V(s_t).
    """
    gamma = check.unit_interval(gamma, "gamma")
    gae_lambda = check.unit_interval(gae_lambda, "gae_lambda")
    rewards, values, next_values = check.floats(rewards=rewards, values=values, next_values=next_values)
    check.time_major(rewards, "rewards")
    terminated = check.flags(terminated, "terminated", rewards.shape, "rewards")
    episode_ends = check.flags(episode_ends, "episode_ends", rewards.shape, "rewards")
    if (terminated & ~episode_ends).any():
        raise ValueError("terminated: a terminated step must also be marked in episode_ends")

    next_values = torch.where(terminated, 0, next_values)  # NaN-safe: no bootstrap past the end
    deltas = torch.add(rewards, next_values, alpha=gamma).sub_(values)  # δ_t, Eq. (4.2); (T, N)
    # A NaN or inf in any input makes its δ_t, hence the sum, non-finite: one cheap reduction
    # instead of three full checks; the checks run (and name the argument) only when it is.
    if not torch.isfinite(deltas.sum()):
        check.finite(rewards, "rewards")
        check.finite(values, "values")
        check.finite(next_values, "next_values")  # only where not terminated: the rest is 0 now
    discounts = torch.full_like(deltas, gamma * gae_lambda).masked_fill_(episode_ends, 0.0)  # (T, N)
    advantages = backward_discounted_sum(deltas, discounts)
    return advantages, advantages + values
