"""Tests for ppo_lab.toy.tabular: exact quantities against Monte Carlo and finite differences."""

from __future__ import annotations

import pytest
import torch

from ppo_lab.toy.tabular import RandomWalkChain, SoftmaxBandit, TabularMDP

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _theta(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=_gen(seed), dtype=F64)


def _finite_difference_grad(f, theta: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central differences of a scalar function, one coordinate at a time."""
    grad = torch.zeros(theta.numel(), dtype=theta.dtype)
    for i in range(theta.numel()):
        e = torch.zeros(theta.numel(), dtype=theta.dtype)
        e[i] = h
        e = e.view_as(theta)
        grad[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return grad.view_as(theta)


def _within_standard_errors(samples: torch.Tensor, expected: torch.Tensor, k: float = 4.0) -> None:
    """Assert mean(samples, dim 0) is within k standard errors of ``expected``."""
    mean = samples.mean(0)
    se = samples.std(0) / samples.shape[0] ** 0.5
    z = (mean - expected).abs() / se.clamp_min(1e-12)
    assert (z < k).all(), f"mean {mean} vs exact {expected}: z = {z}"


# ---------------------------------------------------------------------------------------------
# bandit
# ---------------------------------------------------------------------------------------------

BANDIT = SoftmaxBandit(means=torch.tensor([1.0, 0.2, -0.5, 0.7]), reward_std=0.5)


def test_bandit_return_matches_monte_carlo():
    theta = _theta((4,), seed=1)
    samples = BANDIT.sample(theta, 50_000, _gen(2))
    assert samples.actions.shape == (50_000,) and samples.rewards.shape == (50_000,)
    _within_standard_errors(samples.rewards, BANDIT.expected_return(theta))


def test_bandit_gradient_matches_autograd_and_finite_differences():
    theta = _theta((4,), seed=3).requires_grad_()
    (autograd,) = torch.autograd.grad(BANDIT.expected_return(theta), theta)
    exact = BANDIT.exact_gradient(theta)
    fd = _finite_difference_grad(lambda t: BANDIT.expected_return(t), theta.detach())
    torch.testing.assert_close(exact, autograd)
    torch.testing.assert_close(exact, fd, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("baseline", [0.0, 0.5, -1.0])
def test_bandit_gradient_variance_matches_samples(baseline):
    theta = _theta((4,), seed=4)
    s = BANDIT.sample(theta, 200_000, _gen(5))
    pi = BANDIT.probs(theta)
    score = torch.nn.functional.one_hot(s.actions, 4).to(F64) - pi  # ∇ log π(a), [N, A]
    g = score * (s.rewards - baseline)[:, None]
    _within_standard_errors(g, BANDIT.exact_gradient(theta))  # unbiased for any baseline
    sq_dev = ((g - BANDIT.exact_gradient(theta)) ** 2).sum(-1)  # per-sample ‖g − ∇J‖²
    _within_standard_errors(sq_dev, BANDIT.gradient_variance(theta, baseline))


def test_bandit_optimal_baseline_minimises_variance():
    theta = _theta((4,), seed=6)
    b_star = BANDIT.optimal_baseline(theta)
    grid = b_star + torch.linspace(-2.0, 2.0, 41, dtype=F64)
    var = BANDIT.gradient_variance(theta, grid)
    assert var.shape == (41,)
    assert torch.argmin(var).item() == 20  # the middle of the grid is b*
    assert BANDIT.gradient_variance(theta, b_star) < BANDIT.gradient_variance(theta, BANDIT.expected_return(theta))


def test_bandit_bad_inputs():
    with pytest.raises(ValueError, match="means"):
        SoftmaxBandit(means=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="reward_std"):
        SoftmaxBandit(means=torch.tensor([1.0, 2.0]), reward_std=-1.0)
    with pytest.raises(ValueError, match="theta"):
        BANDIT.expected_return(torch.zeros(3))
    with pytest.raises(ValueError, match="num_samples"):
        BANDIT.sample(torch.zeros(4), 0, _gen(0))
    with pytest.raises(ValueError, match="generator"):
        BANDIT.sample(torch.zeros(4), 3, 0)


# ---------------------------------------------------------------------------------------------
# finite MDP
# ---------------------------------------------------------------------------------------------


def _terminal_mdp(horizon=8) -> TabularMDP:
    """3 live states + 1 terminal state (index 3), 2 actions."""
    P = torch.tensor(
        [
            [[0.1, 0.6, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]],
            [[0.2, 0.1, 0.5, 0.2], [0.3, 0.3, 0.1, 0.3]],
            [[0.1, 0.1, 0.2, 0.6], [0.5, 0.2, 0.2, 0.1]],
            [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]],
        ],
        dtype=F64,
    )
    R = torch.tensor([[0.0, 0.3], [0.5, -0.2], [1.0, 0.1], [0.0, 0.0]], dtype=F64)
    mu0 = torch.tensor([0.6, 0.4, 0.0, 0.0], dtype=F64)
    terminal = torch.tensor([False, False, False, True])
    return TabularMDP(P, R, mu0, gamma=0.95, horizon=horizon, terminal=terminal)


MDPS = {
    "finite": lambda: TabularMDP.random(4, 3, gamma=0.9, horizon=6, seed=0),
    "endless": lambda: TabularMDP.random(4, 3, gamma=0.8, horizon=None, seed=1),
    "terminal-finite": lambda: _terminal_mdp(horizon=8),
    "terminal-endless": lambda: _terminal_mdp(horizon=None),
}


@pytest.mark.parametrize("name", list(MDPS))
def test_mdp_gradient_closed_form_matches_autograd_and_finite_differences(name):
    mdp = MDPS[name]()
    theta = _theta((mdp.num_states, mdp.num_actions), seed=7).requires_grad_()
    sol = mdp.exact(theta)
    (autograd,) = torch.autograd.grad(sol.expected_return, theta)
    fd = _finite_difference_grad(lambda t: mdp.expected_return(t), theta.detach())
    torch.testing.assert_close(sol.gradient, autograd)
    torch.testing.assert_close(sol.gradient, fd, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(mdp.exact_gradient(theta), sol.gradient)


@pytest.mark.parametrize("name", list(MDPS))
def test_mdp_bellman_consistency(name):
    mdp = MDPS[name]()
    theta = _theta((mdp.num_states, mdp.num_actions), seed=8)
    sol = mdp.exact(theta)
    pi = mdp.probs(theta)
    torch.testing.assert_close(sol.values, (pi * sol.action_values).sum(-1))
    torch.testing.assert_close(sol.expected_return, (mdp.initial_dist * sol.values).sum())
    assert (sol.values[mdp.terminal] == 0).all()
    if mdp.horizon is None:  # stationary Bellman equation V = r_π + γ P_π V (terminal value 0)
        live = (~mdp.terminal).to(F64)
        r_pi = (pi * mdp.rewards).sum(-1) * live
        P_pi = torch.einsum("sa,sax->sx", pi, mdp.transitions) * live[None, :] * live[:, None]
        torch.testing.assert_close(sol.values, r_pi + mdp.gamma * P_pi @ sol.values)
        if not mdp.terminal.any():  # Σ_s d(s) = Σ_t γ^t = 1/(1 − γ)
            torch.testing.assert_close(sol.visitation.sum(), torch.tensor(1.0 / (1.0 - mdp.gamma), dtype=F64))


def test_mdp_time_tables():
    mdp = _terminal_mdp(horizon=8)
    theta = _theta((4, 2), seed=21)
    sol = mdp.exact(theta)
    d, V, Q = sol.state_dist_by_time, sol.values_by_time, sol.action_values_by_time
    assert d.shape == (8, 4) and V.shape == (8, 4) and Q.shape == (8, 4, 2)
    torch.testing.assert_close(d[0], mdp.initial_dist)
    assert (d.sum(-1)[1:] < d.sum(-1)[:-1]).all()  # mass leaks into the terminal state
    torch.testing.assert_close(V[0], sol.values)
    torch.testing.assert_close(V[-1], (mdp.probs(theta) * mdp.rewards).sum(-1) * ~mdp.terminal)  # one step to go
    discount = mdp.gamma ** torch.arange(8, dtype=F64)
    torch.testing.assert_close(sol.visitation, (discount[:, None] * d).sum(0))
    assert MDPS["endless"]().exact(torch.zeros(4, 3, dtype=F64)).values_by_time is None


def test_gradient_without_discount_weighting():
    theta = _theta((4, 3), seed=22)
    undiscounted = TabularMDP.random(4, 3, gamma=1.0, horizon=6, seed=0)
    torch.testing.assert_close(
        undiscounted.exact_gradient(theta, discount_weighting=False), undiscounted.exact_gradient(theta)
    )
    discounted = TabularMDP.random(4, 3, gamma=0.7, horizon=6, seed=0)
    assert not torch.allclose(discounted.exact_gradient(theta, discount_weighting=False), discounted.exact_gradient(theta))
    with pytest.raises(ValueError, match="discount_weighting"):
        MDPS["endless"]().exact_gradient(theta, discount_weighting=False)


@pytest.mark.parametrize("name", ["finite", "terminal-finite", "terminal-endless"])
def test_mdp_return_matches_monte_carlo(name):
    mdp = MDPS[name]()
    theta = _theta((mdp.num_states, mdp.num_actions), seed=9)
    # endless case: every live state ends w.p. ≥ 0.1 per step, so P(alive after 60) ≤ 0.9^60 ≈ 2e-3
    max_steps = 60 if mdp.horizon is None else None
    batch = mdp.sample_episodes(theta, 20_000, _gen(10), max_steps=max_steps)
    T = batch.rewards.shape[0]
    discount = mdp.gamma ** torch.arange(T, dtype=F64)[:, None]
    returns = (discount * batch.rewards).sum(0)  # [N], padding contributes 0
    _within_standard_errors(returns, mdp.expected_return(theta))


def test_mdp_sampler_shapes_and_episode_ends():
    mdp = _terminal_mdp(horizon=8)
    theta = _theta((4, 2), seed=11)
    b = mdp.sample_episodes(theta, 500, _gen(12))
    for x in (b.states, b.actions, b.next_states, b.rewards, b.logprobs, b.mask, b.terminated, b.truncated):
        assert x.shape == (8, 500)
    assert b.states.dtype == torch.long and b.mask.dtype == torch.bool
    # each column is exactly one episode: a prefix of live steps ending at its only end
    assert (b.episode_ends.sum(0) == 1).all()
    last = b.mask.sum(0) - 1
    assert b.episode_ends[last, torch.arange(500)].all()
    assert (b.mask[1:] <= b.mask[:-1]).all()  # never revives after padding
    assert not (b.episode_ends & ~b.mask).any()
    # terminated exactly when a terminal state is entered or the horizon runs out
    hit_terminal = b.mask & mdp.terminal[b.next_states]
    at_horizon = torch.zeros_like(b.mask)
    at_horizon[-1] = b.mask[-1]
    torch.testing.assert_close(b.terminated, hit_terminal | at_horizon)
    assert not b.truncated.any()
    assert hit_terminal.any() and at_horizon.any()  # both kinds of end occur in this MDP
    # states are live and consecutive: s_{t+1} = next_state_t within an episode
    assert not mdp.terminal[b.states[b.mask]].any()
    cont = b.mask[1:]
    torch.testing.assert_close(b.states[1:][cont], b.next_states[:-1][cont])
    # logprobs are those of the sampling policy; padding is zero
    torch.testing.assert_close(b.logprobs[b.mask], mdp.logprobs(theta, b.states, b.actions)[b.mask])
    assert (b.rewards[~b.mask] == 0).all() and (b.logprobs[~b.mask] == 0).all()
    torch.testing.assert_close(b.rewards[b.mask], mdp.rewards[b.states, b.actions][b.mask])


def test_mdp_sampler_truncation_and_determinism():
    mdp = TabularMDP.random(3, 2, gamma=0.9, horizon=None, seed=2)
    theta = _theta((3, 2), seed=13)
    b = mdp.sample_episodes(theta, 50, _gen(14), max_steps=5)
    assert b.mask.all() and not b.terminated.any()
    assert b.truncated[-1].all() and not b.truncated[:-1].any()
    again = mdp.sample_episodes(theta, 50, _gen(14), max_steps=5)
    assert torch.equal(b.actions, again.actions) and torch.equal(b.states, again.states)
    finite = TabularMDP.random(3, 2, gamma=0.9, horizon=6, seed=2)
    cut = finite.sample_episodes(theta, 50, _gen(14), max_steps=4)
    assert cut.truncated[-1].all() and not cut.terminated.any()


def test_cpi_surrogate_is_first_order_in_theta():
    for mdp in (MDPS["finite"](), MDPS["endless"]()):
        theta_old = _theta((mdp.num_states, mdp.num_actions), seed=15)
        theta = theta_old.clone().requires_grad_()
        L = mdp.cpi_surrogate(theta, theta_old)
        (grad_L,) = torch.autograd.grad(L, theta)
        torch.testing.assert_close(L, mdp.expected_return(theta_old))
        torch.testing.assert_close(grad_L, mdp.exact_gradient(theta_old))
        # away from θ_old the two differ, and the gap shrinks quadratically with the step
        direction = _theta((mdp.num_states, mdp.num_actions), seed=16)
        gaps = [
            (mdp.cpi_surrogate(theta_old + h * direction, theta_old) - mdp.expected_return(theta_old + h * direction)).abs()
            for h in (0.4, 0.2, 0.1)
        ]
        assert gaps[0] > 1e-4
        assert 2.5 < gaps[0] / gaps[1] < 6 and 2.5 < gaps[1] / gaps[2] < 6


def test_mdp_bad_inputs():
    good = _terminal_mdp()
    P, R, mu0 = good.transitions, good.rewards, good.initial_dist
    with pytest.raises(ValueError, match="transitions"):
        TabularMDP(P * 2, R, mu0, gamma=0.9)
    with pytest.raises(ValueError, match="rewards"):
        TabularMDP(P, R[:2], mu0, gamma=0.9)
    with pytest.raises(ValueError, match="initial_dist"):
        TabularMDP(P, R, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64), gamma=0.9, terminal=good.terminal)
    with pytest.raises(ValueError, match="gamma"):
        TabularMDP(P, R, mu0, gamma=1.5)
    with pytest.raises(ValueError, match="gamma"):  # endless, γ = 1, no terminal state
        TabularMDP.random(3, 2, gamma=1.0, horizon=None)
    with pytest.raises(ValueError, match="horizon"):
        TabularMDP(P, R, mu0, gamma=0.9, horizon=0)
    with pytest.raises(ValueError, match="theta"):
        good.exact(torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="max_steps"):
        TabularMDP.random(3, 2, horizon=None).sample_episodes(torch.zeros(3, 2), 4, _gen(0))
    with pytest.raises(ValueError, match="max_steps"):
        good.sample_episodes(torch.zeros(4, 2), 4, _gen(0), max_steps=100)


# ---------------------------------------------------------------------------------------------
# random-walk chain
# ---------------------------------------------------------------------------------------------


def test_chain_sutton_barto_values():
    chain = RandomWalkChain()  # K = 5, p = 0.5, γ = 1, reward 1 off the right end
    torch.testing.assert_close(chain.values(), torch.arange(1, 6, dtype=F64) / 6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_states=7, p_right=0.3, gamma=0.9, reward_left=-1.0, reward_right=2.0, step_reward=-0.1),
        dict(num_states=4, p_right=torch.tensor([0.9, 0.2, 0.6, 0.4]), gamma=1.0, step_reward=-1.0),
    ],
)
def test_chain_values_satisfy_bellman_equation(kwargs):
    chain = RandomWalkChain(**kwargs)
    V, Q, pi = chain.values(), chain.action_values(), chain.policy_probs()
    K = chain.num_states
    V_ext = torch.cat([torch.zeros(1, dtype=F64), V, torch.zeros(1, dtype=F64)])  # V = 0 off the ends
    s = torch.arange(K)
    rew_left = torch.full((K,), kwargs.get("step_reward", 0.0), dtype=F64)
    rew_left[0] += kwargs.get("reward_left", 0.0)
    rew_right = torch.full((K,), kwargs.get("step_reward", 0.0), dtype=F64)
    rew_right[-1] += kwargs.get("reward_right", 1.0)
    bellman = pi[:, 0] * (rew_left + chain.gamma * V_ext[s]) + pi[:, 1] * (rew_right + chain.gamma * V_ext[s + 2])
    torch.testing.assert_close(V, bellman)
    torch.testing.assert_close(V, (pi * Q).sum(-1))


def _bootstrapped_returns(r) -> torch.Tensor:
    """G_t = r_t + γ·(0 if terminated, next_value if truncated or last row, else G_{t+1})."""
    T = r.rewards.shape[0]
    G = torch.zeros_like(r.rewards)
    nxt = r.next_values[-1]
    for t in reversed(range(T)):
        if t < T - 1:
            nxt = torch.where(r.episode_ends[t], r.next_values[t], G[t + 1])
        G[t] = r.rewards[t] + CHAIN.gamma * torch.where(r.terminated[t], torch.zeros_like(nxt), nxt)
    return G


CHAIN = RandomWalkChain(num_states=5, p_right=0.4, gamma=0.9, reward_left=-1.0, reward_right=1.0, step_reward=0.1)


@pytest.mark.parametrize("max_episode_steps", [None, 4])
def test_chain_rollout_returns_match_exact_values(max_episode_steps):
    r = CHAIN.rollout(num_envs=400, num_steps=60, generator=_gen(17), max_episode_steps=max_episode_steps)
    G = _bootstrapped_returns(r)
    V = CHAIN.values()
    for s in range(CHAIN.num_states):
        sel = r.states == s
        assert sel.sum() > 500
        # returns from one column are correlated in time, so use a generous 5 standard errors
        _within_standard_errors(G[sel], V[s], k=5.0)


def test_chain_rollout_structure():
    K, T, N = CHAIN.num_states, 50, 64
    r = CHAIN.rollout(num_envs=N, num_steps=T, generator=_gen(18), max_episode_steps=6)
    for x in (r.states, r.actions, r.rewards, r.next_states, r.values, r.next_values, r.terminated, r.truncated):
        assert x.shape == (T, N)
    V = CHAIN.values()
    assert ((r.states >= 0) & (r.states < K)).all()
    torch.testing.assert_close(r.next_states, r.states + 2 * r.actions - 1)
    torch.testing.assert_close(r.terminated, (r.next_states < 0) | (r.next_states >= K))
    assert not (r.terminated & r.truncated).any()
    torch.testing.assert_close(r.episode_ends, r.terminated | r.truncated)
    torch.testing.assert_close(r.truncated, ~r.terminated & (r.episode_steps == 5))
    assert r.truncated.any() and r.terminated.any()
    torch.testing.assert_close(r.values, V[r.states])
    assert (r.next_values[r.terminated] == 0).all()
    live = ~r.terminated
    torch.testing.assert_close(r.next_values[live], V[r.next_states[live]])
    # auto-reset: after an end the next step starts at `start` with a fresh step counter
    ended = r.episode_ends[:-1]
    assert (r.states[1:][ended] == CHAIN.start).all() and (r.episode_steps[1:][ended] == 0).all()
    torch.testing.assert_close(r.states[1:][~ended], r.next_states[:-1][~ended])
    # without a time limit nothing is truncated
    assert not CHAIN.rollout(num_envs=8, num_steps=40, generator=_gen(19)).truncated.any()
    # a custom value table is used as given
    table = torch.linspace(-1, 1, K, dtype=torch.float32)
    custom = CHAIN.rollout(num_envs=4, num_steps=10, generator=_gen(20), value_table=table)
    assert custom.values.dtype == torch.float32
    torch.testing.assert_close(custom.values, table[custom.states])


def test_chain_bad_inputs():
    with pytest.raises(ValueError, match="num_states"):
        RandomWalkChain(num_states=0)
    with pytest.raises(ValueError, match="p_right"):
        RandomWalkChain(p_right=1.5)
    with pytest.raises(ValueError, match="p_right"):  # walks 1 → 2 → 1 … forever with γ = 1
        RandomWalkChain(num_states=3, p_right=torch.tensor([0.5, 1.0, 0.0]))
    with pytest.raises(ValueError, match="gamma"):
        RandomWalkChain(gamma=-0.1)
    with pytest.raises(ValueError, match="start"):
        RandomWalkChain(start=5)
    with pytest.raises(ValueError, match="value_table"):
        CHAIN.rollout(2, 3, _gen(0), value_table=torch.zeros(4))
    with pytest.raises(ValueError, match="max_episode_steps"):
        CHAIN.rollout(2, 3, _gen(0), max_episode_steps=0)
    with pytest.raises(ValueError, match="num_envs"):
        CHAIN.rollout(0, 3, _gen(0))
