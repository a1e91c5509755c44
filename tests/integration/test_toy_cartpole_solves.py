"""The tuned CartPole preset, seeded, reaches a mean return of 475 over 20 episodes."""

from __future__ import annotations

import pytest

from ppo_lab.toy.ppo import PRESETS, train


@pytest.mark.slow
def test_tuned_cartpole_preset_solves():
    config = PRESETS["cartpole"][1]
    result = train(config)
    returns = [e["return"] for e in result.episodes]
    means = [sum(returns[i - 20:i]) / 20 for i in range(20, len(returns) + 1)]
    assert max(means) >= 475, f"best mean of 20 episodes: {max(means):.1f}"
    assert means[-1] >= 475, f"final mean of 20 episodes: {means[-1]:.1f}"
    assert result.history[-1]["global_step"] <= config.total_timesteps == 100_000
