"""CartPole PPO on the CPU and on a GPU as the batch grows: when does the accelerator pay?

    python benchmarks/devices.py    # writes ppo_lab/results/devices.json

ppo_lab's tuned ``cartpole`` preset (T = 32 steps per rollout, 2 minibatches x 6 epochs) with
N = 16, 256 and 2048 sub-environments, so 512, 8,192 and 65,536 transitions per update, each
run a fresh process with one CPU thread: on ``cpu`` and, where ``torch.cuda.is_available()``, on
``cuda``, the devices interleaved, ``--runs`` runs each. Only the networks and the update move
to the device: gymnasium's numpy CartPole always steps on the CPU, so every rollout step sends
N observations to the device and N actions back.

Timers wrap the two stages of every update, the rollout (``collect_rollout``) and the K epochs
of gradient steps (``_optimise``); the first update of a run is left out (it pays for CUDA's and
the allocator's start-up). Learning is not measured here: only where the time goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, run_worker, write  # noqa: E402

NUM_ENVS = (16, 256, 2048)
UPDATES = {16: 40, 256: 20, 2048: 10}  # timed updates per run (plus one warm-up update)
REPEATS = 3  # runs per (device, N) (--runs)


def worker(device: str, num_envs: int, updates: int) -> dict:
    import torch

    import ppo_lab.toy.ppo as ppo

    torch.set_num_threads(1)
    preset = ppo.PRESETS["cartpole"][1]
    config = preset.replace(seed=0, device=device, num_envs=num_envs,
                            total_timesteps=(updates + 1) * num_envs * preset.num_steps)
    rollout, update = Timer(ppo, "collect_rollout"), Timer(ppo, "_optimise")
    result = ppo.train(config)
    first, last = result.history[0], result.history[-1]
    timed = result.history[1:]  # after the warm-up update
    grad_steps = sum(row["epochs"] for row in timed) * config.num_minibatches
    rollout_s, update_s = sum(rollout.times[1:]), sum(update.times[1:])
    return {
        "device": device, "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "num_envs": num_envs, "batch_size": num_envs * config.num_steps, "updates": len(timed),
        "steps_per_second": round((last["global_step"] - first["global_step"])
                                  / (last["time"] - first["time"]), 1),
        "rollout_ms_per_update": round(1e3 * rollout_s / len(timed), 3),
        "update_ms_per_update": round(1e3 * update_s / len(timed), 3),
        "us_per_vector_step": round(1e6 * rollout_s / (len(timed) * config.num_steps), 1),
        "us_per_gradient_step": round(1e6 * update_s / grad_steps, 1),
        "peak_gpu_mib": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                         if device == "cuda" else None),
    }


KEYS = ("steps_per_second", "rollout_ms_per_update", "update_ms_per_update", "us_per_vector_step",
        "us_per_gradient_step")


def summarise(rows: list[dict]) -> dict:
    """Per N: each device's medians over its runs and, with a GPU, the ratios GPU over CPU."""
    summary = {}
    for n in sorted({r["num_envs"] for r in rows}):
        entry = {}
        for device in ("cpu", "cuda"):
            runs = [r for r in rows if r["num_envs"] == n and r["device"] == device]
            if runs:
                entry[device] = {k: statistics.median(r[k] for r in runs) for k in KEYS}
        if "cuda" in entry:
            cpu, gpu = entry["cpu"], entry["cuda"]
            entry["gpu_speedup"] = {  # > 1: the GPU is faster
                "steps_per_second": round(gpu["steps_per_second"] / cpu["steps_per_second"], 3),
                "rollout": round(cpu["rollout_ms_per_update"] / gpu["rollout_ms_per_update"], 3),
                "update": round(cpu["update_ms_per_update"] / gpu["update_ms_per_update"], 3),
            }
        summary[str(n)] = entry
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default ppo_lab/results/devices.json)")
    parser.add_argument("--runs", type=int, default=REPEATS, help="runs per (device, N)")
    parser.add_argument("--num-envs", type=int, nargs="+", default=list(NUM_ENVS),
                        help="sub-environment counts N to measure")
    parser.add_argument("--updates", type=int, default=None,
                        help="timed updates per run (default: 40, 20, 10 for N = 16, 256, 2048)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if len(devices) == 1:
        print("no CUDA device: measuring the CPU only", flush=True)
    updates = {n: args.updates or UPDATES.get(n, 10) for n in args.num_envs}
    rows = []
    for run in range(args.runs):
        for n in args.num_envs:
            for device in devices:
                row = run_worker(Path(__file__), [device, str(n), str(updates[n])])
                rows.append({"run": run, **row})
                print(f"N={n:5d} {device:4s} run {run}: {row['steps_per_second']:9.0f} steps/s, "
                      f"rollout {row['rollout_ms_per_update']:8.2f} ms, update "
                      f"{row['update_ms_per_update']:8.2f} ms per update "
                      f"({row['us_per_gradient_step']:.0f} us per gradient step)", flush=True)
    summary = summarise(rows)
    for n, entry in summary.items():
        if "gpu_speedup" in entry:
            print(f"N={n}: GPU/CPU steps/s {entry['gpu_speedup']['steps_per_second']:.2f}x "
                  f"(rollout {entry['gpu_speedup']['rollout']:.2f}x, "
                  f"update {entry['gpu_speedup']['update']:.2f}x)")
    path = write("devices", {"preset": "cartpole", "num_envs": args.num_envs, "runs": args.runs,
                             "updates": {str(n): u for n, u in updates.items()},
                             "devices": devices, "torch_threads": 1},
                 rows, out=args.out, summary=summary)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
