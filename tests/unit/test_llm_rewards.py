"""Rewards of §6: Bradley–Terry, per-token rewards (terminal score − β·KL), the reference
mixture, score whitening/clipping and the seed's spread-over-tokens form (errata 4)."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from llm_helpers import loop_per_token_rewards

from ppo_lab.llm import (
    bradley_terry_loss,
    clip_scores,
    mixture_ref_logprobs,
    per_token_rewards,
    response_mask_from_lengths,
    spread_reward_over_tokens,
    whiten_scores,
)


def test_bradley_terry_by_hand():
    # margins 0 and ln 3: σ = 1/2 and 3/4, so the loss is (ln 2 + ln 4/3) / 2
    loss, stats = bradley_terry_loss(torch.tensor([1.0, math.log(3.0)]), torch.tensor([1.0, 0.0]))
    assert math.isclose(loss.item(), (math.log(2) + math.log(4 / 3)) / 2, rel_tol=1e-6)
    assert stats == {"accuracy": 0.5, "margin": pytest.approx(math.log(3) / 2)}


def test_bradley_terry_gradient_is_minus_one_minus_sigma_over_b():
    chosen = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([0.1, 0.5, -3.0], dtype=torch.float64, requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected)
    loss.backward()
    expected = -(1 - torch.sigmoid(chosen - rejected)).detach() / 3  # d/dr_w of −log σ(r_w − r_l), averaged
    torch.testing.assert_close(chosen.grad, expected)
    torch.testing.assert_close(rejected.grad, -expected)
    assert torch.autograd.gradcheck(lambda c, r: bradley_terry_loss(c, r)[0], (chosen, rejected))
    big, _ = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0]))  # logsigmoid stays exact
    assert math.isclose(big.item(), 200.0, rel_tol=1e-6)


def _rollout(seed=0, B=4, T=6):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 1, 3, 5])[:B]
    mask = response_mask_from_lengths(lengths, T)
    logprobs = -torch.rand(B, T, generator=gen) * 3
    ref_logprobs = -torch.rand(B, T, generator=gen) * 3
    scores = torch.randn(B, generator=gen)
    return scores, logprobs, ref_logprobs, mask, lengths


def test_score_lands_on_the_last_real_token_and_nothing_on_padding():
    scores, logprobs, _, mask, lengths = _rollout()
    rewards, kl = per_token_rewards(scores, logprobs, logprobs.clone(), mask, lengths, kl_coef=0.1)
    assert (kl == 0).all()  # policy == reference: KL 0 at every token
    expected = torch.zeros_like(rewards)
    expected[torch.arange(4), lengths - 1] = scores
    torch.testing.assert_close(rewards, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kl_kind", ["k1", "k3"])
def test_kl_penalty_per_token_and_its_direction(kl_kind):
    scores, logprobs, ref_logprobs, mask, lengths = _rollout(1)
    beta = 0.2
    rewards, kl = per_token_rewards(scores, logprobs, ref_logprobs, mask, lengths, kl_coef=beta, kl_kind=kl_kind)
    d = logprobs - ref_logprobs
    per_token = d if kl_kind == "k1" else torch.exp(-d) - 1 + d
    torch.testing.assert_close(kl, torch.where(mask, per_token, 0.0))
    last = torch.zeros_like(mask)
    last[torch.arange(4), lengths - 1] = True
    torch.testing.assert_close(rewards, torch.where(mask, -beta * per_token, 0.0) + torch.where(last, scores[:, None], 0.0))
    # k1 is log π − log π_ref: positive where the policy puts MORE mass than the reference on its
    # sample — KL(π‖π_ref), not KL(π_ref‖π) (errata 5)
    up = torch.full((1, 2), -0.5), torch.full((1, 2), -2.0)
    _, kl_up = per_token_rewards(torch.zeros(1), *up, torch.ones(1, 2, dtype=torch.bool), torch.tensor([2]), 1.0, kl_kind)
    assert (kl_up > 0).all()


@settings(deadline=None, max_examples=30, derandomize=True)
@given(B=st.integers(1, 5), T=st.integers(1, 7), seed=st.integers(0, 2**31 - 1), kl_kind=st.sampled_from(["k1", "k3"]),
       kl_coef=st.floats(0.0, 2.0))
def test_per_token_rewards_equal_the_loop_twin(B, T, seed, kl_kind, kl_coef):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = response_mask_from_lengths(lengths, T)
    logprobs, ref_logprobs = -3 * torch.rand(B, T, generator=gen), -3 * torch.rand(B, T, generator=gen)
    scores = torch.randn(B, generator=gen)
    rewards, kl = per_token_rewards(scores, logprobs, ref_logprobs, mask, lengths, kl_coef, kl_kind)
    slow_rewards, slow_kl = loop_per_token_rewards(scores, logprobs, ref_logprobs, lengths, kl_coef, kl_kind)
    torch.testing.assert_close(rewards, slow_rewards, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl, slow_kl, rtol=1e-5, atol=1e-6)


def test_expected_k1_is_kl_of_policy_to_reference():
    """Sampling from π and averaging the k1 rewards' KL recovers KL(π‖π_ref) exactly (one step, two tokens)."""
    p, q = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5])
    tokens = torch.tensor([0, 1])
    logprobs, ref_logprobs = p.log()[tokens][None], q.log()[tokens][None]
    _, kl = per_token_rewards(torch.zeros(1), logprobs, ref_logprobs, torch.ones(1, 2, dtype=torch.bool),
                              torch.tensor([2]), 1.0)
    expected_kl = (kl[0] * p).sum()  # E_{a~π}[log π(a) − log π_ref(a)]
    assert math.isclose(expected_kl.item(), (p * (p / q).log()).sum().item(), rel_tol=1e-6)
    assert not math.isclose(expected_kl.item(), (q * (q / p).log()).sum().item(), rel_tol=1e-2)


def test_mixture_reference_endpoints_and_middle():
    sft, old = torch.tensor([-1.0, -2.0, -0.1]), torch.tensor([-3.0, -0.5, -0.1])
    assert torch.equal(mixture_ref_logprobs(sft, old, 1.0), sft)
    assert torch.equal(mixture_ref_logprobs(sft, old, 0.0), old)
    mid = mixture_ref_logprobs(sft, old, 0.25)
    torch.testing.assert_close(mid, (0.25 * sft.exp() + 0.75 * old.exp()).log())
    near_one = mixture_ref_logprobs(sft, old, 1 - 1e-12)
    torch.testing.assert_close(near_one, sft)  # continuous at the endpoint


def test_whiten_and_clip_scores():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0])
    white = whiten_scores(scores)
    torch.testing.assert_close(white.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(white.std(), torch.tensor(1.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(whiten_scores(scores, shift_mean=False).mean(), scores.mean())
    assert clip_scores(scores, 2.5).tolist() == [1.0, 2.0, 2.5, 2.5]
    assert clip_scores(-scores, 2.5).tolist() == [-1.0, -2.0, -2.5, -2.5]


def test_spread_reward_over_tokens_is_the_seed_form():
    scores = torch.tensor([3.0, -1.0])
    lengths = torch.tensor([3, 1])
    mask = response_mask_from_lengths(lengths, 4)
    spread = spread_reward_over_tokens(scores, mask, lengths)
    assert spread.tolist() == [[1.0, 1.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]
    terminal, _ = per_token_rewards(scores, torch.zeros(2, 4), torch.zeros(2, 4), mask, lengths, 0.0)
    torch.testing.assert_close(spread.sum(1), terminal.sum(1))  # same total, different placement
    assert not torch.equal(spread, terminal)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: bradley_terry_loss(torch.ones(2), torch.ones(3)), "rejected_scores"),
        (lambda: bradley_terry_loss(torch.tensor([float("nan")]), torch.ones(1)), "chosen_scores"),
        (lambda: bradley_terry_loss(torch.ones(2, 1), torch.ones(2, 1)), "chosen_scores"),
        (lambda: per_token_rewards(torch.ones(4), *_rollout()[1:], kl_coef=-1.0), "kl_coef"),
        (lambda: per_token_rewards(torch.ones(4), *_rollout()[1:], kl_coef=0.1, kl_kind="k9"), "kind"),
        (lambda: per_token_rewards(torch.ones(3), *_rollout()[1:], kl_coef=0.1), "scores"),
        (lambda: per_token_rewards(torch.tensor([1.0, float("inf"), 0, 0]), *_rollout()[1:], kl_coef=0.1), "scores"),
        (lambda: per_token_rewards(torch.ones(4), *_rollout()[1:3], torch.ones(4, 6, dtype=torch.bool),
                                   _rollout()[4], kl_coef=0.1), "response_mask"),
        (lambda: per_token_rewards(torch.ones(4), *_rollout()[1:4], torch.tensor([0, 1, 1, 1]), 0.1),
         "response_lengths"),
        (lambda: per_token_rewards(torch.ones(4), _rollout()[1], torch.zeros(4, 5), *_rollout()[3:], 0.1),
         "ref_logprobs"),
        (lambda: per_token_rewards(torch.ones(4), torch.zeros(4), torch.zeros(4), *_rollout()[3:], 0.1), "logprobs"),
        (lambda: per_token_rewards(torch.ones(4), *_rollout()[1:4], torch.tensor([1.0, 1, 1, 1]), 0.1),
         "response_lengths"),
        (lambda: per_token_rewards(torch.ones(4), *_rollout()[1:3], torch.ones(4, 5, dtype=torch.bool),
                                   _rollout()[4], 0.1), "response_mask"),
        (lambda: mixture_ref_logprobs(torch.zeros(2), torch.zeros(2), 1.5), "alpha"),
        (lambda: mixture_ref_logprobs(torch.zeros(2), torch.zeros(3), 0.5), "old_logprobs"),
        (lambda: clip_scores(torch.ones(2), 0.0), "clip"),
        (lambda: whiten_scores(torch.ones(1)), "scores"),
        (lambda: spread_reward_over_tokens(torch.ones(2), torch.ones(2, 3, dtype=torch.bool), torch.tensor([3, 2])),
         "response_mask"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
