"""Kill a training process with SIGKILL mid-run, resume it in a fresh process: the final weights
are bit-identical (``torch.equal``) to those of a run that was never interrupted (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppo_lab.toy.ppo import CHECKPOINT_NAME, PPOConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = PPOConfig(env_id="CartPole-v1", seed=11, total_timesteps=60 * 256, num_envs=4,
                   num_steps=64, num_minibatches=2, ppo_epochs=10, learning_rate=1e-3,
                   checkpoint_every=3, normalize_obs=True, normalize_reward=True, run_dir="set-per-run")
SCRIPT = "import json, sys; from ppo_lab.toy.ppo import PPOConfig, train; " \
         "c = json.loads(sys.argv[1]); c['hidden_sizes'] = tuple(c['hidden_sizes']); " \
         "train(PPOConfig(**c))"


def _start(run_dir: Path, resume: bool = False) -> subprocess.Popen:
    config = CONFIG.replace(run_dir=str(run_dir), resume=resume).to_dict()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()[-3000:]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    num_updates = CONFIG.total_timesteps // (CONFIG.num_envs * CONFIG.num_steps)
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    checkpoint = killed_dir / CHECKPOINT_NAME

    process = _start(killed_dir)
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved = torch.load(checkpoint, weights_only=True)  # atomic: never a torn file
    assert 3 <= saved["update"] < num_updates, "the kill must land mid-run"

    _finish(_start(killed_dir, resume=True))  # a fresh process picks up the checkpoint
    _finish(_start(clean_dir))  # the same run, never interrupted

    resumed = torch.load(checkpoint, weights_only=True)
    clean = torch.load(clean_dir / CHECKPOINT_NAME, weights_only=True)
    assert resumed["update"] == clean["update"] == num_updates
    assert resumed["agent"].keys() == clean["agent"].keys()
    for key in clean["agent"]:
        assert torch.equal(resumed["agent"][key], clean["agent"][key]), key
    for key in clean["optimizer"]["state"]:
        for name, value in clean["optimizer"]["state"][key].items():
            assert torch.equal(resumed["optimizer"]["state"][key][name], value), (key, name)
    assert resumed["rollout"]["global_step"] == clean["rollout"]["global_step"]
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert drop_time(resumed["episodes"]) == drop_time(clean["episodes"])
