"""The switches the implementation-details appendix ablates: each changes what it says it
changes (and nothing when it cannot matter)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ppo_lab.toy.networks import ActorCritic
from ppo_lab.toy.ppo import PRESETS, PPOConfig, train
from ppo_lab.toy.rollout import make_vector_env

SMALL = PPOConfig(env_id="CartPole-v1", seed=3, total_timesteps=1024, num_envs=4, num_steps=64,
                  num_minibatches=4, ppo_epochs=2, learning_rate=1e-3)


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.agent.state_dict().values(),
                                                 b.agent.state_dict().values()))


def test_whole_batch_advantage_normalisation():
    per_minibatch = train(SMALL)
    whole = train(SMALL.replace(norm_adv_per_minibatch=False))
    assert not _same_weights(per_minibatch, whole)  # M = 4: different normalisers
    # M = 1: the one minibatch is the batch, so the two are the same computation
    one = SMALL.replace(num_minibatches=1)
    assert _same_weights(train(one), train(one.replace(norm_adv_per_minibatch=False)))
    # norm_adv off: the flag has nothing to act on
    off = SMALL.replace(norm_adv=False)
    assert _same_weights(train(off), train(off.replace(norm_adv_per_minibatch=False)))


def test_ortho_init_off_is_torchs_default_initialisation():
    torch.manual_seed(0)
    ortho = ActorCritic(4, 2, continuous=False)
    torch.manual_seed(0)
    default = ActorCritic(4, 2, continuous=False, ortho_init=False)
    for first in (ortho.policy_net[0], ortho.value_net[0]):  # detail 2: gain √2, zero bias
        w = first.weight.detach()  # [out, in]: orthogonal columns
        torch.testing.assert_close(w.T @ w, 2.0 * torch.eye(4), atol=1e-5, rtol=0)
        assert torch.count_nonzero(first.bias) == 0
    assert ortho.policy_head.weight.abs().max() < 0.02  # gain 0.01: a near-uniform policy
    # off: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and biases, as nn.Linear would have
    d = default.policy_net[0]
    assert d.weight.abs().max() <= 0.5 and torch.count_nonzero(d.bias) > 0
    assert default.policy_head.weight.abs().max() > 0.05
    assert default.policy_head.weight.abs().max() <= 1 / math.sqrt(64)
    result = train(SMALL.replace(ortho_init=False))
    assert all(math.isfinite(v) for v in result.history[-1].values() if isinstance(v, float))


def test_observation_and_reward_clipping():
    envs = make_vector_env("Pendulum-v1", 2, normalize_obs=True, clip_obs=0.5,
                           normalize_reward=True, clip_reward=0.1)
    envs.reset(seed=0)
    seen_obs, seen_rewards = [], []
    for _ in range(60):
        obs, rewards, *_ = envs.step(np.full((2, 1), 2.0, dtype=np.float32))
        seen_obs.append(np.abs(obs).max())
        seen_rewards.append(np.abs(rewards).max())
    envs.close()
    assert max(seen_obs) == pytest.approx(0.5) and max(seen_rewards) == pytest.approx(0.1)
    config = PRESETS["pendulum"][1].replace(total_timesteps=2048, num_steps=256,
                                            num_minibatches=4, clip_obs=10.0, clip_reward=10.0)
    assert len(train(config).history) == 2
    with pytest.raises(ValueError, match="^clip_obs: "):
        config.replace(clip_obs=0.0)
