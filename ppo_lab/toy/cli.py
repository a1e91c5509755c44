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

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import tyro

from ppo_lab.runs import write_run_files
from ppo_lab.toy.ppo import PRESETS, train

__all__ = ["main"]


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
    try:
        result = train(config, progress=True)
    except gym.error.DependencyNotInstalled as error:  # e.g. a MuJoCo task without ppo-lab[mujoco]
        print(f"ppo-lab train: error: {error}", file=sys.stderr)
        return 2
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
