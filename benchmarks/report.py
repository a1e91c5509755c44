"""Print the benchmark appendix's tables from ``ppo_lab/results/*.json``.

    python benchmarks/report.py

The rendering lives in :mod:`ppo_lab.results.report` (the appendix imports it from the package).
"""

from __future__ import annotations

from ppo_lab.results.report import RESULTS, render, result_files

__all__ = ["RESULTS", "render", "result_files"]

if __name__ == "__main__":
    print("\n\n".join(render(p) for p in result_files()))
