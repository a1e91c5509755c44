"""MuJoCo Hopper with CleanRL's ``ppo_continuous_action.py`` settings, side by side with CleanRL.

    pip install 'ppo-lab[mujoco]'                 # MuJoCo is not part of the book's toolchain
    nice -n 10 python benchmarks/hopper.py        # 3 seeds x 10⁶ steps (5-15 min a seed, 1 thread)
    python benchmarks/hopper.py --env-id Hopper-v5    # if Hopper-v4 no longer runs with your mujoco

Writes ``ppo_lab/results/hopper.json`` after every seed. Each seed trains the ``hopper`` preset
(``ppo-lab train hopper --seed S`` runs the same configuration) in a fresh one-thread process.
The statistic is CleanRL's table's: per seed, the mean return of the last 100 training episodes
at 10⁶ steps; across seeds, their mean ± sample standard deviation. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import last_mean, run_worker, subsample_curve, write  # noqa: E402

# CleanRL's documentation, ppo_continuous_action.py: Hopper-v4, 10⁶ steps, 3 seeds.
CLEANRL = {"env_id": "Hopper-v4", "mean": 2382.86, "std": 271.74, "seeds": 3,
           "total_timesteps": 1_000_000, "statistic": "mean ± std over seeds of the episodic return"}
WINDOW = 100


def worker(env_id: str, seed: int) -> dict:
    import torch

    from ppo_lab.toy.ppo import PRESETS, train

    torch.set_num_threads(1)
    config = PRESETS["hopper"][1].replace(env_id=env_id, seed=seed)
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    return {
        "final_return": last_mean(result.episodes, WINDOW),
        "episodes": len(result.episodes),
        "total_steps": result.history[-1]["global_step"],
        "seconds": round(seconds, 1),
        "config": config.to_dict(),
        "curve": subsample_curve(result.episodes, window=WINDOW),
    }


def check_mujoco(env_id: str) -> None:
    """Fail at once, with the install command, where MuJoCo is missing (not after a seed)."""
    from ppo_lab.toy.rollout import make_vector_env

    make_vector_env(env_id, 1).close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--env-id", default="Hopper-v4", choices=["Hopper-v4", "Hopper-v5"])
    parser.add_argument("--worker", nargs=2, metavar=("ENV_ID", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    import gymnasium as gym

    try:
        check_mujoco(args.env_id)
    except gym.error.DependencyNotInstalled as error:
        sys.exit(f"benchmarks/hopper.py: {error}")
    rows = []
    for seed in args.seeds:
        run = run_worker(Path(__file__), [args.env_id, str(seed)])
        rows.append({"seed": seed, **run})
        print(f"{args.env_id} seed {seed}: mean return of the last {WINDOW} episodes "
              f"{run['final_return']:.1f} ({run['seconds']:.0f} s)", flush=True)
        finals = [r["final_return"] for r in rows]
        summary = {"mean": statistics.mean(finals),
                   "std": statistics.stdev(finals) if len(finals) > 1 else None,
                   "seeds": len(finals), "cleanrl": CLEANRL}
        path = write("hopper", {"env_id": args.env_id, "preset": "hopper", "window": WINDOW,
                                "seeds": args.seeds, "torch_threads": 1}, rows, summary=summary)
    print(summary, f"wrote {path}")


if __name__ == "__main__":
    main()
