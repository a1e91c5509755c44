"""The `ppo-lab` console script: --help, --version, doctor, and dispatch to `train`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import ppo_lab
from ppo_lab.cli import doctor_report, main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ppo-lab {ppo_lab.__version__}"
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "doctor" in out and "train" in out


def test_doctor_reports_torch_devices_and_toolchain(capsys):
    rows = dict(doctor_report())
    assert rows["torch"] == torch.__version__
    assert rows["cuda available"] == str(torch.cuda.is_available())
    for dist in ("jupyter-book", "nbval", "gymnasium", "transformers"):
        assert dist in rows
    assert main(["doctor"]) == 0
    assert "cuda available" in capsys.readouterr().out


def test_train_help_reaches_the_trainer_and_lists_presets():
    out = subprocess.run([sys.executable, "-m", "ppo_lab.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for preset in ("cartpole", "cartpole-zoo", "pendulum"):
        assert preset in out.stdout
