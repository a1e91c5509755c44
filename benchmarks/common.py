"""What every benchmark script shares: the stamp (command, machine, time) and the JSON writer.

Each ``benchmarks/<name>.py`` writes ``ppo_lab/results/<name>.json`` as
``{"benchmark", "command", "created", "machine", "config", "results": [rows]}`` so the book's
benchmark tables can be generated from the files alone (DESIGN.md: every committed result is
stamped with its command and machine).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ppo_lab.cli import doctor_report

RESULTS = Path(__file__).resolve().parent.parent / "ppo_lab" / "results"  # package data (ppo_lab.results)
ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    """The machine a result was measured on: CPU, core count, load average (1, 5, 15 min) when
    the result was written, then ``ppo-lab doctor``'s rows."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"cpu": _cpu_model(), "cpu cores": str(os.cpu_count()), "load average": load,
            **dict(doctor_report())}


def command() -> str:
    """The command line that produced this result, as a reader would type it."""
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def time_call(fn, *, sync=lambda: None, min_time_s: float = 0.2, max_repeats: int = 200) -> dict[str, float]:
    """Best (minimum), median and interquartile range (ms) of ``fn()`` after one warm-up call.

    The minimum is the least disturbed by other load on the machine (``timeit``'s advice); the
    median and IQR show how much that load mattered.

    Repeats until ``min_time_s`` of measurements (at least 5 calls) or ``max_repeats``. ``sync``
    (e.g. ``torch.cuda.synchronize``) runs before each clock read so GPU work is counted.
    """
    fn()
    sync()
    times: list[float] = []
    while len(times) < max_repeats and (len(times) < 5 or sum(times) < min_time_s):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"min_ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times),
            "iqr_ms": 1e3 * (q3 - q1), "repeats": len(times)}


def write(name: str, config: dict, results: list[dict], out: Path | None = None,
          summary: dict | None = None) -> Path:
    """Write the stamped result file (default ``ppo_lab/results/<name>.json``); return its path.

    ``summary`` (medians, ratios) is stored beside the per-run ``results`` rows.
    """
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": command(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": config,
        "results": results,
    }
    if summary is not None:
        record["summary"] = summary
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(out)  # atomic: a reader never sees half a file
    return out


# --- training benchmarks (cartpole, pendulum, ablations) ----------------------------------

# SB3's PPO with the rl-baselines3-zoo CartPole-v1 set (hyperparams/ppo.yml): n_envs 8, n_steps 32,
# batch 256, 20 epochs, gamma 0.98, lambda 0.8, learning rate and clip range linear from 1e-3 and
# 0.2 (SB3 passes the remaining progress, 1 -> 0), no entropy bonus. ppo_lab's ``cartpole-zoo``
# preset is the same set; every SB3 comparison builds its model from these keyword arguments.
SB3_CARTPOLE_ZOO = dict(n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8,
                        learning_rate=lambda progress: 1e-3 * progress,
                        clip_range=lambda progress: 0.2 * progress, ent_coef=0.0)



class Timer:
    """Wraps ``obj.name`` so every call's wall-clock time is appended to ``times``. The wrapper
    stays for the rest of the process: use it in workers."""

    def __init__(self, obj, name: str):
        self.times: list[float] = []
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.times.append(time.perf_counter() - start)

        setattr(obj, name, timed)

    @property
    def seconds(self) -> float:
        return sum(self.times)

    @property
    def calls(self) -> int:
        return len(self.times)


def run_worker(script: Path, args: Sequence[str]) -> dict:
    """Run ``python script --worker ARGS`` in a fresh process; return the JSON it prints last.

    A fresh process per training run keeps imports, allocator state and peak RSS of one run out
    of the next; ``OMP_NUM_THREADS=1`` and ``MKL_NUM_THREADS=1`` pin it to one thread.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(script), "--worker", *args], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {list(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def last_mean(episodes: Sequence[dict], window: int = 20) -> float | None:
    """Mean return of the last ``window`` episodes."""
    tail = [e["return"] for e in episodes[-window:]]
    return sum(tail) / len(tail) if tail else None


def subsample_curve(episodes: Sequence[dict], points: int = 100, window: int = 20) -> dict:
    """Running mean (over ``window`` episodes) of the return at ~``points`` evenly spaced
    episodes: small enough to commit, dense enough to plot."""
    steps, means = [], []
    if episodes:
        stride = max(1, len(episodes) // points)
        returns = [e["return"] for e in episodes]
        for i in range(stride - 1, len(episodes), stride):
            lo = max(0, i + 1 - window)
            steps.append(episodes[i]["global_step"])
            means.append(round(sum(returns[lo:i + 1]) / (i + 1 - lo), 2))
    return {"global_step": steps, "mean_return": means}


def median(xs):
    """Median of the non-None values, or None."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
