"""§3 L^CLIP, value clipping and the full loss: loop twins, gradients by case, masks."""

import math

import pytest
import torch
from core_helpers import core_settings, dtypes, generator, random_mask, seeds, shapes_2d, tol
from hypothesis import given, strategies as st
from torch.testing import assert_close

from ppo_lab import (clipped_surrogate_loss, clipped_value_loss, cpi_surrogate_loss, kl_estimate,
                     ppo_loss)
from ppo_lab.core import reference as ref

F64 = torch.float64


def random_batch(shape, dtype, gen):
    old_logprobs = -torch.rand(shape, generator=gen, dtype=dtype) * 3
    logprobs = old_logprobs + 0.4 * torch.randn(shape, generator=gen, dtype=dtype)  # ratios ~ 0.5–2
    advantages, values, returns, entropy = torch.randn((4, *shape), generator=gen, dtype=dtype)
    old_values = values + 0.3 * torch.randn(shape, generator=gen, dtype=dtype)
    return dict(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages,
        values=values, old_values=old_values, returns=returns, entropy=entropy.abs(),
    )


# --- clipped_surrogate_loss ---------------------------------------------------------------------


@core_settings
@given(shape=shapes_2d, dtype=dtypes, seed=seeds, clip_eps=st.floats(0.01, 0.5), masked=st.booleans())
def test_clipped_surrogate_matches_loop(shape, dtype, seed, clip_eps, masked):
    gen = generator(seed)
    b = random_batch(shape, dtype, gen)
    mask = random_mask(shape, gen) if masked else None
    args = dict(logprobs=b["logprobs"], old_logprobs=b["old_logprobs"], advantages=b["advantages"])
    loss, stats = clipped_surrogate_loss(**args, clip_eps=clip_eps, mask=mask)
    ref_loss, ref_stats = ref.clipped_surrogate_loss(**args, clip_eps=clip_eps, mask=mask)
    assert loss.dtype == dtype and loss.dim() == 0
    assert_close(loss, ref_loss, **tol(dtype))
    assert stats.keys() == {"clip_fraction", "approx_kl"}
    assert all(type(v) is float for v in stats.values())
    assert stats["clip_fraction"] == pytest.approx(ref_stats["clip_fraction"], abs=1e-6)
    assert stats["approx_kl"] == pytest.approx(ref_stats["approx_kl"], rel=1e-4, abs=1e-6)
    assert stats["approx_kl"] >= 0


def test_clipped_surrogate_gradient_by_case():
    """§3: the gradient is −A·ρ/n where the unclipped term is the min, 0 where the clipped one is."""
    eps = 0.2
    ratio = torch.tensor([0.5, 0.9, 1.1, 1.5] * 2, dtype=F64)
    advantages = torch.tensor([1.0] * 4 + [-1.0] * 4, dtype=F64)
    old_logprobs = torch.full((8,), -1.0, dtype=F64)
    logprobs = (old_logprobs + ratio.log()).requires_grad_(True)
    loss, stats = clipped_surrogate_loss(logprobs, old_logprobs, advantages, clip_eps=eps)
    loss.backward()
    # A > 0, ρ > 1 + ε and A < 0, ρ < 1 − ε: the clipped term is smaller, no gradient
    flat = torch.tensor([False, False, False, True, True, False, False, False])
    expected_grad = torch.where(flat, 0.0, -advantages * ratio / 8)
    assert_close(logprobs.grad, expected_grad)
    bounded = ratio.clamp(1 - eps, 1 + eps)
    assert_close(loss, -torch.minimum(ratio * advantages, bounded * advantages).mean())
    assert stats["clip_fraction"] == 0.5  # |ρ − 1| > ε at 0.5 and 1.5: a superset of `flat`


def test_clipping_is_inactive_at_the_old_policy():
    """At θ = θ_old (first minibatch of an update) L^CLIP and L^CPI agree, gradients too."""
    b = random_batch((6, 3), F64, generator(1))
    logprobs = b["old_logprobs"].clone().requires_grad_(True)
    clip_loss, stats = clipped_surrogate_loss(logprobs, b["old_logprobs"], b["advantages"], clip_eps=0.2)
    (clip_grad,) = torch.autograd.grad(clip_loss, logprobs)
    cpi_loss, _ = cpi_surrogate_loss(logprobs, b["old_logprobs"], b["advantages"])
    (cpi_grad,) = torch.autograd.grad(cpi_loss, logprobs)
    assert_close(clip_loss, cpi_loss)
    assert_close(clip_grad, cpi_grad)
    assert stats == {"clip_fraction": 0.0, "approx_kl": 0.0}


def test_clipped_surrogate_ignores_nan_at_dropped_positions():
    logprobs = torch.tensor([[-1.0, math.nan]], requires_grad=True)
    old = torch.tensor([[-1.0, math.inf]])
    advantages = torch.tensor([[2.0, math.nan]])
    mask = torch.tensor([[True, False]])
    loss, stats = clipped_surrogate_loss(logprobs, old, advantages, clip_eps=0.2, mask=mask)
    loss.backward()
    assert loss.item() == -2.0 and math.isfinite(stats["approx_kl"])
    assert logprobs.grad.tolist() == [[-2.0, 0.0]]


def test_old_logprobs_and_advantages_get_no_gradient():
    b = random_batch((4, 2), F64, generator(2))
    tensors = {k: b[k].clone().requires_grad_(True) for k in ("logprobs", "old_logprobs", "advantages")}
    loss, _ = clipped_surrogate_loss(**tensors, clip_eps=0.2)
    loss.backward()
    assert tensors["logprobs"].grad is not None
    assert tensors["old_logprobs"].grad is None and tensors["advantages"].grad is None


# --- clipped_value_loss -------------------------------------------------------------------------


@core_settings
@given(shape=shapes_2d, dtype=dtypes, seed=seeds, clip_eps=st.one_of(st.none(), st.floats(0.01, 1.0)))
def test_clipped_value_loss_matches_loop(shape, dtype, seed, clip_eps):
    gen = generator(seed)
    b = random_batch(shape, dtype, gen)
    mask = random_mask(shape, gen)
    args = dict(values=b["values"], old_values=b["old_values"], returns=b["returns"])
    loss, stats = clipped_value_loss(**args, clip_eps=clip_eps, mask=mask)
    ref_loss, ref_stats = ref.clipped_value_loss(**args, clip_eps=clip_eps, mask=mask)
    assert loss.dtype == dtype
    assert_close(loss, ref_loss, **tol(dtype))
    assert stats["clip_fraction"] == pytest.approx(ref_stats["clip_fraction"], abs=1e-6)


def test_clipped_value_loss_by_hand():
    old_values, returns = torch.zeros(2, dtype=F64), torch.full((2,), 2.0, dtype=F64)
    # v moved 1 and 3 away from v_old = 0 (ε = 0.5): clipped v = 0.5, (0.5 − 2)² = 2.25 > (v − 2)² = 1
    values = torch.tensor([1.0, 3.0], dtype=F64, requires_grad=True)
    loss, stats = clipped_value_loss(values, old_values, returns, clip_eps=0.5)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * 2.25)
    assert values.grad.tolist() == [0.0, 0.0]  # the clipped branch is the max and is flat in v
    assert stats == {"clip_fraction": 1.0}
    # inside the clip range both branches agree: gradient (v − R)/n
    values = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    loss, stats = clipped_value_loss(values, old_values, returns, clip_eps=0.5)
    loss.backward()
    assert_close(values.grad, (values.detach() - returns) / 2)
    assert stats == {"clip_fraction": 0.0}
    # no clipping
    loss, stats = clipped_value_loss(torch.tensor([1.0, 3.0]), torch.zeros(2), torch.full((2,), 2.0), clip_eps=None)
    assert loss.item() == pytest.approx(0.5) and stats == {"clip_fraction": 0.0}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: clipped_surrogate_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), clip_eps=0.0), "^clip_eps"),
        (lambda: clipped_surrogate_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), clip_eps=None), "^clip_eps"),
        (lambda: clipped_surrogate_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), clip_eps=0.2), "^old_logprobs"),
        (lambda: clipped_surrogate_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.2, torch.zeros(2)), "^mask: no element"),
        (lambda: clipped_value_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), clip_eps=-1.0), "^clip_eps"),
        (lambda: clipped_value_loss(torch.zeros(2), torch.zeros(2), torch.zeros(1), clip_eps=None), "^returns"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- ppo_loss -----------------------------------------------------------------------------------


@core_settings
@given(shape=shapes_2d, dtype=dtypes, seed=seeds, vf_clip_eps=st.sampled_from([None, 0.2]),
       with_entropy=st.booleans(), with_kl=st.booleans())
def test_ppo_loss_matches_loop(shape, dtype, seed, vf_clip_eps, with_entropy, with_kl):
    gen = generator(seed)
    b = random_batch(shape, dtype, gen)
    if not with_entropy:
        b["entropy"] = None
    mask = random_mask(shape, gen)
    kl = torch.rand(shape, dtype=dtype, generator=gen) if with_kl else None
    coefs = dict(clip_eps=0.2, vf_clip_eps=vf_clip_eps, vf_coef=0.5, ent_coef=0.01, mask=mask,
                 kl=kl, kl_coef=0.3)
    loss, stats = ppo_loss(**b, **coefs)
    ref_loss, ref_stats = ref.ppo_loss(**b, **coefs)
    assert_close(loss, ref_loss, **tol(dtype))
    assert stats.keys() == ref_stats.keys()
    for key, value in ref_stats.items():
        assert stats[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_ppo_loss_is_the_sum_of_its_parts_and_backpropagates():
    b = random_batch((5, 4), F64, generator(3))
    for key in ("logprobs", "values", "entropy"):
        b[key].requires_grad_(True)
    loss, stats = ppo_loss(**b, clip_eps=0.2, vf_clip_eps=None, vf_coef=0.5, ent_coef=0.01)
    policy_loss, _ = clipped_surrogate_loss(b["logprobs"], b["old_logprobs"], b["advantages"], 0.2)
    value_loss, _ = clipped_value_loss(b["values"], b["old_values"], b["returns"], None)
    assert_close(loss, policy_loss + 0.5 * value_loss - 0.01 * b["entropy"].mean())
    assert stats["loss"] == pytest.approx(loss.item())
    loss.backward()
    assert_close(b["entropy"].grad, torch.full((5, 4), -0.01 / 20, dtype=F64))  # more entropy, lower loss
    assert all(b[k].grad is not None for k in ("logprobs", "values"))


def test_ppo_loss_kl_term_adds_beta_times_masked_mean_and_its_gradient():
    """L^KLPEN (PPO paper §4): the loss grows by kl_coef · mean(kl) over kept elements only."""
    b = random_batch((4, 3), F64, generator(5))
    logprobs = b["logprobs"].clone().requires_grad_(True)
    ref_logprobs = b["old_logprobs"] - 0.1
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[3] = False
    kl = kl_estimate(logprobs, ref_logprobs, kind="k3")
    kl = torch.where(mask, kl, torch.nan)  # dropped positions never reach the result
    base, base_stats = ppo_loss(**{**b, "logprobs": logprobs}, clip_eps=0.2, vf_clip_eps=None,
                                vf_coef=0.5, mask=mask)
    loss, stats = ppo_loss(**{**b, "logprobs": logprobs}, clip_eps=0.2, vf_clip_eps=None,
                           vf_coef=0.5, kl=kl, kl_coef=0.25, mask=mask)
    expected_kl = kl[mask].mean()
    assert_close(loss, base + 0.25 * expected_kl)
    assert stats["kl"] == pytest.approx(expected_kl.item())
    assert "kl" not in base_stats
    (grad,) = torch.autograd.grad(loss - base, logprobs)
    d = (logprobs - ref_logprobs).detach()
    expected = torch.where(mask, 0.25 * (1 - torch.exp(-d)) / mask.sum(), torch.zeros(()))
    assert_close(grad, expected)  # d/dd of k3 = 1 − e^{−d}
    # kl_coef = 0 keeps the term's value in stats but adds nothing to the loss
    zero, zero_stats = ppo_loss(**{**b, "logprobs": logprobs}, clip_eps=0.2, vf_clip_eps=None,
                                vf_coef=0.5, kl=kl, kl_coef=0.0, mask=mask)
    assert_close(zero, base)
    assert zero_stats["kl"] == pytest.approx(expected_kl.item())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kl_coef": -0.1}, "^kl_coef"),
        ({"kl": torch.zeros(2, 3)}, "^kl: shape"),
        ({"vf_clip_eps": 0.0}, "^vf_clip_eps"),
        ({"clip_eps": -0.1}, "^clip_eps"),
        ({"vf_coef": -1.0}, "^vf_coef"),
        ({"ent_coef": math.nan}, "^ent_coef"),
        ({"values": torch.zeros(3)}, "^values: shape"),
        ({"entropy": torch.zeros(3, 1)}, "^entropy: shape"),
    ],
)
def test_ppo_loss_bad_input(change, message):
    args = dict(random_batch((3, 2), torch.float32, generator(4)), clip_eps=0.2, vf_clip_eps=0.2, vf_coef=0.5)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        ppo_loss(**args)
