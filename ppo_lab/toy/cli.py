"""``ppo-lab train ENV [FLAGS]``: train PPO on a gymnasium task from the command line.

    ppo-lab train cartpole                              # the tuned CartPole preset
    ppo-lab train cartpole --seed 3 --ppo-epochs 10     # any PPOConfig field is a flag
    ppo-lab train pendulum --device cuda
    python -m ppo_lab.toy.cli cartpole --help           # every flag, with its docstring

The run directory (``--run-dir``, default ``runs/<preset>-seed<seed>-<time>``) receives
``metrics.csv`` (one row per update), ``episodes.csv`` (one row per finished episode),
``metrics.json`` (config + both tables), ``learning_curve.png`` and, with
``--checkpoint-every``, ``checkpoint.pt`` (resume with ``--resume``).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import tyro

from ppo_lab.metrics import running_mean
from ppo_lab.toy.ppo import PRESETS, TrainResult, train

__all__ = ["main", "plot_learning_curve", "write_run_files"]


def write_run_files(result: TrainResult, run_dir: str | Path, command: str = "") -> None:
    """``metrics.csv``, ``episodes.csv``, ``metrics.json`` and ``learning_curve.png``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("metrics.csv", result.history), ("episodes.csv", result.episodes)):
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with open(run_dir / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    with open(run_dir / "metrics.json", "w") as f:
        json.dump({"command": command, "config": result.config.to_dict(),
                   "history": result.history, "episodes": result.episodes}, f, indent=1)
    plot_learning_curve(result, run_dir / "learning_curve.png")


def plot_learning_curve(result: TrainResult, path: str | Path, window: int = 20) -> None:
    """Episode returns against env steps, with their running mean over ``window`` episodes."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    steps = [e["global_step"] for e in result.episodes]
    returns = [e["return"] for e in result.episodes]
    running = running_mean(returns, window)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(steps, returns, ".", alpha=0.25, markersize=3, label="episode return")
    ax.plot(steps, running, label=f"mean of last {window}")
    ax.set(xlabel="env steps", ylabel="return", title=f"PPO on {result.config.env_id}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (a preset name, then PPOConfig flags), train, write the run directory."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = tyro.extras.overridable_config_cli(
            PRESETS, prog="ppo-lab train", args=argv,
            description="Train PPO on a gymnasium task. Pick a preset, then override any field.")
    except SystemExit as exit_:  # --help, or a flag tyro could not parse (it printed why)
        return exit_.code if isinstance(exit_.code, int) else 2
    except ValueError as error:  # PPOConfig.validate: the message names the field
        print(f"ppo-lab train: error: {error}", file=sys.stderr)
        return 2
    preset = argv[0] if argv and argv[0] in PRESETS else config.env_id
    if config.run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config = config.replace(run_dir=str(Path("runs") / f"{preset}-seed{config.seed}-{stamp}"))
    result = train(config, progress=True)
    command = "ppo-lab train " + " ".join(argv)
    write_run_files(result, config.run_dir, command)
    last = [e["return"] for e in result.episodes[-20:]]
    mean = f"{sum(last) / len(last):.1f}" if last else "n/a"
    print(f"{config.env_id}: {result.history[-1]['global_step']} steps in "
          f"{result.history[-1]['time']:.1f} s; mean return of the last {len(last)} episodes "
          f"{mean}; run directory {config.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
