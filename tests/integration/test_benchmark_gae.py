"""benchmarks/gae.py runs as documented and writes a stamped, self-consistent result file.

Only correctness and format are checked here, never timings: the machine running the tests may
be slow or busy.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPLS = {"reference", "cleanrl_loop", "gae_advantages"}


def check_record(record: dict, rounds: int) -> None:
    assert record["benchmark"] == "gae"
    assert record["command"].startswith("python benchmarks/gae.py")
    assert record["created"]
    assert {"cpu", "cpu cores", "load average", "torch", "torch threads", "platform"} <= record["machine"].keys()
    assert record["machine"]["torch threads"] == "1"
    config, summary = record["config"], record["summary"]
    shapes = [tuple(s) for s in config["shapes"]]
    assert config["rounds"] == rounds and config["dtype"] == "float32"

    rows = record["results"]
    assert {(r["T"], r["N"], r["impl"]) for r in rows} == {(T, N, i) for T, N in shapes for i in IMPLS}
    for row in rows:
        assert row["max_abs_diff"] <= 1e-4  # every implementation was checked before it was timed
        assert len(row["times_ms"]) == row["rounds"] == rounds
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]

    assert list(summary["shapes"]) == [f"[{T}, {N}]" for T, N in shapes]
    for entry in summary["shapes"].values():
        medians = {r["impl"]: r["median_ms"] for r in rows if (r["T"], r["N"]) == (entry["T"], entry["N"])}
        assert {name: entry[f"{name}_ms"] for name in IMPLS} == medians
        for name in ("reference", "cleanrl_loop"):
            assert math.isclose(entry[f"speedup_vs_{name}"], medians[name] / medians["gae_advantages"])

    accuracy, long = summary["accuracy"], summary["long_horizon"]
    assert accuracy["T"] == 2048 and 0 <= accuracy["float32_vs_float64_loop_rel_error"] <= accuracy["limit"] == 1e-5
    assert accuracy["met"] is True
    assert long["T"] == 100_000 and long["gamma_lambda"] == 0.999
    assert long["finite"] is True and math.isfinite(long["max_abs"]) and long["rel_error_vs_float64_loop"] < 1e-4


def test_gae_benchmark_quick_run(tmp_path):
    out = tmp_path / "gae.json"
    done = subprocess.run([sys.executable, "benchmarks/gae.py", "--quick", "--out", str(out)],
                          cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    record = json.loads(out.read_text())
    assert record["command"].startswith("python benchmarks/gae.py --quick")
    assert record["config"]["quick"] is True
    check_record(record, rounds=3)
    assert "| [64, 4] |" in done.stdout and "relative error vs float64 loop" in done.stdout  # printed


def test_committed_gae_results_are_complete():
    record = json.loads((ROOT / "ppo_lab/results/gae.json").read_text())
    assert "--quick" not in record["command"] and record["config"]["quick"] is False
    check_record(record, rounds=record["config"]["rounds"])
    assert record["config"]["rounds"] >= 5
    assert set(record["summary"]["shapes"]) == {"[2048, 8]", "[512, 64]", "[128, 1024]"}
