"""§1 reward-to-go and §4 GAE: hand-solvable cases, the loop twins, terminated vs truncated,
and the log-depth scan both share (§4.6): exactness, float32 accuracy, long horizons, autograd."""

import math

import pytest
import torch
from core_helpers import core_settings, dtypes, generator, seeds, shapes_2d, tol
from hypothesis import given, strategies as st
from torch.testing import assert_close

from ppo_lab import discounted_returns, gae_advantages
from ppo_lab.core import reference as ref
from ppo_lab.core.returns import backward_discounted_sum

NAN = math.nan


def random_episodes(shape, dtype, gen):
    """Rewards, values and flags of a [T, N] rollout with random terminations and truncations."""
    rewards = torch.randn(shape, generator=gen, dtype=dtype)
    values = torch.randn(shape, generator=gen, dtype=dtype)
    next_values = torch.randn(shape, generator=gen, dtype=dtype)
    terminated = torch.rand(shape, generator=gen) < 0.2
    truncated = (torch.rand(shape, generator=gen) < 0.1) & ~terminated
    next_values[terminated] = NAN  # ignored there, by contract
    return rewards, values, next_values, terminated, terminated | truncated


# --- backward_discounted_sum: the scan behind both -------------------------------------------


def discounts_for(pattern, shape, dtype, gen):
    """Discounts c_t of a [T, ...] recursion: random in [0, 1], all 0 (an episode end at every
    step), a constant 0.99 (no episode end), or 0.99 with 10% episode ends."""
    if pattern == "random":
        return torch.rand(shape, generator=gen, dtype=dtype)
    if pattern == "ends_everywhere":
        return torch.zeros(shape, dtype=dtype)
    c = torch.full(shape, 0.99, dtype=dtype)
    if pattern == "some_ends":
        c[torch.rand(shape, generator=gen) < 0.1] = 0.0
    return c


def test_backward_discounted_sum_by_hand():
    x = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    # y_2 = 3, y_1 = 2 + 0.5·3, y_0 = 1 + 0.5·3.5
    assert_close(backward_discounted_sum(x, torch.full_like(x, 0.5)), torch.tensor([[2.75], [3.5], [3.0]], dtype=torch.float64))
    # discounts 1: suffix sums; discounts 0: x itself; T = 1: x itself whatever the discount
    assert_close(backward_discounted_sum(x, torch.ones_like(x)), torch.tensor([[6.0], [5.0], [3.0]], dtype=torch.float64))
    assert_close(backward_discounted_sum(x, torch.zeros_like(x)), x)
    assert_close(backward_discounted_sum(x[:1], torch.ones_like(x[:1])), x[:1])


@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 13, 64, 100, 129, 1000])
@pytest.mark.parametrize("pattern", ["random", "ends_everywhere", "no_ends", "some_ends"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_discounted_sum_matches_loop(T, pattern, dtype):
    gen = generator(T)
    shape = (T, 3) if T > 100 else (T, 2, 3)  # any trailing shape
    x = torch.randn(shape, generator=gen, dtype=dtype)
    c = discounts_for(pattern, shape, dtype, gen)
    x_before, c_before = x.clone(), c.clone()
    y = backward_discounted_sum(x, c)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, ref.backward_discounted_sum(x, c), **tol(dtype))
    assert torch.equal(x, x_before) and torch.equal(c, c_before)  # the in-place scan works on copies


@core_settings
@given(T=st.integers(1, 80), N=st.integers(1, 4), dtype=dtypes, seed=seeds, transpose=st.booleans())
def test_backward_discounted_sum_random_shapes(T, N, dtype, seed, transpose):
    gen = generator(seed)
    x = torch.randn(T, N, generator=gen, dtype=dtype)
    c = torch.rand(T, N, generator=gen, dtype=dtype) * (torch.rand(T, N, generator=gen) > 0.2)
    if transpose:  # an LLM [B, T] tensor transposed to time-major: not contiguous
        x, c = x.T.contiguous().T, c.T.contiguous().T
    assert_close(backward_discounted_sum(x, c), ref.backward_discounted_sum(x, c), **tol(dtype))


def test_backward_discounted_sum_half_inputs_compute_in_float32():
    gen = generator(6)
    x64, c64 = torch.randn(50, 4, generator=gen, dtype=torch.float64), torch.rand(50, 4, generator=gen, dtype=torch.float64)
    for half in (torch.bfloat16, torch.float16):
        x, c = x64.to(half), c64.to(half)
        y = backward_discounted_sum(x, c)
        assert y.dtype == torch.float32
        assert_close(y, ref.backward_discounted_sum(x, c), rtol=1e-5, atol=1e-5)


def relative_error(y, y_exact):
    return ((y.double() - y_exact).abs().max() / y_exact.abs().max()).item()


@pytest.mark.parametrize("decay", [0.99 * 0.95, 0.999])
def test_float32_scan_is_as_accurate_as_a_float64_loop(decay):
    """T = 2048: the float32 scan against the float64 loop on the same (float32) numbers."""
    gen = generator(7)
    x = torch.randn(2048, 8, generator=gen)
    c = torch.full((2048, 8), decay)
    c[torch.rand(2048, 8, generator=gen) < 0.002] = 0.0  # a few episode ends
    y = backward_discounted_sum(x, c)
    assert y.dtype == torch.float32
    assert relative_error(y, ref.backward_discounted_sum(x.double(), c.double())) <= 1e-5


def test_float32_gae_is_as_accurate_as_a_float64_loop():
    gen = generator(8)
    args = random_episodes((2048, 8), torch.float32, gen)
    advantages, _ = gae_advantages(*args, gamma=0.99, gae_lambda=0.95)
    exact, _ = ref.gae_advantages(*(a.double() if a.is_floating_point() else a for a in args), 0.99, 0.95)
    assert exact.dtype == torch.float64
    assert relative_error(advantages, exact) <= 1e-5


def test_long_horizon_stays_finite_and_accurate():
    """T = 100 000, γλ = 0.999, no episode end, float32: the composed discounts only shrink."""
    gen = generator(9)
    x = torch.randn(100_000, 2, generator=gen)
    c = torch.full_like(x, 0.999)
    y = backward_discounted_sum(x, c)
    assert torch.isfinite(y).all()
    assert relative_error(y, ref.backward_discounted_sum(x.double(), c.double())) <= 1e-4
    # constant rewards: the closed form (1 − c^(T−t)) / (1 − c), which tends to 1000
    ones = backward_discounted_sum(torch.ones(100_000, 1), torch.full((100_000, 1), 0.999))
    t = torch.arange(100_000, dtype=torch.float64)[:, None]
    closed_form = (1 - torch.tensor(0.999, dtype=torch.float32).double() ** (100_000 - t)) / (1 - 0.999)
    assert torch.isfinite(ones).all()
    assert relative_error(ones, closed_form) <= 1e-4


def loop_discounted_sum(x, discounts):
    """The per-step recursion in torch ops, so autograd can trace it (the twin in ``reference``
    works on Python floats and has no graph)."""
    out, running = [], torch.zeros_like(x[0])
    for t in reversed(range(x.shape[0])):
        running = x[t] + discounts[t] * running
        out.append(running)
    return torch.stack(out[::-1])


@pytest.mark.parametrize("T", [1, 2, 7, 16, 33])
def test_backward_discounted_sum_gradient_equals_the_loops(T):
    gen = generator(10 + T)
    x = torch.randn(T, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.rand(T, 3, generator=gen, dtype=torch.float64)
    c[torch.rand(T, 3, generator=gen) < 0.2] = 0.0
    c.requires_grad_(True)
    weights = torch.randn(T, 3, generator=gen, dtype=torch.float64)  # a loss that weighs every y_t
    scan_grads = torch.autograd.grad((backward_discounted_sum(x, c) * weights).sum(), (x, c))
    loop_grads = torch.autograd.grad((loop_discounted_sum(x, c) * weights).sum(), (x, c))
    for scan_grad, loop_grad in zip(scan_grads, loop_grads):
        assert_close(scan_grad, loop_grad, rtol=1e-10, atol=1e-12)


def test_backward_discounted_sum_gradcheck():
    gen = generator(11)
    x = torch.randn(11, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.rand(11, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(backward_discounted_sum, (x, c))
    assert torch.autograd.gradgradcheck(backward_discounted_sum, (x, c))
    only_x = torch.autograd.grad(backward_discounted_sum(x, c.detach()).sum(), x)[0]
    assert_close(only_x, torch.autograd.grad(loop_discounted_sum(x, c.detach()).sum(), x)[0])


# --- discounted_returns -----------------------------------------------------------------------


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    assert_close(discounted_returns(rewards, torch.tensor([[0], [0], [1]]), 0.5), torch.tensor([[1.75], [1.5], [1.0]]))
    # an episode end at t=0 stops the sum there: G_0 = r_0
    assert_close(discounted_returns(rewards, torch.tensor([[1], [0], [0]]), 0.5), torch.tensor([[1.0], [1.5], [1.0]]))
    # gamma = 1: plain sums of the rest of the episode
    assert_close(discounted_returns(rewards, torch.zeros(3, 1, dtype=torch.bool), 1.0), torch.tensor([[3.0], [2.0], [1.0]]))


@core_settings
@given(shape=shapes_2d, dtype=dtypes, seed=seeds, gamma=st.floats(0, 1))
def test_discounted_returns_matches_loop(shape, dtype, seed, gamma):
    gen = generator(seed)
    rewards = torch.randn(shape, generator=gen, dtype=dtype)
    ends = torch.rand(shape, generator=gen) < 0.3
    out = discounted_returns(rewards=rewards, episode_ends=ends, gamma=gamma)
    assert out.dtype == dtype and out.shape == rewards.shape
    assert_close(out, ref.discounted_returns(rewards, ends, gamma), **tol(dtype))


def test_discounted_returns_is_gae_with_lambda_one_and_no_values():
    gen = generator(1)
    rewards = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    ends = torch.rand(7, 3, generator=gen) < 0.3
    ends[-1] = True
    zeros = torch.zeros_like(rewards)
    advantages, returns = gae_advantages(rewards, zeros, zeros, ends, ends, gamma=0.9, gae_lambda=1.0)
    assert_close(returns, discounted_returns(rewards, ends, 0.9))
    assert_close(advantages, returns)


def test_discounted_returns_bad_input():
    r = torch.ones(3, 2)
    with pytest.raises(ValueError, match="^gamma"):
        discounted_returns(r, torch.zeros(3, 2), 1.5)
    with pytest.raises(ValueError, match="^episode_ends"):
        discounted_returns(r, torch.zeros(3, 1), 0.9)
    with pytest.raises(ValueError, match="^episode_ends"):
        discounted_returns(r, torch.full((3, 2), 0.5), 0.9)
    with pytest.raises(ValueError, match="^rewards"):
        discounted_returns(torch.tensor([[1.0], [math.inf]]), torch.zeros(2, 1), 0.9)
    with pytest.raises(ValueError, match="^rewards"):
        discounted_returns(torch.ones(0, 2), torch.zeros(0, 2), 0.9)


# --- gae_advantages ---------------------------------------------------------------------------


def test_gae_by_hand():
    """T = 3, no episode end, bootstrap V(s_3) = 2; γ = 0.9, λ = 0.8 (γλ = 0.72)."""
    rewards = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    values = torch.tensor([[0.5], [1.0], [1.5]], dtype=torch.float64)
    next_values = torch.tensor([[1.0], [1.5], [2.0]], dtype=torch.float64)
    no = torch.zeros(3, 1, dtype=torch.bool)
    advantages, returns = gae_advantages(rewards, values, next_values, no, no, gamma=0.9, gae_lambda=0.8)
    # δ = r + γ V' − V = [1.4, 2.35, 3.3];  A_2 = 3.3, A_1 = 2.35 + 0.72·3.3, A_0 = 1.4 + 0.72·A_1
    a2 = 3.3
    a1 = 2.35 + 0.72 * a2
    a0 = 1.4 + 0.72 * a1
    assert_close(advantages, torch.tensor([[a0], [a1], [a2]], dtype=torch.float64))
    assert_close(returns, advantages + values)


def test_gae_truncated_bootstraps_terminated_does_not():
    """Step 0 ends the episode; step 1 is a new episode that terminates. γ = 0.5, λ = 1."""
    rewards = torch.tensor([[1.0], [1.0]])
    values = torch.zeros(2, 1)
    ends = torch.tensor([[True], [True]])
    # truncated at t=0: bootstrap from V(final observation) = 10; nothing flows back from t=1
    next_values = torch.tensor([[10.0], [NAN]])
    advantages, _ = gae_advantages(rewards, values, next_values, torch.tensor([[False], [True]]), ends, 0.5, 1.0)
    assert_close(advantages, torch.tensor([[6.0], [1.0]]))
    # terminated at t=0: no bootstrap, and V(final observation) may be NaN
    next_values = torch.tensor([[NAN], [NAN]])
    advantages, returns = gae_advantages(rewards, values, next_values, ends, ends, 0.5, 1.0)
    assert_close(advantages, torch.tensor([[1.0], [1.0]]))
    assert torch.isfinite(returns).all()


def test_gae_last_step_bootstraps_an_unfinished_rollout():
    rewards, values = torch.zeros(2, 1), torch.zeros(2, 1)
    next_values = torch.tensor([[0.0], [4.0]])  # V(s_T) = 4 after the last step
    no = torch.zeros(2, 1, dtype=torch.bool)
    advantages, _ = gae_advantages(rewards, values, next_values, no, no, gamma=0.5, gae_lambda=1.0)
    assert_close(advantages, torch.tensor([[1.0], [2.0]]))


@core_settings
@given(shape=shapes_2d, dtype=dtypes, seed=seeds)
def test_gae_matches_loop(shape, dtype, seed):
    gen = generator(seed)
    gamma, gae_lambda = torch.rand(2, generator=gen).tolist()
    args = random_episodes(shape, dtype, gen)
    advantages, returns = gae_advantages(*args, gamma=gamma, gae_lambda=gae_lambda)
    ref_advantages, ref_returns = ref.gae_advantages(*args, gamma, gae_lambda)
    assert advantages.dtype == returns.dtype == dtype
    assert_close(advantages, ref_advantages, **tol(dtype))
    assert_close(returns, ref_returns, **tol(dtype))


def test_gae_lambda_zero_is_td_residual_and_lambda_one_is_monte_carlo():
    gen = generator(2)
    rewards, values, next_values, terminated, ends = random_episodes((9, 4), torch.float64, gen)
    gamma = 0.9
    deltas = rewards + gamma * torch.where(terminated, 0, next_values) - values
    advantages, _ = gae_advantages(rewards, values, next_values, terminated, ends, gamma, 0.0)
    assert_close(advantages, deltas)
    # λ = 1: returns are the discounted rewards to the segment end plus γ^k · its bootstrap,
    # when next_values is consistent (V(s_{t+1}) = values[t + 1] inside an episode)
    inside = ~ends[:-1]
    next_values[:-1][inside] = values[1:][inside]
    _, returns = gae_advantages(rewards, values, next_values, terminated, ends, gamma, 1.0)
    segment_end = ends.clone()
    segment_end[-1] = True
    bootstrap = torch.where(segment_end & ~terminated, next_values, 0)
    assert_close(returns, discounted_returns(rewards + gamma * bootstrap, segment_end, gamma))


def test_gae_does_not_leak_across_episode_ends():
    """Errata 3: with concatenated episodes, the next episode's rewards must not change A_t."""
    rewards, values, next_values = torch.ones(6, 1), torch.zeros(6, 1), torch.zeros(6, 1)
    ends = torch.tensor([0, 0, 1, 0, 0, 1], dtype=torch.bool)[:, None]
    before, _ = gae_advantages(rewards, values, next_values, ends, ends, 0.99, 0.95)
    rewards[3:] = 100.0
    after, _ = gae_advantages(rewards, values, next_values, ends, ends, 0.99, 0.95)
    assert_close(after[:3], before[:3])


def test_gae_envs_are_independent_and_trailing_dims_work():
    gen = generator(3)
    args = random_episodes((5, 6), torch.float64, gen)
    full, _ = gae_advantages(*args, 0.9, 0.9)
    perm = torch.randperm(6, generator=gen)
    permuted, _ = gae_advantages(*(a[:, perm] for a in args), 0.9, 0.9)
    assert_close(permuted, full[:, perm])
    reshaped, _ = gae_advantages(*(a.reshape(5, 2, 3) for a in args), 0.9, 0.9)
    assert_close(reshaped, full.reshape(5, 2, 3))


def test_gae_dtypes():
    gen = generator(4)
    args64 = random_episodes((6, 2), torch.float64, gen)
    for half in (torch.bfloat16, torch.float16):
        args = [a.to(half) if a.is_floating_point() else a for a in args64]
        advantages, returns = gae_advantages(*args, 0.9, 0.95)
        assert advantages.dtype == returns.dtype == torch.float32
        expected, _ = ref.gae_advantages(*args, 0.9, 0.95)
        assert_close(advantages, expected, rtol=1e-5, atol=1e-5)


def test_gae_huge_finite_inputs_are_not_rejected():
    """δ's sum overflows to inf here, yet every input is finite: no ValueError."""
    rewards = torch.full((2, 1), 3e38)
    zeros, no = torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.bool)
    advantages, _ = gae_advantages(rewards, zeros, zeros, no, no, gamma=0.9, gae_lambda=0.0)
    assert_close(advantages, rewards)


def test_gae_autograd_through_values_ignores_nan_bootstraps():
    rewards, values, next_values, terminated, ends = random_episodes((5, 3), torch.float64, generator(5))
    values.requires_grad_(True)
    advantages, _ = gae_advantages(rewards, values, next_values, terminated, ends, 0.9, 0.9)
    (grad,) = torch.autograd.grad(advantages.sum(), values)
    assert torch.isfinite(grad).all()
    # ∂A_t/∂V(s_t) = −1 (only δ_t contains −V(s_t))
    assert (grad <= -1 + 1e-12).all()


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"gamma": -0.1}, "gamma"),
        ({"gae_lambda": 1.01}, "gae_lambda"),
        ({"gamma": math.nan}, "gamma"),
        ({"values": torch.zeros(3, 1)}, "values"),
        ({"next_values": torch.zeros(4, 2)}, "next_values"),
        ({"rewards": torch.tensor([[1.0, NAN]] * 3)}, "rewards"),
        ({"values": torch.tensor([[1.0, math.inf]] * 3)}, "values"),
        ({"next_values": torch.tensor([[1.0, NAN]] * 3)}, "next_values"),  # not terminated there
        ({"next_values": torch.tensor([[1.0, math.inf]] * 3), "gamma": 0.0}, "next_values"),
        ({"values": torch.tensor([[1.0, -math.inf]] * 3), "rewards": torch.tensor([[1.0, -math.inf]] * 3)}, "rewards"),
        ({"terminated": torch.tensor([[True, False]] * 3)}, "terminated"),  # terminated but no end
        ({"episode_ends": torch.full((3, 2), 2)}, "episode_ends"),
        ({"rewards": [[1.0, 1.0]] * 3}, "rewards"),
    ],
)
def test_gae_bad_input_names_the_argument(change, name):
    args = dict(
        rewards=torch.ones(3, 2), values=torch.zeros(3, 2), next_values=torch.zeros(3, 2),
        terminated=torch.zeros(3, 2, dtype=torch.bool), episode_ends=torch.zeros(3, 2, dtype=torch.bool),
        gamma=0.9, gae_lambda=0.95,
    )
    args.update(change)
    with pytest.raises(ValueError, match=f"^{name}"):
        gae_advantages(**args)
