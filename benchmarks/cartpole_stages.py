"""Where a CartPole PPO run spends its time: ppo_lab against Stable-Baselines3, stage by stage.

    python benchmarks/cartpole_stages.py    # writes ppo_lab/results/cartpole_stages.json

``benchmarks/cartpole.py`` measures steps per second of whole runs; this script splits them.

1. **Stages.** ppo_lab (preset ``cartpole-zoo``) and SB3 with the same hyperparameters (the zoo
   set of ``cartpole.py``), 5×10⁴ env steps per run, each run a fresh process with one thread,
   the two runners interleaved, three runs each. Timers wrap the two stages of every update —
   collecting the rollout (``collect_rollout`` / SB3's ``collect_rollouts``) and the K epochs of
   gradient steps (``_optimise`` / SB3's ``PPO.train``) — and the run's total.
2. **One gradient step against the minibatch size.** Both libraries' update code on the same
   CartPole actor-critic (separate 64-64 tanh MLPs) with one minibatch of B transitions and 20
   epochs, B = 8 … 1024, interleaved, one thread: median time per gradient step. A straight line
   through the points separates a fixed cost per step (the intercept: what a step costs when it
   does almost no arithmetic — Python, operator dispatch, autograd bookkeeping, the optimiser)
   from the cost per transition (the slope).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SB3_CARTPOLE_ZOO, Timer, run_worker, write  # noqa: E402

STEPS = 50_000  # per stage run (--steps)
REPEATS = 3  # stage runs per runner (--runs)
BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
EPOCHS = SB3_CARTPOLE_ZOO["n_epochs"]  # and ppo_lab's cartpole-zoo ppo_epochs



def _stages(total: float, rollout: Timer, update: Timer, env_steps: int, num_envs: int,
            grad_steps: int) -> dict:
    return {
        "seconds": round(total, 3), "rollout_seconds": round(rollout.seconds, 3),
        "update_seconds": round(update.seconds, 3),
        "other_seconds": round(total - rollout.seconds - update.seconds, 3),
        "env_steps": env_steps, "steps_per_second": round(env_steps / total, 1),
        "us_per_vector_step": round(1e6 * rollout.seconds / (env_steps / num_envs), 1),
        "us_per_gradient_step": round(1e6 * update.seconds / grad_steps, 1),
    }


def worker_ppo_lab(steps: int) -> dict:
    import torch
    import torch._dynamo  # noqa: F401  (imported by any torch optimizer's first use)

    import ppo_lab.toy.ppo as ppo

    torch.set_num_threads(1)
    config = ppo.PRESETS["cartpole-zoo"][1].replace(seed=0, total_timesteps=steps)
    rollout, update = Timer(ppo, "collect_rollout"), Timer(ppo, "_optimise")
    start = time.perf_counter()
    result = ppo.train(config)
    total = time.perf_counter() - start
    grad_steps = sum(row["epochs"] for row in result.history)  # one minibatch per epoch
    return _stages(total, rollout, update, result.history[-1]["global_step"], config.num_envs,
                   grad_steps)


def worker_sb3(steps: int) -> dict:
    import torch
    import torch._dynamo  # noqa: F401
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    rollout, update = Timer(PPO, "collect_rollouts"), Timer(PPO, "train")
    start = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    model = PPO("MlpPolicy", env, seed=0, device="cpu", **SB3_CARTPOLE_ZOO)
    model.learn(steps)
    total = time.perf_counter() - start
    return _stages(total, rollout, update, model.num_timesteps, 8, update.calls * EPOCHS)


def worker_step_cost() -> list[dict]:
    """Part 2, in one process: per-gradient-step time of both libraries at every batch size."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from ppo_lab.core import gae_advantages
    from ppo_lab.scale.flat import FlatParameters
    from ppo_lab.toy.networks import ActorCritic
    from ppo_lab.toy.ppo import PRESETS, _optimise
    from ppo_lab.toy.rollout import collect_rollout, make_vector_env, reset_rollout_state

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = PRESETS["cartpole-zoo"][1].replace(ppo_epochs=EPOCHS)
    runs = {}
    for batch in BATCH_SIZES:
        # ppo_lab: one real rollout of 8 envs x B/8 steps, then _optimise as train() calls it
        envs = make_vector_env("CartPole-v1", 8)
        agent = ActorCritic.for_spaces(envs.single_observation_space, envs.single_action_space)
        flat = FlatParameters(agent)
        optimizer = torch.optim.Adam([flat.param], lr=1e-3, eps=1e-5, fused=True)
        state = reset_rollout_state(envs, 0, "cpu")
        rollout = collect_rollout(envs, agent, state, batch // 8)
        rollout.mask[:] = True  # every transition real, so each minibatch holds exactly B
        advantages, returns = gae_advantages(
            rewards=rollout.rewards, values=rollout.values, next_values=rollout.next_values,
            terminated=rollout.terminated, episode_ends=rollout.episode_ends, gamma=0.98,
            gae_lambda=0.8)
        runs[("ppo_lab", batch)] = lambda r=rollout, a=agent, f=flat, o=optimizer, adv=advantages, \
            ret=returns: _optimise(a, f, o, r, adv, ret, config, clip_eps=0.2)
        # SB3: its own rollout buffer of the same size, then PPO.train (20 epochs of one batch)
        model = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=0), seed=0,
                    device="cpu", **{**SB3_CARTPOLE_ZOO, "n_steps": batch // 8, "batch_size": batch,
                                     "learning_rate": 1e-3, "clip_range": 0.2})
        _, callback = model._setup_learn(10 * batch, None)
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=batch // 8)
        runs[("sb3", batch)] = model.train
    times: dict = {key: [] for key in runs}
    for fn in runs.values():  # warm up
        fn()
    for _ in range(5):  # interleaved: every (runner, B) once per round
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) / EPOCHS)
    return [{"runner": runner, "batch": batch,
             "us_per_gradient_step": round(1e6 * statistics.median(times[(runner, batch)]), 1)}
            for runner, batch in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default ppo_lab/results/cartpole_stages.json)")
    parser.add_argument("--steps", type=int, default=STEPS, help="env steps per stage run")
    parser.add_argument("--runs", type=int, default=REPEATS, help="stage runs per runner")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, steps = args.worker[0], int(args.worker[1])
        out = (worker_step_cost() if name == "step_cost" else
               {"ppo_lab": worker_ppo_lab, "sb3": worker_sb3}[name](steps))
        print(json.dumps(out))
        return

    wall_start = time.perf_counter()
    stages: dict[str, list[dict]] = {"ppo_lab": [], "sb3": []}
    for run in range(args.runs):
        for runner in stages:
            row = run_worker(Path(__file__), [runner, str(args.steps)])
            stages[runner].append(row)
            print(f"{runner:8s} run {run}: {row['steps_per_second']:.0f} steps/s, rollout "
                  f"{row['us_per_vector_step']:.0f} us/vector step, update "
                  f"{row['us_per_gradient_step']:.0f} us/gradient step", flush=True)
    step_cost = run_worker(Path(__file__), ["step_cost", "0"])

    medians = {runner: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
               for runner, rows in stages.items()}
    ours, sb3 = medians["ppo_lab"], medians["sb3"]
    speedups = {key: round(sb3[key] / ours[key], 3) for key in
                ("seconds", "rollout_seconds", "update_seconds", "us_per_vector_step",
                 "us_per_gradient_step")}
    fits = {}
    for runner in stages:
        points = [(r["batch"], r["us_per_gradient_step"]) for r in step_cost if r["runner"] == runner]
        fit = statistics.linear_regression(*zip(*[p for p in points if p[0] <= 256]))
        intercept, slope = fit.intercept, fit.slope
        at_256 = dict(points)[256]
        fits[runner] = {"intercept_us": round(intercept, 1), "slope_us_per_transition": round(slope, 3),
                        "us_at_256": at_256, "fixed_share_at_256": round(intercept / at_256, 3)}
        print(f"{runner:8s} gradient step: {intercept:.0f} us fixed + {slope:.2f} us per transition "
              f"(fixed share at B=256: {intercept / at_256:.0%})")
    ratio_by_batch = {str(b): round(
        next(r["us_per_gradient_step"] for r in step_cost if r["runner"] == "sb3" and r["batch"] == b)
        / next(r["us_per_gradient_step"] for r in step_cost if r["runner"] == "ppo_lab" and r["batch"] == b), 3)
        for b in BATCH_SIZES}
    for key, value in speedups.items():
        print(f"sb3/ppo_lab {key}: {value}")
    path = write("cartpole_stages",
                 {"env_steps": args.steps, "runs": args.runs, "epochs": EPOCHS, "batch_sizes": list(BATCH_SIZES),
                  "torch_threads": 1, "line_fit_batch_sizes": [b for b in BATCH_SIZES if b <= 256],
                  "benchmark_wall_seconds": round(time.perf_counter() - wall_start, 1)},
                 [{"part": "stages", "runner": runner, "run": i, **row}
                  for runner, rows in stages.items() for i, row in enumerate(rows)]
                 + [{"part": "step_cost", **row} for row in step_cost],
                 out=args.out,
                 summary={"stage medians": medians, "speedup sb3/ppo_lab": speedups,
                          "gradient step = fixed + slope x B": fits,
                          "gradient step speedup sb3/ppo_lab by B": ratio_by_batch})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
