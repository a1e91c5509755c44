"""Pendulum-v1 (continuous torque): ppo_lab's ``pendulum`` preset, 3 seeds, one CPU thread each.

    python benchmarks/pendulum.py               # writes ppo_lab/results/pendulum.json

Per seed: the env step at which the mean return of the last 20 episodes first reaches −400
(within 3×10⁵ env steps), the final and best such mean. Each run is a fresh process; curves
(running mean of 20 episode returns, ~100 points per run) are stored for the book's plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_lab.metrics import first_reach  # noqa: E402
from common import (last_mean, median, peak_rss_mb, run_worker,  # noqa: E402
                    subsample_curve, write)

THRESHOLD = -400.0
CAP = 300_000


def worker(seed: int) -> dict:
    import torch

    from ppo_lab.toy.ppo import PRESETS, train

    torch.set_num_threads(1)
    config = PRESETS["pendulum"][1].replace(seed=seed)
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    reached = first_reach(result.episodes, THRESHOLD)
    total = result.history[-1]["global_step"]
    return {
        "steps_to_threshold": reached and reached["global_step"],
        "seconds_to_threshold": reached and round(reached["time"], 2),
        "final_return": last_mean(result.episodes),
        "best_return": max(subsample_curve(result.episodes, points=10**9)["mean_return"]),
        "total_steps": total,
        "seconds": round(seconds, 2),
        "steps_per_second": round(total / seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "config": config.to_dict(),
        "curve": subsample_curve(result.episodes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--worker", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker)))
        return
    rows = []
    wall_start = time.perf_counter()
    for seed in args.seeds:
        run = run_worker(Path(__file__), [str(seed)])
        rows.append({"seed": seed, **run})
        print(f"seed {seed}: to {THRESHOLD:.0f} {run['steps_to_threshold']} steps "
              f"({run['seconds_to_threshold']} s), final {run['final_return']:.1f}, "
              f"{run['steps_per_second']:.0f} steps/s", flush=True)
    summary = {
        "median_steps_to_threshold": median(r["steps_to_threshold"] for r in rows),
        "median_final_return": median(r["final_return"] for r in rows),
        "median_steps_per_second": median(r["steps_per_second"] for r in rows),
        "seeds_reaching_threshold": sum(r["steps_to_threshold"] is not None for r in rows),
        "seeds": len(rows),
    }
    print(summary)
    path = write("pendulum", {"threshold": THRESHOLD, "window": 20, "cap": CAP,
                              "seeds": args.seeds, "torch_threads": 1,
                              "benchmark_wall_seconds": round(time.perf_counter() - wall_start, 1)},
                 rows, summary=summary)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
