"""ppo_lab.results: the committed benchmark results ship inside the package (Colab reads them offline)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from ppo_lab.results import RESULTS_DIR, load_result, result_names

ROOT = Path(__file__).resolve().parents[2]


def test_every_committed_result_loads_by_name():
    files = sorted(RESULTS_DIR.glob("*.json"))
    assert files, "no committed results in ppo_lab/results"
    assert result_names() == [f.stem for f in files]
    for f in files:
        assert load_result(f.stem) == json.loads(f.read_text("utf-8"))


@pytest.mark.parametrize("bad", ["no_such_result", "", "gae.json", "../pyproject", 3])
def test_bad_names_raise_naming_the_argument(bad):
    with pytest.raises(ValueError, match="name"):
        load_result(bad)


def test_results_are_package_data_and_kept_once():
    """pyproject ships the JSON with the package, and benchmarks/ writes there (no second copy)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert "*.json" in pyproject["tool"]["setuptools"]["package-data"]["ppo_lab.results"]
    assert not (ROOT / "benchmarks" / "results").exists()
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common
        import report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert common.RESULTS.resolve() == RESULTS_DIR and report.RESULTS.resolve() == RESULTS_DIR
