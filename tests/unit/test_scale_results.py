"""ppo_lab/results/scaling.json (benchmarks/scaling.py): the summary is what the rows give, every
case's memory estimate is within 15% of its measured peak, and activation checkpointing lowers
the peak where activations dominate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from scaling import _summary  # noqa: E402

RECORD = json.loads((ROOT / "ppo_lab" / "results" / "scaling.json").read_text())


def test_scaling_summary_is_what_the_rows_give():
    assert RECORD["summary"] == json.loads(json.dumps(_summary(RECORD["results"])))
    assert RECORD["command"].startswith("python benchmarks/scaling.py") and RECORD["machine"]["cpu"]


@pytest.mark.parametrize("row", RECORD["results"], ids=lambda r: r["case"])
def test_memory_estimate_within_15_percent_of_measured_peak(row):
    assert row["estimated_bytes"] == pytest.approx(row["peak_bytes"], rel=0.15)


def test_activation_checkpointing_lowers_the_peak_where_activations_dominate():
    s = RECORD["summary"]
    assert s["50m S=512: checkpointing peak / plain peak"] <= 0.7
    assert s["50m S=512: checkpointing saved activations / plain"] < 0.5
    assert s["50m S=512: checkpointing step time / plain"] > 1.0  # the recompute is not free
