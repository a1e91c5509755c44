"""Discounted returns (reward-to-go), §1.3, and the backward recursion GAE reuses (§4.6).

Time is dim 0: toy-RL tensors are ``[T, N]`` (steps × parallel envs), and any trailing shape
works. ``episode_ends[t]`` is True where step ``t`` is the last step of an episode (terminated
or truncated), so nothing flows back across it: the seed's GAE leaked across episode ends when
trajectories were concatenated (errata 3).
"""

from __future__ import annotations

import torch

from . import _validate as check


def backward_discounted_sum(x: torch.Tensor, discounts: torch.Tensor) -> torch.Tensor:
    """``y_t = x_t + discounts_t · y_{t+1}`` with ``y_T = 0``; shapes ``[T, ...]``. §4.6.

    The recursion of Eq. (1.9) (discounts γ(1 − end_t)) and of Eq. (4.6)/(4.9) (γλ(1 − end_t)).

    One vectorised step per time step over all envs at once: O(T·N) work, T Python iterations
    (the seed's ``list.insert(0, ·)`` made it O(T²), errata 3). No argument checks: callers
    validate. Autograd flows through it.
    """
    out = torch.empty_like(x)  # (T, ...)
    running = torch.zeros_like(x[0])  # y_{t+1}, (...)
    for t in range(x.shape[0] - 1, -1, -1):
        running = torch.addcmul(x[t], discounts[t], running)
        out[t] = running
    return out


def discounted_returns(rewards: torch.Tensor, episode_ends: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. (1.9), §1.3: ``G_t = r_t + γ (1 − end_t) G_{t+1}``, with ``G_T = 0`` past the last step.

    r_t ↔ ``rewards``, end_t ↔ ``episode_ends`` (bool or {0, 1}), γ ↔ ``gamma`` ∈ [0, 1].
    Shapes: ``[T, N]`` (or ``[T, ...]``) in and out. No bootstrap: a rollout cut mid-episode
    counts only the rewards it saw (use ``gae_advantages`` with ``gae_lambda=1`` to bootstrap).
    """
    gamma = check.unit_interval(gamma, "gamma")
    (rewards,) = check.floats(rewards=rewards)
    check.time_major(rewards, "rewards")
    ends = check.flags(episode_ends, "episode_ends", rewards.shape, "rewards")
    check.finite(rewards, "rewards")
    return backward_discounted_sum(rewards, gamma * (~ends).to(rewards.dtype))
