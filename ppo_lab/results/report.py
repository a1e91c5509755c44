"""Markdown tables from ``ppo_lab/results/*.json`` for the book's benchmark appendix.

Part of the package so the appendix renders on Colab too, where only ``ppo-lab`` is installed
(``python benchmarks/report.py`` prints the same tables). Every result file has the layout
``benchmarks/common.py`` writes: ``benchmark``, ``command``,
``created``, ``machine``, ``config``, ``results`` (rows) and optionally ``summary``. The
appendix renders each file with :func:`render`, so the tables always match the committed data.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent  # the package data of ppo_lab.results
MACHINE_KEYS = ("cpu", "cpu cores", "load average", "torch", "torch threads", "cuda available")


def _cell(value) -> str:
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "—"
    return str(value).replace("|", "\\|")


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A markdown table of the scalar fields of ``rows`` (lists and dicts are left out)."""
    if not rows:
        return "_(no rows)_"
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k, v in row.items() if k not in columns and not isinstance(v, (list, dict))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _summary(summary: dict) -> str:
    parts = []
    flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    if flat:
        parts.append(table([{"quantity": k, "value": v} for k, v in flat.items()]))
    for name, value in summary.items():
        if not isinstance(value, dict):
            continue
        if value and all(isinstance(v, dict) for v in value.values()):
            parts.append(f"**{name}**\n\n" + table([{"": k, **v} for k, v in value.items()]))
        else:
            parts.append(f"**{name}**\n\n" + table([{"quantity": k, "value": v} for k, v in value.items()]))
    return "\n\n".join(parts)


def render(path: Path | str, max_rows: int = 60) -> str:
    """One result file as markdown: its stamp, its summary tables and its rows."""
    record = json.loads(Path(path).read_text("utf-8"))
    machine = record.get("machine", {})
    stamp = ", ".join(f"{k}: {machine[k]}" for k in MACHINE_KEYS if k in machine)
    out = [
        f"### `{record['benchmark']}`",
        f"命令 `{record['command']}`，生成于 {record['created']}"
        + (f"，测量的是提交 `{record['commit'][:7]}` 的代码" if record.get("commit") else "")
        + f"。机器：{stamp}。",
    ]
    if record.get("summary"):
        out.append(_summary(record["summary"]))
    rows = record.get("results", [])
    if rows:
        shown = rows[:max_rows]
        note = f"（共 {len(rows)} 行，显示前 {max_rows} 行）" if len(rows) > max_rows else ""
        out.append(f"逐次结果{note}：\n\n" + table(shown))
    return "\n\n".join(out)


def result_files(results: Path = RESULTS) -> list[Path]:
    """The committed result files, sorted by name."""
    return sorted(results.glob("*.json"))
