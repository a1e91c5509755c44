"""The KL-penalty variant of PPO in ppo_lab.toy.ppo (L^KLPEN, Schulman et al. 2017 §4): the
β rule by hand, the term in the loss, β in the log, the preset (β in the checkpoint:
test_toy_ppo.py::test_resume_in_process_matches[kl-penalty])."""

from __future__ import annotations

import math

import pytest

from ppo_lab.toy.ppo import PRESETS, PPOConfig, adapt_kl_coef, train

SMALL = PPOConfig(env_id="CartPole-v1", seed=3, total_timesteps=2048, num_envs=4, num_steps=64,
                  num_minibatches=4, ppo_epochs=4, learning_rate=3e-3)
KLPEN = SMALL.replace(clip_eps=None, kl_penalty=True, kl_coef=1.0, kl_target=0.01)


@pytest.mark.parametrize("kl, expected", [
    (0.001, 0.5),           # d < d_targ / 1.5: halve
    (0.01 / 1.5 - 1e-9, 0.5),
    (0.01 / 1.5 + 1e-9, 1.0),  # inside [d_targ / 1.5, 1.5 d_targ]: keep
    (0.01, 1.0),
    (0.015 - 1e-9, 1.0),
    (0.015 + 1e-9, 2.0),    # d > 1.5 d_targ: double
    (0.5, 2.0),
])
def test_adapt_kl_coef_is_the_papers_rule(kl, expected):
    assert adapt_kl_coef(1.0, kl, 0.01) == expected
    assert adapt_kl_coef(0.25, kl, 0.01) == 0.25 * expected


def test_beta_follows_the_rule_and_is_logged():
    result = train(KLPEN)
    betas = [row["objective/kl_coef"] for row in result.history]
    assert betas[0] == 1.0 and all(math.isfinite(row["policy/kl"]) for row in result.history)
    # between two updates β changes by the factor the rule gives for the KL the update reached
    assert all(b / a in (0.5, 1.0, 2.0) for a, b in zip(betas, betas[1:]))
    assert len(set(betas)) > 1  # it does adapt
    # a target no update can reach from above: β halves after every update
    halving = train(KLPEN.replace(kl_target=10.0, total_timesteps=1024))
    assert [row["objective/kl_coef"] for row in halving.history] == [1.0, 0.5, 0.25, 0.125]
    fixed = train(KLPEN.replace(kl_target=None, kl_coef=0.3, total_timesteps=1024))
    assert [row["objective/kl_coef"] for row in fixed.history] == [0.3] * 4
    plain = train(SMALL.replace(total_timesteps=1024))  # off: no KL term, no β column
    assert all("policy/kl" not in row and "objective/kl_coef" not in row for row in plain.history)


def test_a_large_beta_holds_the_policy_near_the_old_one():
    """Same data, same seed, clipping off: β = 100 keeps KL(π_old‖π_θ) far below β = 0."""
    base = SMALL.replace(clip_eps=None, ppo_epochs=8, learning_rate=1e-2, total_timesteps=1024)
    free = train(base)
    held = train(base.replace(kl_penalty=True, kl_coef=100.0, kl_target=None))
    free_kl = [row["policy/approx_kl"] for row in free.history]
    held_kl = [row["policy/approx_kl"] for row in held.history]
    assert free_kl[0] > 5 * held_kl[0]  # the first update starts from the same weights and data
    assert max(held_kl) < max(free_kl)


def test_bad_kl_fields_name_the_field():
    with pytest.raises(ValueError, match="^kl_coef: "):
        SMALL.replace(kl_coef=0.0)
    with pytest.raises(ValueError, match="^kl_target: "):
        SMALL.replace(kl_target=-0.01)


def test_preset_is_the_tuned_cartpole_with_the_penalty_instead_of_clipping():
    _, klpen = PRESETS["cartpole-klpen"]
    _, clipped = PRESETS["cartpole"]
    changed = {k for k, v in klpen.to_dict().items() if clipped.to_dict()[k] != v}
    assert changed == {"clip_eps", "kl_penalty"}
    assert klpen.clip_eps is None and klpen.kl_penalty and klpen.kl_target == 0.01
