"""ppo_lab.toy.rollout: truncation bootstrapping and ghost-step masking, checked against hand
values on a tiny known-reward env; CartPole's vector env behaves as assumed; env state restores.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from ppo_lab.core import gae_advantages
from ppo_lab.toy.rollout import (collect_rollout, load_vector_env_state, make_vector_env,
                                 reset_rollout_state, vector_env_state)


class CountingEnv(gym.Env):
    """Test fixture: reward 1 every step; the observation is [k] with k = steps taken in the
    episode. After 3 steps the episode is truncated (a time limit) or, with
    ``terminate=True``, terminated."""

    observation_space = gym.spaces.Box(0.0, 10.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, terminate: bool = False, length: int = 3):
        self.terminate, self.length, self.k = terminate, length, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.k += 1
        end = self.k >= self.length
        return (np.array([self.k], np.float32), 1.0, end and self.terminate,
                end and not self.terminate, {})


class LinearValueAgent:
    """Stands in for ActorCritic: always action 0, log-prob 0, and V(s) = 10·k + 1, so a
    bootstrap from the final observation (k = 3, V = 31) is told apart from one from the next
    episode's first observation (k = 0, V = 1)."""

    continuous = False

    def get_value(self, obs):
        return 10 * obs[:, 0] + 1

    def act(self, obs):
        n = obs.shape[0]
        return torch.zeros(n, dtype=torch.int64), torch.zeros(n), self.get_value(obs)


def _rollout(terminate: bool, num_envs: int = 2, num_steps: int = 8):
    envs = SyncVectorEnv([lambda: CountingEnv(terminate)] * num_envs,
                         autoreset_mode=AutoresetMode.NEXT_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    state = reset_rollout_state(envs, seed=0, device="cpu")
    batch = collect_rollout(envs, LinearValueAgent(), state, num_steps)
    return batch, state


GAMMA, LAMBDA = 0.9, 0.8


def test_truncation_bootstraps_from_the_final_observation():
    batch, state = _rollout(terminate=False)
    # Time line of each env: k = 0, 1, 2 (truncated after this step), ghost at k = 3, then again.
    k = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3.0])
    mask = torch.tensor([1, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    truncated = torch.tensor([0, 0, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    for n in range(2):
        torch.testing.assert_close(batch.obs[:, n, 0], k)
        assert torch.equal(batch.mask[:, n], mask)
        assert torch.equal(batch.truncated[:, n], truncated)
        assert not batch.terminated[:, n].any()
        torch.testing.assert_close(batch.rewards[:, n], mask.float())  # ghost steps pay 0
        torch.testing.assert_close(batch.values[:, n], 10 * k + 1)
        # next_values at the truncation (t = 2) is V(final obs, k = 3) = 31, not V(k = 0) = 1;
        # after the rollout it bootstraps from the next observation (a fresh episode, k = 0).
        torch.testing.assert_close(batch.next_values[:, n],
                                   torch.tensor([11, 21, 31, 1, 11, 21, 31, 1.0]))
    assert state.global_step == 16 and state.ghost.tolist() == [False, False]
    assert batch.episode_returns == [3.0] * 4 and batch.episode_lengths == [3] * 4
    assert batch.episode_steps == [6, 6, 14, 14]

    advantages, returns = gae_advantages(
        rewards=batch.rewards, values=batch.values, next_values=batch.next_values,
        terminated=batch.terminated, episode_ends=batch.episode_ends,
        gamma=GAMMA, gae_lambda=LAMBDA)
    # By hand: δ_t = r_t + γ V(s_{t+1}) − V(s_t) = 9.9, 8.9, 7.9 for k = 0, 1, 2;
    # A_2 = 7.9 (episode end), A_1 = 8.9 + 0.72·7.9 = 14.588, A_0 = 9.9 + 0.72·14.588 = 20.40336.
    expected = torch.tensor([20.40336, 14.588, 7.9, 20.40336, 14.588, 7.9])
    real = mask
    for n in range(2):
        torch.testing.assert_close(advantages[real, n], expected)
        torch.testing.assert_close(returns[real, n], expected + 10 * k[real] + 1)


def test_termination_does_not_bootstrap():
    batch, _ = _rollout(terminate=True)
    terminated = torch.tensor([0, 0, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    assert torch.equal(batch.terminated[:, 0], terminated)
    assert not batch.truncated.any()
    advantages, _ = gae_advantages(
        rewards=batch.rewards, values=batch.values, next_values=batch.next_values,
        terminated=batch.terminated, episode_ends=batch.episode_ends,
        gamma=GAMMA, gae_lambda=LAMBDA)
    # δ_2 = 1 − 21 = −20 (no future), A_1 = 8.9 + 0.72·(−20) = −5.5, A_0 = 9.9 + 0.72·(−5.5) = 5.94
    expected = torch.tensor([5.94, -5.5, -20.0])
    torch.testing.assert_close(advantages[:3, 0], expected)
    torch.testing.assert_close(advantages[4:7, 1], expected)


def test_ghost_state_carries_across_rollouts():
    envs = SyncVectorEnv([lambda: CountingEnv()], autoreset_mode=AutoresetMode.NEXT_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    state = reset_rollout_state(envs, seed=0, device="cpu")
    first = collect_rollout(envs, LinearValueAgent(), state, 3)  # ends exactly on the truncation
    assert state.ghost.tolist() == [True]
    torch.testing.assert_close(first.next_values[-1], torch.tensor([31.0]))  # V(final obs)
    second = collect_rollout(envs, LinearValueAgent(), state, 2)
    assert second.mask[:, 0].tolist() == [False, True]  # the ghost opens the next rollout


def test_cartpole_vector_env_ghost_steps():
    """gymnasium's numpy CartPole autoresets on the next step: reward 0, flags False there."""
    torch.manual_seed(0)
    envs = make_vector_env("CartPole-v1", 8)
    assert type(envs.unwrapped).__name__ == "CartPoleVectorEnv"  # the vector_entry_point
    state = reset_rollout_state(envs, seed=0, device="cpu")

    class RandomAgent(LinearValueAgent):
        def act(self, obs):
            actions = torch.randint(0, 2, (obs.shape[0],))
            return actions, torch.zeros(obs.shape[0]), self.get_value(obs)

    batch = collect_rollout(envs, RandomAgent(), state, 200)
    ends = batch.episode_ends
    assert ends.sum() > 50
    # Exactly the steps after an episode end are ghosts.
    assert torch.equal(~batch.mask[1:], ends[:-1])
    assert batch.mask[0].all()
    assert (batch.rewards[~batch.mask] == 0).all() and (batch.rewards[batch.mask] == 1).all()
    assert not ends[~batch.mask].any()
    # Every finished episode is reported once, with its true length (= its reward).
    assert len(batch.episode_returns) == int(ends.sum())
    assert batch.episode_returns == [float(n) for n in batch.episode_lengths]
    assert sum(batch.episode_lengths) <= int(batch.mask.sum())
    envs.close()


@pytest.mark.parametrize("env_id, normalize", [("CartPole-v1", False), ("Pendulum-v1", True)])
def test_env_state_roundtrip(tmp_path, env_id, normalize):
    """A fresh env loaded with a saved state continues exactly as the original."""
    rng = np.random.default_rng(0)

    def build():
        envs = make_vector_env(env_id, 3, normalize_obs=normalize, normalize_reward=normalize)
        envs.reset(seed=1)
        return envs

    def actions(envs, n):
        return [envs.action_space.sample() for _ in range(n)]

    original = build()
    original.action_space.seed(0)
    for a in actions(original, int(rng.integers(30, 60))):
        original.step(a)
    torch.save(vector_env_state(original), tmp_path / "env.pt")
    future = actions(original, 300)  # long enough to cross episode ends
    expected = [original.step(a)[:4] for a in future]

    restored = build()
    for a in actions(restored, 5):  # a different history, then overwritten
        restored.step(a)
    load_vector_env_state(restored, torch.load(tmp_path / "env.pt", weights_only=True))
    for a, want in zip(future, expected, strict=True):
        got = restored.step(a)[:4]
        for x, y in zip(got, want, strict=True):
            np.testing.assert_array_equal(x, y)


def test_env_state_checks_the_env_type():
    state = vector_env_state(make_vector_env("CartPole-v1", 2))
    with pytest.raises(ValueError, match="^env_state: "):
        load_vector_env_state(make_vector_env("Pendulum-v1", 2), state)


def test_async_vector_env_collects():
    envs = make_vector_env("CartPole-v1", 2, vectorization_mode="async")
    assert type(envs.unwrapped).__name__ == "AsyncVectorEnv"
    state = reset_rollout_state(envs, seed=0, device="cpu")
    batch = collect_rollout(envs, LinearValueAgent(), state, 40)  # always push left: ~10 steps
    assert batch.obs.shape == (40, 2, 4) and (~batch.mask).sum() >= 2
    assert torch.equal(~batch.mask[1:], batch.episode_ends[:-1])
    with pytest.raises(ValueError, match="^vectorization_mode: "):
        vector_env_state(envs)
    envs.close()


def test_make_vector_env_modes():
    assert type(make_vector_env("CartPole-v1", 2, vectorization_mode="sync").unwrapped) is SyncVectorEnv
    assert type(make_vector_env("Pendulum-v1", 2).unwrapped) is SyncVectorEnv  # no vector entry point
    with pytest.raises(ValueError, match="^vectorization_mode: "):
        make_vector_env("CartPole-v1", 2, vectorization_mode="threads")
