"""GAE benchmark (§4.6): how fast is ``gae_advantages``, and is its T-step Python loop the
right choice? Writes ``benchmarks/results/gae.json``.

Implementations, all float32, all checked against ``gae_advantages`` before they are timed:

- ``gae_advantages``: the package function, argument checks included.
- ``backward_discounted_sum``: its recursion alone (T fused ``addcmul`` steps over ``[N]``).
- ``scan``: the same recursion as a log-depth scan of affine maps (eq. (4.10)): ⌈log₂T⌉ rounds,
  each one vectorised op over ``[T, N]`` — O(TN log T) work instead of O(TN).
- ``reference``: ``ppo_lab.core.reference.gae_advantages``, Python floats, one step at a time.
- ``python_insert0``: the draft's pattern (errata 3) — a Python loop per env that prepends each
  advantage with ``list.insert(0, ·)``, O(T²) moves per env (episode ends respected here, so the
  results agree; the draft also leaked across them).

    python benchmarks/gae.py            # the committed table (about a minute on 2 CPU cores)
    python benchmarks/gae.py --quick    # a smoke run: tiny shapes, a few repeats
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import tyro

from ppo_lab import gae_advantages
from ppo_lab.core import reference
from ppo_lab.core.returns import backward_discounted_sum

from common import time_call, write  # benchmarks/common.py (the script's own folder is on sys.path)

GAMMA, LAMBDA = 0.99, 0.95


@dataclasses.dataclass
class Config:
    """Benchmark ``gae_advantages`` against a log-depth scan and two pure-Python loops."""

    shapes: tuple[tuple[int, int], ...] = ((128, 4), (2048, 1), (2048, 16), (256, 256), (512, 64), (16384, 1))
    """[T, N] shapes: CleanRL CartPole (128×4), SB3's default single env (2048×1), many envs,
    an LLM batch in time-major form (512 tokens × 64 responses), one long sequence."""
    python_max_elements: int = 32768
    """Skip the two pure-Python loops above this many T·N elements (they take seconds)."""
    min_time_s: float = 0.3
    """Measure each case for at least this long (median and IQR over the calls)."""
    threads: int = 1
    """torch intra-op threads. 1 (as the Makefile sets for the chapters): above 32768 elements
    torch splits an op over threads, and on a machine with other load that wait dominates."""
    quick: bool = False
    """Smoke run: shapes (16, 2) and (64, 4), 0.01 s per case."""
    out: Path | None = None
    """Where to write the JSON (default benchmarks/results/gae.json)."""


def scan_discounted_sum(x: torch.Tensor, discounts: torch.Tensor) -> torch.Tensor:
    """``y_t = x_t + c_t y_{t+1}`` by composing affine maps (eq. (4.10)) in ⌈log₂T⌉ rounds.

    After the round with shift s, ``y_t = a_t + b_t · y_{t+s}`` (y past the end is 0).
    """
    a, b = x, discounts
    shift = 1
    while shift < x.shape[0]:
        a = torch.cat([torch.addcmul(a[:-shift], b[:-shift], a[shift:]), a[-shift:]])
        b = torch.cat([b[:-shift] * b[shift:], torch.zeros_like(b[-shift:])])
        shift *= 2
    return a


def python_insert0(rewards, values, next_values, terminated, episode_ends, gamma, gae_lambda):
    """The draft's list-building loop, one env at a time (eq. (4.9) per element)."""
    T, N = rewards.shape
    r, v, nv = rewards.tolist(), values.tolist(), next_values.tolist()
    term, ends = terminated.tolist(), episode_ends.tolist()
    columns = []
    for n in range(N):
        advantages, last = [], 0.0
        for t in reversed(range(T)):
            bootstrap = 0.0 if term[t][n] else gamma * nv[t][n]
            last = r[t][n] + bootstrap - v[t][n] + (0.0 if ends[t][n] else gamma * gae_lambda * last)
            advantages.insert(0, last)  # moves every element already in the list: O(T) per step
        columns.append(advantages)
    return torch.tensor(columns, dtype=rewards.dtype).T


def rollout(T: int, N: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(T * 100_003 + N)
    terminated = torch.rand(T, N, generator=gen) < 0.01
    episode_ends = terminated | (torch.rand(T, N, generator=gen) < 0.005)
    tensors = dict(
        rewards=torch.randn(T, N, generator=gen), values=torch.randn(T, N, generator=gen),
        next_values=torch.randn(T, N, generator=gen), terminated=terminated, episode_ends=episode_ends,
    )
    return {k: t.to(device) for k, t in tensors.items()}


def cases(T: int, N: int, device: str, python_max_elements: int):
    """(name, fn returning advantages) for one shape; the recursion-only ones share deltas."""
    args = rollout(T, N, device)
    deltas = args["rewards"] + GAMMA * torch.where(args["terminated"], 0, args["next_values"]) - args["values"]
    discounts = GAMMA * LAMBDA * (~args["episode_ends"]).float()
    yield "gae_advantages", lambda: gae_advantages(**args, gamma=GAMMA, gae_lambda=LAMBDA)[0]
    yield "backward_discounted_sum", lambda: backward_discounted_sum(deltas, discounts)
    yield "scan", lambda: scan_discounted_sum(deltas, discounts)
    if device == "cpu" and T * N <= python_max_elements:
        yield "reference", lambda: reference.gae_advantages(**args, gamma=GAMMA, gae_lambda=LAMBDA)[0]
        yield "python_insert0", lambda: python_insert0(**args, gamma=GAMMA, gae_lambda=LAMBDA)


def run(config: Config) -> list[dict]:
    shapes = ((16, 2), (64, 4)) if config.quick else config.shapes
    min_time_s = 0.01 if config.quick else config.min_time_s
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for T, N in shapes:
            expected = None
            for impl, fn in cases(T, N, device, config.python_max_elements):
                out = fn()
                expected = out if expected is None else expected
                max_abs_diff = (out.to(expected.device) - expected).abs().max().item()
                scale = expected.abs().max().item()
                if not max_abs_diff <= 1e-4 * max(1.0, scale):
                    raise AssertionError(f"{impl} disagrees with gae_advantages at [{T}, {N}]: {max_abs_diff}")
                timing = time_call(fn, sync=sync, min_time_s=min_time_s)
                rows.append({"T": T, "N": N, "device": device, "impl": impl, **timing,
                             "max_abs_diff": max_abs_diff})
                print(f"{device:4} [{T:5}, {N:3}] {impl:24} min {timing['min_ms']:9.3f} ms, median "
                      f"{timing['median_ms']:9.3f} (IQR {timing['iqr_ms']:.3f}, n={timing['repeats']})", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one row per (device, shape), one column per implementation (best ms per call)."""
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    keyed = {(r["device"], r["T"], r["N"], r["impl"]): r["min_ms"] for r in rows}
    shapes = list(dict.fromkeys((r["device"], r["T"], r["N"]) for r in rows))
    lines = ["| device | [T, N] | " + " | ".join(impls) + " |", "|---|---|" + "---:|" * len(impls)]
    for device, T, N in shapes:
        cells = [keyed.get((device, T, N, i), math.nan) for i in impls]
        lines.append(f"| {device} | [{T}, {N}] | " + " | ".join("—" if math.isnan(c) else f"{c:.3g}" for c in cells) + " |")
    return "\n".join(lines)


def main(config: Config) -> Path:
    torch.set_num_threads(config.threads)
    rows = run(config)
    path = write("gae", {**dataclasses.asdict(config), "out": None, "gamma": GAMMA, "gae_lambda": LAMBDA,
                         "dtype": "float32"}, rows, config.out)
    print(f"\nbest ms per call (min over repeats), written to {path}\n\n{table(rows)}")
    return path


if __name__ == "__main__":
    main(tyro.cli(Config))
