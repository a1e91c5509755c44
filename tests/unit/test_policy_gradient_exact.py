"""REINFORCE (ppo_lab's surrogate + reward-to-go) against the exact gradient of a tabular MDP."""

from __future__ import annotations

import torch

from ppo_lab.core.policy_gradient import reinforce_loss
from ppo_lab.core.returns import discounted_returns
from ppo_lab.toy.tabular import TabularMDP

F64 = torch.float64
MDP = TabularMDP.random(3, 2, gamma=0.8, horizon=5, seed=3)
THETA = 0.7 * torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
GROUPS, PER_GROUP = 400, 10  # 400 independent estimates, each from 10 episodes


def _gradient_estimates(
    weighting: str, seed: int = 0, discount: bool = True, groups: int = GROUPS, per_group: int = PER_GROUP
) -> torch.Tensor:
    """``groups`` independent REINFORCE estimates of ∇J, each from ``per_group`` episodes → [groups, S, A].

    weighting: "return" (R(τ) on every step), "reward_to_go" (G_t) or "baseline" (G_t − V_t(s_t)).
    discount: multiply step t by γ^t (the unbiased estimator of ∇J) or drop it (common practice).
    """
    batch = MDP.sample_episodes(THETA, groups * per_group, torch.Generator().manual_seed(seed))
    T = batch.rewards.shape[0]
    G = discounted_returns(rewards=batch.rewards, episode_ends=batch.episode_ends, gamma=MDP.gamma)
    if weighting == "return":
        weights = G[0].expand(T, -1)  # R(τ) = G_0 for every step of the episode
    elif weighting == "reward_to_go":
        weights = G
    elif weighting == "baseline":
        V_t = MDP.exact(THETA).values_by_time  # [H, S]
        weights = G - V_t[torch.arange(T)[:, None], batch.states]
    else:
        raise AssertionError(weighting)
    if discount:
        weights = weights * MDP.gamma ** torch.arange(T, dtype=F64)[:, None]
    estimates = []
    for g in range(groups):
        cols = slice(g * per_group, (g + 1) * per_group)
        theta = THETA.clone().requires_grad_()
        logprobs = MDP.logprobs(theta, batch.states[:, cols], batch.actions[:, cols])
        mask = batch.mask[:, cols]
        loss = reinforce_loss(logprobs=logprobs, returns=weights[:, cols], mask=mask)
        (grad,) = torch.autograd.grad(loss, theta)
        # reinforce_loss averages over kept steps; ∇J is a sum over steps averaged over episodes
        estimates.append(-grad * mask.sum() / per_group)
    return torch.stack(estimates)


def _z_scores(estimates: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    se = estimates.std(0) / estimates.shape[0] ** 0.5
    return (estimates.mean(0) - exact) / se


def _total_variance(estimates: torch.Tensor) -> float:
    return estimates.var(0).sum().item()


def test_reinforce_with_reward_to_go_is_unbiased():
    exact = MDP.exact_gradient(THETA)
    est = _gradient_estimates("reward_to_go")
    z = _z_scores(est, exact)
    assert z.abs().max() < 4, z
    # and the test has power: the exact gradient is far from zero in standard-error units
    assert (exact / (est.std(0) / GROUPS**0.5)).abs().max() > 10


def test_reinforce_trajectory_form_and_baseline_are_unbiased():
    exact = MDP.exact_gradient(THETA)
    for weighting in ("return", "baseline"):
        z = _z_scores(_gradient_estimates(weighting, seed=1), exact)
        assert z.abs().max() < 4, (weighting, z)


def test_variance_drops_with_causality_and_baseline():
    v_return = _total_variance(_gradient_estimates("return", seed=2))
    v_rtg = _total_variance(_gradient_estimates("reward_to_go", seed=2))
    v_base = _total_variance(_gradient_estimates("baseline", seed=2))
    assert v_rtg < v_return
    assert v_base < 0.5 * v_rtg


def test_dropping_discount_factor_estimates_a_different_vector():
    est = _gradient_estimates("reward_to_go", seed=3, discount=False, per_group=25)
    undiscounted = MDP.exact_gradient(THETA, discount_weighting=False)
    assert _z_scores(est, undiscounted).abs().max() < 4
    assert _z_scores(est, MDP.exact_gradient(THETA)).abs().max() > 5
