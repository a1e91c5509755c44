"""Ablations of PPO's implementation details on CartPole-v1 and Pendulum-v1, seeded learning
curves (§5.6 and the implementation-details appendix).

    python benchmarks/ablations.py                              # 5 seeds, both tasks
    python benchmarks/ablations.py --seeds 0 --task pendulum    # a quick look (do not commit)

Writes ``ppo_lab/results/ablations.json``, rewritten after every seed (an interrupted run leaves
its complete seeds). Each variant changes one switch of its task's baseline (two for target_kl,
which only acts once clipping is off, and for the KL penalty, which replaces clipping). One
fresh one-thread process per task and seed runs every variant of it in turn. Curves are the
running mean of the last 20 episode returns, ~100 points per run.

CartPole baseline: the book's tuned ``cartpole`` preset (16 envs x 32 steps, 2 minibatches x 6
epochs, learning rate 7e-3 annealed, no value clipping, no entropy bonus) for 5×10⁴ env steps;
it solves the task (20-episode mean ≥ 475) in about half of that. Its large learning rate makes
every brake on the step size matter.

Pendulum baseline: the ``pendulum`` preset (normalised observations and rewards) for 40,960 env
steps, about where it crosses −400, with the learning rate held constant (a shortened annealing
schedule would decay it 7 times faster than in the full run). Observation and reward
normalisation do nothing on CartPole, whose observations and per-step reward (1) are already of
order 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_lab.metrics import first_reach  # noqa: E402
from common import last_mean, median, run_worker, subsample_curve, write  # noqa: E402
from ppo_lab.toy.ppo import PRESETS  # noqa: E402

TOTAL = 50_000
BASELINE = PRESETS["cartpole"][1].replace(total_timesteps=TOTAL).to_dict()
VARIANTS = {
    "baseline": {},
    "no policy clipping": {"clip_eps": None},
    "no policy clipping, target_kl = 0.02": {"clip_eps": None, "target_kl": 0.02},
    "KL penalty instead of clipping": {"clip_eps": None, "kl_penalty": True},
    "no advantage normalisation": {"norm_adv": False},
    "whole-batch advantage normalisation": {"norm_adv_per_minibatch": False},
    "value clipping 0.2": {"vf_clip_eps": 0.2},
    "entropy bonus 0.01": {"ent_coef": 0.01},
    "Adam eps = 1e-8": {"adam_eps": 1e-8},
    "torch default init": {"ortho_init": False},
    "shared network": {"shared_trunk": True},
    "1 epoch": {"ppo_epochs": 1},
}
PENDULUM_BASELINE = PRESETS["pendulum"][1].replace(total_timesteps=40_960, anneal_lr=False).to_dict()
PENDULUM_VARIANTS = {
    "baseline": {},  # observations normalised, rewards scaled
    "no observation normalisation": {"normalize_obs": False},
    "no reward scaling": {"normalize_reward": False},
    "clipped at 10 (CleanRL)": {"clip_obs": 10.0, "clip_reward": 10.0},
}
TASKS = {"cartpole": (BASELINE, VARIANTS, 475.0), "pendulum": (PENDULUM_BASELINE, PENDULUM_VARIANTS, -400.0)}


def worker(task: str, seed: int) -> list[dict]:
    """Every variant of ``task`` with ``seed``, in this process, one after the other."""
    import torch

    from ppo_lab.toy.ppo import PPOConfig, train

    torch.set_num_threads(1)
    baseline, variants, threshold = TASKS[task]
    runs = []
    for variant, changes in variants.items():
        config = PPOConfig(**{**baseline, **changes, "seed": seed})
        start = time.perf_counter()
        result = train(config)
        seconds = time.perf_counter() - start
        solved = first_reach(result.episodes, threshold)
        returns = [e["return"] for e in result.episodes]
        kl = [r["policy/approx_kl"] for r in result.history]
        clip = [r["policy/clip_fraction"] for r in result.history]
        runs.append({
            "variant": variant,
            "final_return": last_mean(result.episodes),
            "mean_return": sum(returns) / len(returns),
            "steps_to_threshold": solved and solved["global_step"],
            "mean_approx_kl": sum(kl) / len(kl),
            "max_approx_kl": max(kl),
            "mean_clip_fraction": sum(clip) / len(clip),
            "mean_epochs": sum(r["epochs"] for r in result.history) / len(result.history),
            "kl_coef": [r["objective/kl_coef"] for r in result.history] if config.kl_penalty else None,
            "seconds": round(seconds, 2),
            "curve": subsample_curve(result.episodes),
        })
    return runs


def _spread(xs: list[float]) -> dict:
    """Mean, sample standard deviation, min and max over seeds."""
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    tasks = list(TASKS) if args.task == "all" else [args.task]
    rows = []
    wall_start = time.perf_counter()
    for seed in args.seeds:
        for task in tasks:
            for run in run_worker(Path(__file__), [task, str(seed)]):
                rows.append({"task": task, "seed": seed, **run})
                print(f"{task:8s} {run['variant']:38s} seed {seed}: final {run['final_return']:.1f}, "
                      f"mean {run['mean_return']:.1f}, to threshold {run['steps_to_threshold']}, "
                      f"max KL {run['max_approx_kl']:.3f}, {run['seconds']:.1f} s", flush=True)
        path = _write(tasks, rows, time.perf_counter() - wall_start)  # complete seeds so far
    print(f"wrote {path}")


def _write(tasks: list[str], rows: list[dict], wall_seconds: float) -> Path:
    summary = {}
    for task in tasks:
        for variant in TASKS[task][1]:
            runs = [r for r in rows if r["task"] == task and r["variant"] == variant]
            summary[f"{task}/{variant}"] = {
                "final_return": _spread([r["final_return"] for r in runs]),
                "mean_return": _spread([r["mean_return"] for r in runs]),
                "median_steps_to_threshold": median(r["steps_to_threshold"] for r in runs),
                "seeds_reaching_threshold": sum(r["steps_to_threshold"] is not None for r in runs),
                "median_max_approx_kl": median(r["max_approx_kl"] for r in runs),
            }
    config = {"tasks": {task: {"baseline": TASKS[task][0], "variants": TASKS[task][1],
                               "threshold": TASKS[task][2]} for task in tasks},
              "seeds": sorted({r["seed"] for r in rows}), "window": 20, "torch_threads": 1,
              "benchmark_wall_seconds": round(wall_seconds, 1)}
    if "cartpole" in tasks:  # chapter 5 reads the CartPole ablations under these keys
        config.update(baseline=BASELINE, variants=VARIANTS, threshold=475.0)
    return write("ablations", config, rows, summary=summary)

if __name__ == "__main__":
    main()
