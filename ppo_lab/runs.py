"""The run directory every ``ppo-lab`` training command writes (§5 CartPole, §6–7 language models).

``write_run_files(result, run_dir, command)`` takes any training result with

- ``config`` — a config dataclass with ``to_dict()``,
- ``history`` — one dict of metrics per logged step (-> ``metrics.csv``),
- optionally ``episodes`` — one dict per finished episode (-> ``episodes.csv``; the toy trainers),

and writes those tables, ``metrics.json`` (command + config + tables, plus ``result.summary``
where there is one) and ``learning_curve.png``. The curve is the episode return against env
steps when there are episodes, else the ``curve`` columns of ``history`` (x, y).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ppo_lab.metrics import running_mean

__all__ = ["plot_learning_curve", "write_run_files", "write_table"]


def write_table(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """``rows`` as a CSV file; the columns are every key in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_run_files(result: Any, run_dir: str | Path, command: str = "", *,
                    curve: tuple[str, str] | None = None) -> None:
    """``metrics.csv``, ``episodes.csv`` (if the result has episodes), ``metrics.json`` and
    ``learning_curve.png`` (``curve`` = the (x, y) history columns to plot when there are no
    episodes; nothing is plotted without either)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    episodes = getattr(result, "episodes", None)
    write_table(result.history, run_dir / "metrics.csv")
    record = {"command": command, "config": result.config.to_dict(), "history": result.history}
    if episodes is not None:
        write_table(episodes, run_dir / "episodes.csv")
        record["episodes"] = episodes
    if getattr(result, "summary", None) is not None:
        record["summary"] = result.summary
    with open(run_dir / "metrics.json", "w") as f:
        json.dump(record, f, indent=1)
    if episodes is not None or curve is not None:
        plot_learning_curve(result, run_dir / "learning_curve.png", curve=curve)


def plot_learning_curve(result: Any, path: str | Path, window: int = 20, *,
                        curve: tuple[str, str] | None = None) -> None:
    """Episode returns against env steps, with their running mean over ``window`` episodes; or,
    with ``curve = (x, y)``, the history column y against x (rows where y is missing skipped)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    if curve is None:
        steps = [e["global_step"] for e in result.episodes]
        returns = [e["return"] for e in result.episodes]
        ax.plot(steps, returns, ".", alpha=0.25, markersize=3, label="episode return")
        ax.plot(steps, running_mean(returns, window), label=f"mean of last {window}")
        ax.set(xlabel="env steps", ylabel="return", title=f"PPO on {result.config.env_id}")
        ax.legend(loc="lower right")
    else:
        x, y = curve
        rows = [row for row in result.history if row.get(y) is not None]
        ax.plot([row[x] for row in rows], [row[y] for row in rows])
        ax.set(xlabel=x, ylabel=y)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
