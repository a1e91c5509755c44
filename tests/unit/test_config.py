"""ppo_lab.config: the one batch-size derivation, and config validation that names the field."""

from __future__ import annotations

import re

import pytest

from ppo_lab.config import BatchSizes, check_field, derive_batch_sizes
from ppo_lab.toy.ppo import PRESETS, PPOConfig


def test_derive_batch_sizes_by_hand():
    assert derive_batch_sizes(num_envs=8, num_steps=32, num_minibatches=4,
                              total_timesteps=10_000) == BatchSizes(256, 64, 39)
    assert derive_batch_sizes(num_envs=3, num_steps=5, num_minibatches=15) == BatchSizes(15, 1, 0)


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_envs=8, num_steps=32, num_minibatches=3), "num_minibatches"),
    (dict(num_envs=0, num_steps=32, num_minibatches=1), "num_envs"),
    (dict(num_envs=8, num_steps=-1, num_minibatches=1), "num_steps"),
    (dict(num_envs=8, num_steps=32, num_minibatches=0), "num_minibatches"),
    (dict(num_envs=8, num_steps=32, num_minibatches=1.5), "num_minibatches"),
    (dict(num_envs=8, num_steps=32, num_minibatches=1, total_timesteps=100), "total_timesteps"),
])
def test_derive_batch_sizes_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        derive_batch_sizes(**kwargs)


def test_check_field():
    check_field(True, "gamma", "fine")
    with pytest.raises(ValueError, match=r"^gamma: must lie in \[0, 1\]$"):
        check_field(False, "gamma", "must lie in [0, 1]")


@pytest.mark.parametrize("changes, field", [
    (dict(gamma=1.5), "gamma"),
    (dict(gae_lambda=-0.1), "gae_lambda"),
    (dict(clip_eps=0.0), "clip_eps"),
    (dict(vf_clip_eps=-1.0), "vf_clip_eps"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(adam_eps=-1e-5), "adam_eps"),
    (dict(ent_coef=-0.01), "ent_coef"),
    (dict(vf_coef=-1.0), "vf_coef"),
    (dict(max_grad_norm=0.0), "max_grad_norm"),
    (dict(target_kl=-0.1), "target_kl"),
    (dict(num_envs=0), "num_envs"),
    (dict(num_steps=0), "num_steps"),
    (dict(ppo_epochs=0), "ppo_epochs"),
    (dict(num_minibatches=3), "num_minibatches"),  # 8 * 128 = 1024 is not divisible by 3
    (dict(total_timesteps=512), "total_timesteps"),  # less than one batch of 1024
    (dict(seed=-1), "seed"),
    (dict(hidden_sizes=()), "hidden_sizes"),
    (dict(hidden_sizes=(64, 0)), "hidden_sizes"),
    (dict(checkpoint_every=5), "run_dir"),
    (dict(resume=True), "run_dir"),
    (dict(vectorization_mode="async", checkpoint_every=1, run_dir="r"), "vectorization_mode"),
])
def test_ppo_config_names_the_bad_field(changes, field):
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}: "):
        PPOConfig(**changes)
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}: "):  # replace() validates too
        PPOConfig().replace(**changes)


def test_presets_are_valid_and_serialisable():
    for _description, config in PRESETS.values():
        config.validate()
        as_dict = config.to_dict()
        assert as_dict["hidden_sizes"] == list(config.hidden_sizes)
        assert PPOConfig(**{**as_dict, "hidden_sizes": tuple(as_dict["hidden_sizes"])}) == config
