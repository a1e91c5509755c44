"""``ppo-lab train`` (ppo_lab.toy.cli): a real smoke run, --help, and config errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from ppo_lab.toy.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_cli_smoke_run_writes_metrics_and_plot(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-m", "ppo_lab.toy.cli", "cartpole", "--total-timesteps", "2048",
         "--num-envs", "4", "--num-steps", "64", "--seed", "7", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "CartPole-v1: 2048 steps" in out.stdout
    assert "step" in out.stderr  # the tqdm progress bar goes to stderr
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and rows[-1]["global_step"] == "2048"
    assert {"env/episodic_return", "policy/approx_kl", "value/explained_variance"} <= rows[0].keys()
    with open(run_dir / "episodes.csv") as f:
        episodes = list(csv.DictReader(f))
    assert episodes and {"global_step", "time", "return", "length"} == episodes[0].keys()
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["config"]["seed"] == 7 and record["config"]["num_envs"] == 4
    assert record["command"].startswith("ppo-lab train cartpole --total-timesteps 2048")
    assert len(record["history"]) == 8 and len(record["episodes"]) == len(episodes)
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_lists_presets_and_field_docstrings(capsys):
    assert main(["--help"]) == 0
    assert "pendulum" in capsys.readouterr().out
    assert main(["cartpole", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--clip-eps" in text and "policy ratio clip range" in text
    assert "--device" in text and "--gae-lambda" in text


def test_bad_config_names_the_field(capsys):
    assert main(["cartpole", "--num-minibatches", "3"]) == 2
    assert "num_minibatches: 3 does not divide batch_size" in capsys.readouterr().err
    assert main(["cartpole", "--gamma", "2"]) == 2
    assert "gamma: must be <= 1.0" in capsys.readouterr().err
    assert main(["cartpole", "--no-such-flag"]) == 2
    assert main(["mountaincar"]) == 2


def test_default_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["cartpole", "--total-timesteps", "512", "--num-envs", "2", "--num-steps", "128"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("cartpole-seed1-")
    assert (run_dir / "metrics.json").exists() and (run_dir / "learning_curve.png").exists()
