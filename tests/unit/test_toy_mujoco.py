"""The ``hopper`` preset is CleanRL's ppo_continuous_action.py configuration, and a MuJoCo task
without MuJoCo installed fails at once with the install command (the CLI exits with 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

from ppo_lab.toy.cli import main
from ppo_lab.toy.ppo import PRESETS
from ppo_lab.toy.rollout import make_vector_env

ROOT = Path(__file__).resolve().parents[2]


def test_hopper_preset_is_cleanrls_configuration():
    _, config = PRESETS["hopper"]
    cleanrl = dict(env_id="Hopper-v4", total_timesteps=1_000_000, num_envs=1, num_steps=2048,
                   num_minibatches=32, ppo_epochs=10, learning_rate=3e-4, anneal_lr=True,
                   gamma=0.99, gae_lambda=0.95, clip_eps=0.2, vf_clip_eps=0.2, norm_adv=True,
                   ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, target_kl=None, adam_eps=1e-5,
                   hidden_sizes=(64, 64), shared_trunk=False, init_log_std=0.0, normalize_obs=True,
                   clip_obs=10.0, normalize_reward=True, clip_reward=10.0, kl_penalty=False)
    assert {k: getattr(config, k) for k in cleanrl} == cleanrl


@pytest.fixture
def no_mujoco(monkeypatch):
    """Make ``import mujoco`` fail, as on a machine without the [mujoco] extra."""
    monkeypatch.setitem(sys.modules, "mujoco", None)
    for name in [m for m in sys.modules if m.startswith("gymnasium.envs.mujoco")]:
        monkeypatch.delitem(sys.modules, name)


def test_missing_mujoco_names_the_extra(no_mujoco):
    with pytest.raises(gym.error.DependencyNotInstalled, match=r"ppo-lab\[mujoco\]") as info:
        make_vector_env("Hopper-v4", 1)
    assert "env_id: 'Hopper-v4'" in str(info.value)
    make_vector_env("CartPole-v1", 1).close()  # other tasks are unaffected


def test_half_installed_mujoco_names_what_is_missing(monkeypatch):
    """MuJoCo without imageio (gymnasium's MuJoCo renderer imports it): the same clear error,
    naming imageio, not a ModuleNotFoundError from inside gymnasium."""
    monkeypatch.setitem(sys.modules, "imageio", None)
    for name in [m for m in sys.modules if m.startswith("gymnasium.envs.mujoco")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(gym.error.DependencyNotInstalled, match=r"imageio is not installed.*ppo-lab\[mujoco\]"):
        make_vector_env("Hopper-v4", 1)


def test_cli_exits_with_the_install_command(no_mujoco, capsys, tmp_path):
    assert main(["hopper", "--run-dir", str(tmp_path / "run")]) == 2
    assert "pip install 'ppo-lab[mujoco]'" in capsys.readouterr().err


def test_benchmark_script_fails_before_training_without_mujoco(tmp_path):
    """benchmarks/hopper.py stops with the install command instead of training a seed first
    (only where MuJoCo is absent, as in the book's toolchain)."""
    try:
        import mujoco  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("MuJoCo is installed here")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hopper.py"), "--seeds", "1"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 1
    assert "pip install 'ppo-lab[mujoco]'" in out.stderr
    assert not (ROOT / "ppo_lab" / "results" / "hopper.json").exists() or "seed 1" not in out.stdout
