"""GAE benchmark (§4.6): ``gae_advantages`` (a log-depth scan) against two loops. Writes
``ppo_lab/results/gae.json`` and prints the table the book shows.

Three implementations of Eq. (4.9), float32, all checked against ``gae_advantages`` first:

- ``reference``: ``ppo_lab.core.reference.gae_advantages``, Python floats, one element at a time.
- ``cleanrl_loop``: the per-step backward recursion as CleanRL's ``ppo.py`` writes it — one
  Python iteration per step t, whole-``[N]`` tensor ops inside (``cleanrl_loop`` below).
- ``gae_advantages``: the package function, argument checks included.

One torch thread; every implementation is timed at every shape, one call per timing, the three
interleaved round by round (in a rotating order) in one process so that changing load hits
them alike; the median over the rounds is reported. Also recorded: the float32 advantages'
relative error against the float64 loop at T = 2048, and a T = 100 000 recursion with γλ = 0.999
and no episode end (it must stay finite).

    python benchmarks/gae.py            # the committed table (about ten seconds on one core)
    python benchmarks/gae.py --quick    # a smoke run: small shapes, 3 rounds
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import time
from pathlib import Path

import torch
import tyro

from ppo_lab import gae_advantages
from ppo_lab.core import reference
from ppo_lab.core.returns import backward_discounted_sum

from common import write  # benchmarks/common.py (the script's own folder is on sys.path)

GAMMA, LAMBDA = 0.99, 0.95
IMPLS = ("reference", "cleanrl_loop", "gae_advantages")
MAX_REL_ERROR = 1e-5
"""float32 ``gae_advantages`` against the float64 loop at T = 2048, N = 8: max |error| / max |A|."""


@dataclasses.dataclass
class Config:
    """Time ``gae_advantages`` against the pure-Python twin and CleanRL's per-step loop."""

    shapes: tuple[tuple[int, int], ...] = ((2048, 8), (512, 64), (128, 1024))
    """[T, N] shapes: a long rollout of a few envs (SB3's n_steps 2048), the middle, and a short
    rollout of many envs (CleanRL's 128 steps; a GPU-simulated vector env)."""
    rounds: int = 21
    """Timed calls per implementation and shape (one per round, after one warm-up call)."""
    threads: int = 1
    """torch intra-op threads."""
    long_horizon: int = 100_000
    """T of the long-recursion check (γλ = 0.999, no episode end, float32)."""
    quick: bool = False
    """Smoke run: shapes (64, 4) and (16, 32), 3 rounds."""
    out: Path | None = None
    """Where to write the JSON (default ppo_lab/results/gae.json)."""


def cleanrl_loop(rewards, values, next_values, terminated, episode_ends, gamma, gae_lambda):
    """Eq. (4.9) the way CleanRL's ``ppo.py`` computes it: a Python loop over t, ``[N]`` ops.

    CleanRL has one ``dones`` flag for both bootstrap and recursion; with terminated and
    truncated apart (§4.5) there are two, and their complements are made once, before the loop
    (CleanRL computes ``1.0 - dones[t + 1]`` inside it, one more op per step).
    """
    nonterminal = 1.0 - episode_ends.float()  # (T, N): the recursion continues
    bootstrap = 1.0 - terminated.float()  # (T, N): next_values counts
    advantages = torch.zeros_like(rewards)
    lastgaelam = 0
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] * bootstrap[t] - values[t]  # (N,)
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nonterminal[t] * lastgaelam
    returns = advantages + values
    return advantages, returns


def rollout(T: int, N: int, dtype=torch.float32) -> dict:
    """A seeded [T, N] rollout: 1% terminations, 0.5% truncations."""
    gen = torch.Generator().manual_seed(T * 100_003 + N)
    terminated = torch.rand(T, N, generator=gen) < 0.01
    episode_ends = terminated | (torch.rand(T, N, generator=gen) < 0.005)
    rewards, values, next_values = (torch.randn(T, N, generator=gen, dtype=dtype) for _ in range(3))
    return dict(rewards=rewards, values=values, next_values=next_values, terminated=terminated,
                episode_ends=episode_ends, gamma=GAMMA, gae_lambda=LAMBDA)


def calls(args: dict) -> dict:
    """Implementation name -> a call returning ``(advantages, returns)``."""
    return {
        "reference": lambda: reference.gae_advantages(**args),
        "cleanrl_loop": lambda: cleanrl_loop(**args),
        "gae_advantages": lambda: gae_advantages(**args),
    }


def relative_error(x: torch.Tensor, exact: torch.Tensor) -> float:
    return ((x.double() - exact).abs().max() / exact.abs().max()).item()


def time_interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Milliseconds of one call of each function, ``rounds`` times, the order rotating per round."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        fns[name]()  # warm-up
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: no collector pauses inside a timed call
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                fns[name]()
                times[name].append(1e3 * (time.perf_counter() - start))
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def benchmark_shape(T: int, N: int, rounds: int) -> tuple[list[dict], dict]:
    """Check the three implementations agree at [T, N], time them; rows and a summary entry."""
    fns = calls(rollout(T, N))
    expected, _ = fns["gae_advantages"]()
    rows = []
    for name, fn in fns.items():
        advantages, returns = fn()
        diff = (advantages - expected).abs().max().item()
        if not diff <= 1e-4 * max(1.0, expected.abs().max().item()):
            raise AssertionError(f"{name} disagrees with gae_advantages at [{T}, {N}]: max |diff| {diff}")
        rows.append({"T": T, "N": N, "impl": name, "max_abs_diff": diff})
    times = time_interleaved(fns, rounds)
    medians = {name: statistics.median(ms) for name, ms in times.items()}
    for row in rows:
        ms = times[row["impl"]]
        row.update(median_ms=medians[row["impl"]], min_ms=min(ms), max_ms=max(ms), rounds=len(ms), times_ms=ms)
    entry = {"T": T, "N": N, **{f"{name}_ms": medians[name] for name in IMPLS}}
    for name in IMPLS[:-1]:
        entry[f"speedup_vs_{name}"] = medians[name] / medians["gae_advantages"]
    return rows, entry


def accuracy() -> dict:
    """float32 ``gae_advantages`` against the float64 loop twin on the same inputs, T = 2048."""
    args = rollout(2048, 8)
    advantages, _ = gae_advantages(**args)
    args64 = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in args.items()}
    exact, _ = reference.gae_advantages(**args64)
    error = relative_error(advantages, exact)
    return {"T": 2048, "N": 8, "gamma": GAMMA, "gae_lambda": LAMBDA,
            "float32_vs_float64_loop_rel_error": error, "limit": MAX_REL_ERROR, "met": error <= MAX_REL_ERROR}


def long_horizon(T: int) -> dict:
    """y_t = x_t + 0.999·y_{t+1} over T steps, no episode end, float32: finite, and how close to
    the float64 loop."""
    x = torch.randn(T, 1, generator=torch.Generator().manual_seed(T))
    c = torch.full_like(x, 0.999)
    y = backward_discounted_sum(x, c)
    exact = reference.backward_discounted_sum(x.double(), c.double())
    finite = bool(torch.isfinite(y).all())
    return {"T": T, "N": 1, "gamma_lambda": 0.999, "dtype": "float32", "finite": finite,
            "max_abs": y.abs().max().item(), "rel_error_vs_float64_loop": relative_error(y, exact), "met": finite}


def table(summary: dict) -> str:
    """Markdown: median ms per call and the speed-ups of ``gae_advantages``."""
    lines = ["| [T, N] | " + " | ".join(f"{name} (ms)" for name in IMPLS)
             + " | × vs reference | × vs cleanrl_loop |",
             "|---|" + "---:|" * (len(IMPLS) + 2)]
    for shape, s in summary["shapes"].items():
        lines.append(f"| {shape} | " + " | ".join(f"{s[f'{name}_ms']:.3g}" for name in IMPLS)
                     + f" | {s['speedup_vs_reference']:.1f} | {s['speedup_vs_cleanrl_loop']:.1f} |")
    return "\n".join(lines)


def main(config: Config) -> Path:
    torch.set_num_threads(config.threads)
    shapes = ((64, 4), (16, 32)) if config.quick else config.shapes
    rounds = 3 if config.quick else config.rounds
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows, entries = [], {}
    for T, N in shapes:
        shape_rows, entry = benchmark_shape(T, N, rounds)
        rows += shape_rows
        entries[f"[{T}, {N}]"] = entry
        print(f"[{T}, {N}] median ms: " + ", ".join(f"{n} {entry[f'{n}_ms']:.3f}" for n in IMPLS), flush=True)
    checks = {"accuracy": accuracy(), "long_horizon": long_horizon(config.long_horizon)}
    summary = {"load_average_before": load_before, "shapes": entries, **checks}
    settings = {**dataclasses.asdict(config), "out": None, "shapes": [list(s) for s in shapes], "rounds": rounds,
                "gamma": GAMMA, "gae_lambda": LAMBDA, "dtype": "float32", "device": "cpu"}
    path = write("gae", settings, rows, config.out, summary=summary)
    acc, long = summary["accuracy"], summary["long_horizon"]
    print(f"\nmedian of {rounds} interleaved calls, {config.threads} thread(s), load average before "
          f"{load_before}; written to {path}\n\n{table(summary)}\n\n"
          f"float32 vs float64 loop at [2048, 8]: relative error {acc['float32_vs_float64_loop_rel_error']:.2e} "
          f"(limit {MAX_REL_ERROR:g})\nT = {long['T']}, γλ = 0.999: finite {long['finite']}, "
          f"relative error vs float64 loop {long['rel_error_vs_float64_loop']:.2e}")
    return path


if __name__ == "__main__":
    main(tyro.cli(Config))
