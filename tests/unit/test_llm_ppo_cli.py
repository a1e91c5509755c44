"""``ppo-lab rlhf ppo|all|sweep``: flags from RLHFConfig / SweepConfig, the run folder's files,
errors that exit 2 naming the field (§7)."""

from __future__ import annotations

import json

import pytest

from ppo_lab.llm.cli import main

TINY = ["--iterations", "2", "--batch-size", "4", "--num-minibatches", "2", "--ppo-epochs", "1",
        "--max-new-tokens", "6", "--eval-every", "1", "--eval-prompts", "4", "--num-prompts", "16"]


def test_ppo_tiny_writes_the_run_folder(tmp_path, capsys):
    assert main(["ppo", "tiny", *TINY, "--out-dir", str(tmp_path)]) == 0
    out = tmp_path / "ppo"
    for name in ("metrics.csv", "metrics.json", "learning_curve.png", "policy/config.json",
                 "policy/tokenizer.json", "value/model.safetensors"):
        assert (out / name).exists(), name
    record = json.loads((out / "metrics.json").read_text())
    assert record["command"].startswith("ppo-lab rlhf ppo tiny")
    assert [row["iteration"] for row in record["history"]] == [1, 2]
    assert record["summary"]["eval_last"]["iteration"] == 2
    assert "held-out gold reward" in capsys.readouterr().out


@pytest.mark.parametrize("flags,field", [
    (["--num-minibatches", "3"], "num_minibatches"),
    (["--model", "/no/such/dir"], "model"),
    (["--prompts", "/no/such.jsonl"], "gold"),  # the tiny preset logs the review task's gold
    (["--prompts", "/no/such.jsonl", "--no-gold"], "prompts"),
])
def test_ppo_errors_exit_2_naming_the_field(tmp_path, capsys, flags, field):
    assert main(["ppo", "tiny", *TINY, "--out-dir", str(tmp_path), *flags]) == 2
    assert f"{field}:" in capsys.readouterr().err  # tyro's box, or the stage's "error:" line


def test_help_lists_the_three_stages(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for stage in ("ppo", "all", "sweep"):
        assert f"  {stage} " in text
    assert main(["sweep", "tiny", "--help"]) == 0
    assert "--kl-coefs" in capsys.readouterr().out


def test_sweep_writes_curves_and_summary(tmp_path):
    flags = [f"--ppo.{f.lstrip('-')}" if f.startswith("--") else f for f in TINY]
    assert main(["sweep", "tiny", "--kl-coefs", "0", "0.1", "--seeds", "1", "--jobs", "1",
                 "--out-dir", str(tmp_path), *flags]) == 0
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["kl_coef"] for r in record["results"]] == [0.0, 0.1]
    assert all(len(r["evals"]) == 3 for r in record["results"])  # iterations 0, 1, 2
    assert (tmp_path / "sweep.png").exists()


def test_interpolate_reads_a_curve_at_x():
    """A run's gold reward at a given KL: linear between the two evaluations around it, whatever
    order they came in; an x outside the curve is None (not extrapolated)."""
    from ppo_lab.llm.sweep import interpolate

    kls, golds = [0.0, 2.0, 1.0], [0.0, 3.0, 1.0]  # evaluations need not be sorted by KL
    assert interpolate(kls, golds, 0.5) == 0.5
    assert interpolate(kls, golds, 1.5) == 2.0
    assert interpolate(kls, golds, 2.0) == 3.0
    assert interpolate(kls, golds, 2.5) is None and interpolate(kls, golds, -0.1) is None
    assert interpolate([1.0, 1.0], [2.0, 4.0], 1.0) == 2.0  # a vertical step: the first point
