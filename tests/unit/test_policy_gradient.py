"""§1 categorical log-probs and REINFORCE, §3 entropy: loop twins, gradients the chapters derive."""

import math

import pytest
import torch
from core_helpers import core_settings, dtypes, generator, random_mask, seeds, tol
from hypothesis import given, strategies as st
from torch.testing import assert_close

from ppo_lab import entropy_from_logits, logprobs_from_logits, reinforce_loss
from ppo_lab.core import policy_gradient
from ppo_lab.core import reference as ref

shapes_3d = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 9))  # [B, T, V]


@core_settings
@given(shape=shapes_3d, dtype=dtypes, seed=seeds)
def test_logprobs_and_entropy_match_loop_and_torch(shape, dtype, seed):
    gen = generator(seed)
    logits = 3 * torch.randn(shape, generator=gen, dtype=dtype)
    tokens = torch.randint(shape[-1], shape[:-1], generator=gen)
    logprobs = logprobs_from_logits(logits=logits, tokens=tokens)
    entropy = entropy_from_logits(logits=logits)
    assert logprobs.dtype == entropy.dtype == dtype
    assert logprobs.shape == entropy.shape == tokens.shape
    assert_close(logprobs, ref.logprobs_from_logits(logits, tokens), **tol(dtype))
    assert_close(entropy, ref.entropy_from_logits(logits), **tol(dtype))
    dist = torch.distributions.Categorical(logits=logits)
    assert_close(logprobs, dist.log_prob(tokens), **tol(dtype))
    assert_close(entropy, dist.entropy(), **tol(dtype))


def test_entropy_by_hand_and_masked_actions():
    assert_close(entropy_from_logits(torch.zeros(4)), torch.tensor(math.log(4)))
    logits = torch.tensor([0.0, 0.0, -math.inf], requires_grad=True)  # an impossible action
    entropy = entropy_from_logits(logits)
    assert_close(entropy, torch.tensor(math.log(2)))
    entropy.backward()
    assert torch.isfinite(logits.grad).all()


def test_logprob_gradient_is_onehot_minus_softmax():
    """§1: ∇_logits log softmax(logits)[a] = onehot(a) − softmax(logits)."""
    gen = generator(1)
    logits = torch.randn(5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(7, (5,), generator=gen)
    logprobs_from_logits(logits, tokens).sum().backward()
    expected = torch.nn.functional.one_hot(tokens, 7) - torch.softmax(logits.detach(), -1)
    assert_close(logits.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_and_large_logits_forms_agree(monkeypatch, dtype):
    """log_softmax-then-gather (small logits) and gather − logsumexp (large): same values and
    gradients, both equal to the loop reference."""
    gen = generator(3)
    logits = (3 * torch.randn(4, 6, 13, generator=gen, dtype=dtype)).requires_grad_(True)
    tokens = torch.randint(13, (4, 6), generator=gen)
    results = []
    for chunk in (policy_gradient._CHUNK_ELEMENTS, 3 * 13):  # default: small form; then large
        monkeypatch.setattr(policy_gradient, "_CHUNK_ELEMENTS", chunk)
        logprobs = logprobs_from_logits(logits, tokens)
        assert logprobs.dtype == dtype
        (grad,) = torch.autograd.grad(logprobs.square().sum(), logits)
        results.append((logprobs.detach(), grad))
        assert_close(logprobs, ref.logprobs_from_logits(logits.detach(), tokens), **tol(dtype))
    assert_close(results[0][0], results[1][0], **tol(dtype))
    assert_close(results[0][1], results[1][1], **tol(dtype))


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_logits_give_float32_and_are_chunked(monkeypatch, half):
    gen = generator(2)
    logits = (4 * torch.randn(3, 5, 11, generator=gen)).to(half)
    tokens = torch.randint(11, (3, 5), generator=gen)
    monkeypatch.setattr(policy_gradient, "_CHUNK_ELEMENTS", 2 * 11)  # 2 rows per chunk, 8 chunks
    logprobs, entropy = logprobs_from_logits(logits, tokens), entropy_from_logits(logits)
    assert logprobs.dtype == entropy.dtype == torch.float32
    # exactly the float32 computation on the same (rounded) logits
    assert_close(logprobs, logprobs_from_logits(logits.float(), tokens), rtol=1e-6, atol=1e-6)
    assert_close(entropy, entropy_from_logits(logits.float()), rtol=1e-6, atol=1e-6)
    logits.requires_grad_(True)
    logprobs_from_logits(logits, tokens).sum().backward()
    assert logits.grad.dtype == half and torch.isfinite(logits.grad).all()


def test_float64_logits_stay_float64_and_shift_is_the_callers():
    """§6: logits[:, :-1] predict ids[:, 1:]; the function gathers exactly where it is told."""
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]], dtype=torch.float64))
    ids = torch.tensor([[0, 1, 1]])
    out = logprobs_from_logits(logits[:, :-1], ids[:, 1:])
    assert out.dtype == torch.float64
    assert_close(out, torch.log(torch.tensor([[0.5, 0.1]], dtype=torch.float64)))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: logprobs_from_logits(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)), "^tokens: shape"),
        (lambda: logprobs_from_logits(torch.zeros(2, 3), torch.tensor([0, 3])), "^tokens: values"),
        (lambda: logprobs_from_logits(torch.zeros(2, 3), torch.tensor([-1, 0])), "^tokens: values"),
        (lambda: logprobs_from_logits(torch.zeros(2, 3), torch.zeros(2)), "^tokens: expected an integer"),
        (lambda: logprobs_from_logits(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long)), "^logits"),
        (lambda: entropy_from_logits(torch.zeros(2, 0)), "^logits"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- reinforce_loss -----------------------------------------------------------------------------


@core_settings
@given(T=st.integers(1, 10), N=st.integers(1, 4), dtype=dtypes, seed=seeds, with_baseline=st.booleans())
def test_reinforce_loss_matches_loop(T, N, dtype, seed, with_baseline):
    gen = generator(seed)
    logprobs, returns, baseline = -torch.rand((3, T, N), generator=gen, dtype=dtype)
    mask = random_mask((T, N), gen)
    baseline = baseline if with_baseline else None
    loss = reinforce_loss(logprobs=logprobs, returns=returns, baseline=baseline, mask=mask)
    assert loss.dtype == dtype and loss.dim() == 0
    assert_close(loss, ref.reinforce_loss(logprobs, returns, baseline, mask), **tol(dtype))


def test_reinforce_gradient_and_detached_weights():
    """−∇loss = mean[(G − b) · (onehot − softmax)]; no gradient reaches G or b."""
    gen = generator(3)
    logits = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(4, (6,), generator=gen)
    returns = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    baseline = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = reinforce_loss(logprobs_from_logits(logits, actions), returns, baseline)
    loss.backward()
    weights = (returns - baseline).detach()[:, None]
    score = torch.nn.functional.one_hot(actions, 4) - torch.softmax(logits.detach(), -1)
    assert_close(-logits.grad, weights * score / 6)
    assert returns.grad is None and baseline.grad is None


def test_baseline_leaves_the_expected_gradient_unchanged():
    """§1: E_a~π[b ∇log π(a)] = b Σ_a ∇π(a) = 0, checked exactly by enumerating a bandit."""
    logits = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor([1.0, 5.0, -2.0], dtype=torch.float64)
    actions = torch.arange(3)

    def expected_loss_gradient(baseline):
        """Σ_a π(a) ∇loss(a): the mean over infinitely many sampled actions."""
        probs = torch.softmax(logits, -1).detach()  # the sampling weights are not differentiated
        grads = [
            torch.autograd.grad(reinforce_loss(logprobs_from_logits(logits, a), rewards[a], baseline), logits)[0]
            for a in actions
        ]
        return (probs[:, None] * torch.stack(grads)).sum(0)

    (grad_J,) = torch.autograd.grad((torch.softmax(logits, -1) * rewards).sum(), logits)  # ∇J exactly
    assert_close(expected_loss_gradient(None), -grad_J)
    assert_close(expected_loss_gradient(torch.tensor(3.0, dtype=torch.float64)), -grad_J)


def test_reinforce_nan_at_dropped_positions():
    logprobs = torch.tensor([-1.0, math.nan], requires_grad=True)
    returns = torch.tensor([2.0, math.inf])
    loss = reinforce_loss(logprobs, returns, mask=torch.tensor([True, False]))
    loss.backward()
    assert loss.item() == 2.0
    assert logprobs.grad.tolist() == [-2.0, 0.0]


def test_reinforce_bad_input():
    with pytest.raises(ValueError, match="^returns: shape"):
        reinforce_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="^baseline: shape"):
        reinforce_loss(torch.zeros(3), torch.zeros(3), torch.zeros(1))
    with pytest.raises(ValueError, match="^mask: no element"):
        reinforce_loss(torch.zeros(3), torch.zeros(3), mask=torch.zeros(3))
