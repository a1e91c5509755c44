"""benchmarks/gae.py runs as documented and writes a stamped, self-consistent result file."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gae_benchmark_quick_run(tmp_path):
    out = tmp_path / "gae.json"
    subprocess.run([sys.executable, "benchmarks/gae.py", "--quick", "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    record = json.loads(out.read_text())
    assert record["benchmark"] == "gae"
    assert record["command"].startswith("python benchmarks/gae.py --quick")
    assert {"cpu", "torch", "platform"} <= record["machine"].keys()
    impls = {r["impl"] for r in record["results"]}
    assert impls == {"gae_advantages", "backward_discounted_sum", "scan", "reference", "python_insert0"}
    for row in record["results"]:
        assert 0 < row["min_ms"] <= row["median_ms"]
        assert row["max_abs_diff"] <= 1e-4  # every implementation was checked before it was timed


def test_committed_gae_results_are_stamped():
    record = json.loads((ROOT / "benchmarks/results/gae.json").read_text())
    assert record["command"].startswith("python benchmarks/gae.py")
    assert "--quick" not in record["command"] and record["config"]["quick"] is False
    assert record["machine"]["cpu"] and record["results"]
