"""benchmarks/llm_logprobs.py runs as documented and writes a stamped, self-consistent result file.

Only correctness and format are checked here, never timings: the machine running the tests may
be slow or busy.
"""

import json
import os
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMPLS = {"loop", "batched", "naive_full"}
SAMPLERS = {"own_loop", "model_generate"}


def check_record(record: dict) -> None:
    assert record["benchmark"] == "llm_logprobs"
    assert record["command"].startswith("python benchmarks/llm_logprobs.py")
    assert record["created"]
    assert {"cpu", "cpu cores", "load average", "torch", "torch threads", "platform"} <= record["machine"].keys()
    assert record["machine"]["torch threads"] == "1"
    config, summary, rows = record["config"], record["summary"], record["results"]
    archs, lengths = config["archs"], config["response_lengths"]

    scoring = [r for r in rows if r["part"] == "scoring"]
    assert {(r["arch"], r["T"], r["impl"]) for r in scoring} == {(a, T, i) for a in archs for T in lengths for i in IMPLS}
    for row in scoring:
        assert row["max_abs_diff"] <= config["max_abs_diff"] == 1e-5  # checked before it was timed
        assert len(row["times_ms"]) == row["rounds"] == config["rounds"]
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["median_ms"] == statistics.median(row["times_ms"])
        assert row["peak_extra_mib"] >= 0
    assert list(summary["scoring"]) == [f"{a} T={T}" for a in archs for T in lengths]
    for entry in summary["scoring"].values():
        mine = {r["impl"]: r for r in scoring if (r["arch"], r["T"]) == (entry["arch"], entry["T"])}
        for name in IMPLS:
            assert entry[f"{name}_ms"] == mine[name]["median_ms"]
            assert entry[f"{name}_peak_extra_mib"] == mine[name]["peak_extra_mib"]
        assert math.isclose(entry["speedup_batched_vs_loop"], entry["loop_ms"] / entry["batched_ms"])
        assert math.isclose(entry["speedup_batched_vs_naive_full"], entry["naive_full_ms"] / entry["batched_ms"])

    generation = [r for r in rows if r["part"] == "generation"]
    assert {(r["arch"], r["impl"]) for r in generation} == {(a, s) for a in archs for s in SAMPLERS}
    assert list(summary["generation"]) == archs
    for arch, entry in summary["generation"].items():
        mine = {r["impl"]: r for r in generation if r["arch"] == arch}
        for name in SAMPLERS:
            assert entry[f"{name}_ms"] == mine[name]["median_ms"] == statistics.median(mine[name]["times_ms"])
            assert len(mine[name]["times_ms"]) == config["generation_rounds"]
        assert math.isclose(entry["model_generate_over_own_loop"], entry["model_generate_ms"] / entry["own_loop_ms"])
        assert entry["same_tokens"] is True and entry["max_abs_logprob_diff"] <= 1e-5
        assert entry["B"] == config["generation_batch"] and entry["P"] == config["generation_prompt"]
        assert entry["new_tokens"] <= config["generation_new_tokens"]
    assert summary["all_within_tolerance"] is True


@pytest.mark.slow  # ~25 s: two architectures, a fresh interpreter importing transformers
def test_llm_logprobs_benchmark_quick_run(tmp_path):
    out = tmp_path / "llm_logprobs.json"
    done = subprocess.run([sys.executable, "benchmarks/llm_logprobs.py", "--quick", "--out", str(out)],
                          cwd=ROOT, check=True, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    record = json.loads(out.read_text())
    assert record["command"].startswith("python benchmarks/llm_logprobs.py --quick")
    assert record["config"]["quick"] is True and record["config"]["response_lengths"] == [8]
    check_record(record)
    assert "| gpt2 | 8 |" in done.stdout and "all within tolerance: True" in done.stdout  # the printed tables


def test_committed_llm_logprobs_results_are_complete():
    record = json.loads((ROOT / "ppo_lab/results/llm_logprobs.json").read_text())
    assert "--quick" not in record["command"] and record["config"]["quick"] is False
    check_record(record)
    assert record["config"]["response_lengths"] == [32, 128] and set(record["config"]["archs"]) == {"gpt2", "llama"}
    assert record["config"]["rounds"] >= 5
    gen = record["config"]
    assert (gen["generation_batch"], gen["generation_prompt"], gen["generation_new_tokens"]) == (32, 16, 32)
