"""§2 importance ratios, L^CPI, KL estimators (exact expectations), §7 KL controllers."""

import math

import pytest
import torch
from core_helpers import core_settings, dtypes, generator, random_mask, seeds, shapes_2d, tol
from hypothesis import given, strategies as st
from torch.testing import assert_close

from ppo_lab import (
    AdaptiveKLController,
    FixedKLController,
    cpi_surrogate_loss,
    kl_estimate,
    logprobs_from_logits,
    reinforce_loss,
    trajectory_ratio,
)
from ppo_lab.core import reference as ref

F64 = torch.float64


# --- kl_estimate --------------------------------------------------------------------------------


@core_settings
@given(shape=shapes_2d, dtype=dtypes, seed=seeds, kind=st.sampled_from(["k1", "k2", "k3"]))
def test_kl_estimate_matches_loop(shape, dtype, seed, kind):
    gen = generator(seed)
    logprobs, ref_logprobs = -2 * torch.rand((2, *shape), generator=gen, dtype=dtype)
    out = kl_estimate(logprobs=logprobs, ref_logprobs=ref_logprobs, kind=kind)
    assert out.dtype == dtype and out.shape == logprobs.shape
    assert_close(out, ref.kl_estimate(logprobs, ref_logprobs, kind), **tol(dtype))


def _two_categoricals():
    gen = generator(1)
    logits = torch.randn(6, generator=gen, dtype=F64, requires_grad=True)
    ref_logits = torch.randn(6, generator=gen, dtype=F64)
    return logits, torch.log_softmax(ref_logits, -1)


def test_k1_and_k3_are_unbiased_and_k3_is_nonnegative():
    """§2, exactly: E_a~π[k(a)] = Σ_a π(a) k(a) = KL(π‖π_ref) for k1 and k3; not for k2."""
    logits, ref_logp = _two_categoricals()
    logp = torch.log_softmax(logits, -1).detach()
    probs = logp.exp()
    kl = (probs * (logp - ref_logp)).sum()
    assert_close((probs * kl_estimate(logp, ref_logp, "k1")).sum(), kl)
    assert_close((probs * kl_estimate(logp, ref_logp, "k3")).sum(), kl)
    assert not torch.isclose((probs * kl_estimate(logp, ref_logp, "k2")).sum(), kl)
    assert (kl_estimate(logp, ref_logp, "k3") >= 0).all()


def test_k2_expected_gradient_is_the_kl_gradient():
    """§2: as a loss on samples of π, E[∇ ½ d²] = ∇ KL(π‖π_ref) (the sampling weights fixed)."""
    logits, ref_logp = _two_categoricals()
    probs = torch.softmax(logits, -1).detach()
    actions = torch.arange(6)
    logp = logprobs_from_logits(logits.expand(6, 6), actions)
    (expected,) = torch.autograd.grad((probs * kl_estimate(logp, ref_logp, "k2")).sum(), logits)
    full_logp = torch.log_softmax(logits, -1)
    (exact,) = torch.autograd.grad((full_logp.exp() * (full_logp - ref_logp)).sum(), logits)
    assert_close(expected, exact)


def test_k3_is_accurate_near_zero():
    d = torch.tensor([1e-9, -1e-9], dtype=F64)
    out = kl_estimate(d, torch.zeros(2, dtype=F64), "k3")
    assert_close(out, d**2 / 2, rtol=1e-6, atol=0)  # exp(−d) − 1 + d ≈ d²/2, not rounding noise


def test_kl_estimate_bad_input():
    with pytest.raises(ValueError, match="^kind"):
        kl_estimate(torch.zeros(2), torch.zeros(2), kind="k4")
    with pytest.raises(ValueError, match="^ref_logprobs: shape"):
        kl_estimate(torch.zeros(2), torch.zeros(3))


def test_kl_estimate_half_inputs_give_float32():
    out = kl_estimate(torch.zeros(3, dtype=torch.bfloat16), torch.full((3,), -0.5, dtype=torch.bfloat16), "k3")
    assert out.dtype == torch.float32
    assert_close(out, torch.full((3,), math.exp(-0.5) - 1 + 0.5))


# --- ratios and L^CPI ---------------------------------------------------------------------------


@core_settings
@given(shape=shapes_2d, dtype=dtypes, seed=seeds)
def test_cpi_and_trajectory_ratio_match_loop(shape, dtype, seed):
    gen = generator(seed)
    logprobs, old_logprobs, advantages = -torch.rand((3, *shape), generator=gen, dtype=dtype)
    mask = random_mask(shape, gen)
    loss, stats = cpi_surrogate_loss(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    ref_loss, ref_stats = ref.cpi_surrogate_loss(logprobs, old_logprobs, advantages, mask)
    assert loss.dtype == dtype
    assert_close(loss, ref_loss, **tol(dtype))
    assert stats["approx_kl"] == pytest.approx(ref_stats["approx_kl"], rel=1e-4, abs=1e-6)
    ratio = trajectory_ratio(logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    assert ratio.shape == shape[1:]
    assert_close(ratio, ref.trajectory_ratio(logprobs, old_logprobs, mask), **tol(dtype))


def test_cpi_gradient_at_old_policy_is_the_policy_gradient():
    """§2: at θ = θ_old, ∇L^CPI = ∇ of the REINFORCE surrogate with the same advantages."""
    gen = generator(2)
    logits = torch.randn(8, 3, generator=gen, dtype=F64, requires_grad=True)
    actions = torch.randint(3, (8,), generator=gen)
    advantages = torch.randn(8, generator=gen, dtype=F64)
    logprobs = logprobs_from_logits(logits, actions)
    cpi_loss, _ = cpi_surrogate_loss(logprobs, logprobs.detach(), advantages)
    (cpi_grad,) = torch.autograd.grad(cpi_loss, logits, retain_graph=True)
    (pg_grad,) = torch.autograd.grad(reinforce_loss(logprobs, advantages), logits)
    assert_close(cpi_grad, pg_grad)


def test_trajectory_ratio_by_hand():
    logprobs = torch.log(torch.tensor([[0.5], [0.2]], dtype=F64))
    old = torch.log(torch.tensor([[0.25], [0.4]], dtype=F64))
    assert_close(trajectory_ratio(logprobs, old), torch.tensor([1.0], dtype=F64))  # 2 · ½
    mask = torch.tensor([[True], [False]])
    assert_close(trajectory_ratio(logprobs, old, mask), torch.tensor([2.0], dtype=F64))


# --- KL controllers -----------------------------------------------------------------------------


def test_adaptive_kl_controller_by_hand():
    """Ziegler et al. 2019: e = clip(KL/target − 1, ±0.2), β ← β(1 + e·n/horizon)."""
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    assert ctl.update(current_kl=12.0, n_steps=256) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10_000))
    value = ctl.value
    assert ctl.update(current_kl=6.6, n_steps=100) == pytest.approx(value * (1 + 0.1 * 100 / 10_000))
    value = ctl.value
    assert ctl.update(current_kl=torch.tensor(0.0), n_steps=50) == pytest.approx(value * (1 - 0.2 * 50 / 10_000))
    restored = AdaptiveKLController(0.2, 6.0, 10_000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value


def test_fixed_kl_controller_never_changes():
    ctl = FixedKLController(kl_coef=0.05)
    for kl in (0.0, 100.0, -3.0):
        assert ctl.update(kl, 8) == 0.05
    assert ctl.state_dict() == {"value": 0.05}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: AdaptiveKLController(0.0, 6.0, 1000), "^init_kl_coef"),
        (lambda: AdaptiveKLController(0.1, -1.0, 1000), "^target"),
        (lambda: AdaptiveKLController(0.1, 6.0, 0), "^horizon"),
        (lambda: FixedKLController(-0.1), "^kl_coef"),
        (lambda: AdaptiveKLController(0.1, 6.0, 1000).update(math.nan, 4), "^current_kl"),
        (lambda: AdaptiveKLController(0.1, 6.0, 1000).update(1.0, 0), "^n_steps"),
        (lambda: FixedKLController(0.1).update(1.0, 2.5), "^n_steps"),
    ],
)
def test_controller_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
