"""The committed PPO-RLHF results are self-consistent (§7): every summary number is what the
file's own rows give, the counted FLOPs are what the shapes give, and each file carries the
command that wrote it. The runs themselves (TRL in its own venv; minutes to an hour of CPU) are
not repeated here; the ppo_lab side of the TRL benchmark is smoke-run with tiny shapes."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import llm_vs_trl  # noqa: E402
import rlhf_tiny  # noqa: E402

from ppo_lab.llm.sweep import interpolate, summarise_run  # noqa: E402

RESULTS = ROOT / "ppo_lab" / "results"


def _load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not committed yet")
    return json.loads(path.read_text())


def test_llm_vs_trl_summary_is_what_the_rows_give():
    record = _load("llm_vs_trl")
    assert record["command"].startswith("python benchmarks/llm_vs_trl.py")
    config, rows, summary = record["config"], record["results"], record["summary"]
    settings = {k: config[k] for k in llm_vs_trl.SETTINGS}
    assert settings == llm_vs_trl.SETTINGS  # the settings the script would run with today
    flops = llm_vs_trl.model_flops(settings)
    assert config["model_flops"] == flops
    assert summary["model_gflops_per_iteration"] == round(sum(flops.values()) / 1e9, 3)
    floor = sum(summary["floor_seconds"].values())
    assert abs(summary["floor_seconds_total"] - floor) <= 1e-3
    for side, stats in summary["per_side"].items():
        mine = [r for r in rows if r["side"] == side]
        assert len(mine) == stats["iterations_timed"] == config["rounds"] * config["iterations_per_round"]
        for r in mine:
            assert 0 < r["generate"] + r["score"] + r["train"] <= r["total"] + 1e-9
        for stage in ("generate", "score", "train", "total"):
            assert stats["median_seconds"][stage] == round(statistics.median(r[stage] for r in mine), 4)
        assert stats["peak_rss_mb"] == round(max(r["peak_rss_mb"] for r in mine), 1)
        assert abs(stats["mfu"] - floor / stats["median_seconds"]["total"]) < 1e-3
    ours, trl = summary["per_side"]["ppo_lab"], summary["per_side"]["trl"]
    assert summary["speedup ppo_lab/trl"] == round(
        trl["median_seconds"]["total"] / ours["median_seconds"]["total"], 3)
    assert summary["peak_rss ppo_lab/trl"] == round(ours["peak_rss_mb"] / trl["peak_rss_mb"], 3)
    assert summary["peak_tensor ppo_lab/trl"] == round(ours["peak_tensor_mb"] / trl["peak_tensor_mb"], 3)


def test_peak_tensor_memory_is_the_running_sum_of_allocations():
    import torch

    def work():
        a = torch.ones(256, 1024)  # 1 MiB
        b = torch.ones(512, 1024)  # 2 MiB: 3 MiB held
        del a
        c = torch.ones(256, 1024)  # 1 MiB: 3 MiB held again, never more
        return float(b.sum() + c.sum())

    peak, result = llm_vs_trl.peak_tensor_mb(work)
    assert result == 3 * 256 * 1024 + 0.0 and abs(peak - 3.0) < 0.01


def test_flop_count_by_hand_for_one_shape():
    """One linear layer of one token: 2·K·N FLOPs; the counts scale as the shapes say."""
    s = dict(llm_vs_trl.SETTINGS)
    base = llm_vs_trl.model_flops(s)
    doubled = llm_vs_trl.model_flops({**s, "batch_size": 2 * s["batch_size"]})
    for stage in base:  # every matmul's M (or its count) is proportional to the batch
        assert doubled[stage] == 2 * base[stage]
    epochs = llm_vs_trl.model_flops({**s, "ppo_epochs": 2 * s["ppo_epochs"]})
    assert epochs["train"] == 2 * base["train"] and epochs["score"] == base["score"]


@pytest.mark.slow
def test_llm_vs_trl_ppo_lab_side_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    llm_vs_trl.main(["--smoke", "--iterations", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    assert [r["side"] for r in record["results"]] == ["ppo_lab"]
    assert record["summary"]["per_side"]["ppo_lab"]["median_seconds"]["total"] > 0


def test_rlhf_tiny_summary_is_what_the_runs_give():
    record = _load("rlhf_tiny")
    assert record["command"].startswith("python benchmarks/rlhf_tiny.py")
    summary, runs, config = record["summary"], record["results"], record["config"]
    mean, std = summary["sft"]["sft_gold_mean"], summary["sft"]["sft_gold_std"]
    best64 = summary["best_of_64_by_gold"]
    assert best64 == config["best_of_n"][-1]["gold_best_by_gold"]
    assert [r["seed"] for r in runs] == config["seeds"]
    for run in runs:
        final = run["evals"][-1]
        assert final["iteration"] == config["preset"]["iterations"]
        assert abs(run["gain_in_sft_std"] - (final["gold"] - mean) / std) < 1e-9
        assert abs(run["gap_closed_to_best_of_64"] - (final["gold"] - mean) / (best64 - mean)) < 1e-9
        kls, golds = [e["kl"] for e in run["evals"]], [e["gold"] for e in run["evals"]]
        for row in run["vs_best_of_n_by_proxy"]:
            assert row["ppo_gold_at_kl"] == interpolate(kls, golds, row["kl_bound"])
        beats = all(r["ppo_gold_at_kl"] is not None and r["ppo_gold_at_kl"] > r["best_of_n_gold"]
                    for r in run["vs_best_of_n_by_proxy"])
        assert run["beats_best_of_n_at_matched_kl"] == beats
    assert summary["min_gain_in_sft_std"] == min(r["gain_in_sft_std"] for r in runs)
    assert summary["seeds_beating_best_of_n_at_matched_kl"] == sum(
        r["beats_best_of_n_at_matched_kl"] for r in runs)
    for row in config["best_of_n"]:  # the oracle is never beaten by the proxy's pick
        assert row["gold_best_by_gold"] >= row["gold_best_by_proxy"]
        assert abs(row["kl_bound"] - rlhf_tiny.best_of_n_kl_bound(row["n"])) < 1e-12


@pytest.mark.parametrize("name", ["rlhf_sweep", "rlhf_kl_frontier"])
def test_rlhf_sweep_summary_is_what_the_runs_give(name):
    record = _load(name)
    assert record["command"].startswith("ppo-lab rlhf sweep")
    runs, per_run = record["results"], record["summary"]["per_run"]
    planned = [(b, s) for s in record["config"]["seeds"] for b in record["config"]["kl_coefs"]]
    assert [(r["kl_coef"], r["seed"]) for r in runs] == planned[: len(runs)]  # in the sweep's order
    assert [summarise_run(run) for run in runs] == per_run


def test_the_frontier_runs_are_evaluated_on_the_best_of_n_prompts():
    """Chapter 7 sets the frontier runs' curves against rlhf_tiny.json's best-of-n: the same
    held-out prompts (count and review-task seed), the same SFT policy, reward model and sampling."""
    frontier, tiny = _load("rlhf_kl_frontier"), _load("rlhf_tiny")
    from ppo_lab.llm.ppo import PRESETS

    ppo = frontier["config"]["ppo"]
    assert ppo["eval_prompts"] == tiny["config"]["eval_prompts"]
    preset = PRESETS["tiny"][1]
    for field in ("task_seed", "model", "reward_model", "temperature", "max_new_tokens"):
        assert ppo[field] == getattr(preset, field), field
    for run in frontier["results"]:
        assert run["evals"][0]["iteration"] == 0 and len(run["evals"]) == ppo["iterations"] // ppo["eval_every"] + 1
