"""ppo_lab/results/llm_tiny.json (benchmarks/llm_tiny.py) is self-consistent and agrees with the
committed tiny models it measured; the script itself runs (slow: a smoke run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppo_lab.llm.assets import tiny_path
from ppo_lab.results import load_result

ROOT = Path(__file__).resolve().parents[2]


def test_summary_is_what_the_rows_give():
    record = load_result("llm_tiny")
    assert record["command"].startswith("python benchmarks/llm_tiny.py")
    rows = {row["stage"]: row for row in record["results"] if row["stage"] != "best_of_n"}
    best_of = [row for row in record["results"] if row["stage"] == "best_of_n"]
    summary = record["summary"]
    assert rows["sft"]["command"] == "ppo-lab rlhf sft tiny --out-dir DIR"
    assert rows["rm"]["command"] == "ppo-lab rlhf rm tiny --model DIR/sft --out-dir DIR"
    assert summary["reproduces_committed_assets"] is True
    assert rows["sft"]["equals_committed"] and rows["rm"]["equals_committed"]
    assert summary["sft_seconds"] == rows["sft"]["wall_seconds"]
    assert summary["rm_train_seconds"] == rows["rm"]["train_seconds"]
    assert summary["rm_policy_pair_agreement"] == rows["rm"]["policy_pair_agreement"]
    assert summary["sft_gold_mean"] == rows["sft_policy"]["sft_gold_mean"]
    assert summary["sft_gold_std"] == rows["sft_policy"]["sft_gold_std"]
    assert [row["n"] for row in best_of] == [1, 2, 4, 8, 16, 32, 64]
    assert summary["best_of_64_gold_mean"] == best_of[-1]["gold_best_by_gold"]
    # best-of-n by gold never falls with n, and n = 1 is the SFT policy's own sample
    golds = [row["gold_best_by_gold"] for row in best_of]
    assert golds == sorted(golds) and golds[0] == pytest.approx(summary["sft_gold_mean"])
    assert all(row["gold_best_by_proxy"] <= row["gold_best_by_gold"] + 1e-9 for row in best_of)


def test_measured_reward_model_is_the_committed_one():
    """The training run the benchmark timed wrote the committed reward model (bit for bit), so its
    agreement is the committed model's: the same number as in the asset's own metrics."""
    summary = load_result("llm_tiny")["summary"]
    committed = json.loads((tiny_path("reward") / "metrics.json").read_text())["summary"]
    assert summary["rm_policy_pair_agreement"] == committed["policy_pair_agreement"]
    assert summary["rm_held_out_accuracy"] == committed["eval_accuracy"]
    assert summary["rm_policy_pair_agreement"] >= 0.9


@pytest.mark.slow
def test_benchmark_script_smoke_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "llm_tiny.py"), "--quick"],
                         capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reproduces_committed_assets: False" in out.stdout  # 10 steps are not the preset
    assert "best-of-n" in out.stdout
