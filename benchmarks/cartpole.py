"""CartPole-v1: ppo_lab against Stable-Baselines3 PPO, 5 seeds, one CPU thread per run.

    python benchmarks/cartpole.py                 # writes ppo_lab/results/cartpole.json
    python benchmarks/cartpole.py --seeds 5 6 --out /tmp/more.json   # other seeds, elsewhere

Three runs per seed, interleaved (ppo_lab seed 0, SB3 seed 0, tuned seed 0, ppo_lab seed 1, …)
so that changing load on the machine hits all three alike; each run is a fresh process.

1. ``ppo_lab`` (preset ``cartpole-zoo``) and ``sb3`` with the same hyperparameters — SB3's
   rl-baselines3-zoo CartPole set: 8 envs, 32 steps, batch 256 (one minibatch), 20 epochs,
   γ 0.98, λ 0.8, learning rate linear from 1e-3, clip range linear from 0.2, no entropy bonus,
   SB3's defaults otherwise (separate 64-64 tanh MLPs, orthogonal init, Adam eps 1e-5, value
   coefficient 0.5 on an un-halved MSE, gradient norm 0.5). Both anneal over the 2×10⁵ cap.
2. ``ppo_lab-tuned`` (preset ``cartpole``): ppo_lab's own settings for wall-clock time.

Per run: env steps and wall-clock seconds until the mean of the last 20 episode returns first
reaches 475 (clock started before the envs are built, after imports — torch._dynamo included,
which torch.optim imports on first use), the final such mean,
steps per second over the whole run, peak RSS. SB3 is a benchmark-only dependency
(``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_lab.metrics import first_reach  # noqa: E402
from common import SB3_CARTPOLE_ZOO, last_mean, median, peak_rss_mb, run_worker, write  # noqa: E402

THRESHOLD = 475.0
CAP = 200_000
RUNNERS = ("ppo_lab", "sb3", "ppo_lab-tuned")


def _result(episodes: list[dict], total_steps: int, seconds: float) -> dict:
    solved = first_reach(episodes, THRESHOLD)
    return {
        "steps_to_475": solved and solved["global_step"],
        "seconds_to_475": solved and round(solved["time"], 3),
        "final_return": last_mean(episodes),
        "total_steps": total_steps,
        "seconds": round(seconds, 3),
        "steps_per_second": round(total_steps / seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "episodes": len(episodes),
    }


def worker_ppo_lab(preset: str, seed: int) -> dict:
    import torch
    import torch._dynamo  # noqa: F401  (imported by any torch optimizer's first use: ~1 s)

    from ppo_lab.toy.ppo import PRESETS, train

    torch.set_num_threads(1)
    config = PRESETS[preset][1].replace(seed=seed)
    if preset == "cartpole-zoo":
        config = config.replace(total_timesteps=CAP)
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    return {**_result(result.episodes, result.history[-1]["global_step"], seconds),
            "config": config.to_dict()}


def worker_sb3(seed: int) -> dict:
    import torch
    import torch._dynamo  # noqa: F401  (imported by any torch optimizer's first use: ~1 s)
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    episodes: list[dict] = []

    class RecordEpisodes(BaseCallback):
        """SB3's Monitor wrapper puts each finished episode in info["episode"]."""

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    episodes.append({"global_step": self.num_timesteps,
                                     "time": time.perf_counter() - start,
                                     "return": float(info["episode"]["r"])})
            return True

    hyperparameters = SB3_CARTPOLE_ZOO
    start = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **hyperparameters)
    model.learn(CAP, callback=RecordEpisodes())
    seconds = time.perf_counter() - start
    shown = {k: ("linear from 1e-3" if k == "learning_rate" else
                 "linear from 0.2" if k == "clip_range" else v) for k, v in hyperparameters.items()}
    return {**_result(episodes, model.num_timesteps, seconds),
            "config": {"n_envs": 8, "total_timesteps": CAP, **shown}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default ppo_lab/results/cartpole.json)")
    parser.add_argument("--worker", nargs=2, metavar=("RUNNER", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        runner, seed = args.worker[0], int(args.worker[1])
        out = (worker_sb3(seed) if runner == "sb3" else
               worker_ppo_lab("cartpole-zoo" if runner == "ppo_lab" else "cartpole", seed))
        print(json.dumps(out))
        return

    runs: dict[str, list[dict]] = {name: [] for name in RUNNERS}
    wall_start = time.perf_counter()
    for seed in args.seeds:
        for runner in RUNNERS:
            run = run_worker(Path(__file__), [runner, str(seed)])
            runs[runner].append({"seed": seed, **run})
            print(f"{runner:14s} seed {seed}: to 475 {run['steps_to_475']} steps "
                  f"{run['seconds_to_475']} s, final {run['final_return']:.1f}, "
                  f"{run['steps_per_second']:.0f} steps/s, {run['peak_rss_mb']:.0f} MB",
                  flush=True)

    summary = {}
    for runner, rows in runs.items():
        summary[runner] = {
            "median_steps_to_475": median(r["steps_to_475"] for r in rows),
            "median_seconds_to_475": median(r["seconds_to_475"] for r in rows),
            "median_steps_per_second": median(r["steps_per_second"] for r in rows),
            "median_final_return": median(r["final_return"] for r in rows),
            "median_peak_rss_mb": median(r["peak_rss_mb"] for r in rows),
            "seeds_solved": sum(r["steps_to_475"] is not None for r in rows),
            "seeds": len(rows),
        }
    ours, sb3, tuned = (summary[name] for name in RUNNERS)

    def ratio(a, b):
        return None if a is None or b is None else round(a / b, 3)

    ratios = {
        "steps_per_second ppo_lab/sb3": ratio(ours["median_steps_per_second"],
                                              sb3["median_steps_per_second"]),
        "steps_to_475 ppo_lab/sb3": ratio(ours["median_steps_to_475"], sb3["median_steps_to_475"]),
        "seconds_to_475 ppo_lab-tuned/sb3": ratio(tuned["median_seconds_to_475"],
                                                  sb3["median_seconds_to_475"]),
    }
    for key, value in ratios.items():
        print(f"{key}: {value}")
    path = write("cartpole", {"threshold": THRESHOLD, "window": 20, "cap": CAP,
                              "seeds": args.seeds, "torch_threads": 1,
                              "benchmark_wall_seconds": round(time.perf_counter() - wall_start, 1)},
                 [{"runner": name, **row} for name, rows in runs.items() for row in rows],
                 out=args.out, summary={"per_runner": summary, "ratios": ratios})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
