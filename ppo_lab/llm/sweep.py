"""The reward over-optimisation experiment of §7: PPO at several fixed KL coefficients β, seeds.

    ppo-lab rlhf sweep tiny                       # β ∈ {0, 0.01, 0.03, 0.1}, seeds 1 2 3
    ppo-lab rlhf sweep tiny --kl-coefs 0 0.1 --seeds 1 --jobs 2

Every run starts from the same SFT policy and reward model and differs only in β and the PPO
seed. Each evaluation (``RLHFConfig.eval_every``) samples one response per held-out prompt and
records the proxy score r_φ, the gold reward r* (the review task's exact reward, Eq. (7.1)) and
KL(π‖π_SFT). Plotted against KL, the proxy keeps rising while the gold reward peaks and falls
(Gao et al. 2023): the policy has found what the reward model cannot see. ``OUT/sweep.json``
holds every curve and, per run, the peak and final gold reward in units of the SFT policy's
gold standard deviation; ``OUT/sweep.png`` draws them.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import multiprocessing
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ppo_lab.config import ConfigBase, check_field
from ppo_lab.llm.ppo import PRESETS, RLHFConfig

__all__ = ["SWEEP_PRESETS", "SweepConfig", "SweepResult", "interpolate", "run_sweep",
           "summarise_run", "sweep_report"]


@dataclass
class SweepConfig(ConfigBase):
    """PPO runs at several fixed β and seeds. Every field is a flag of ``ppo-lab rlhf sweep``."""

    ppo: RLHFConfig = field(default_factory=RLHFConfig)
    """The PPO run every point shares (--ppo.iterations, --ppo.eval-every, …); its kl_coef and
    seed are replaced by each run's."""
    kl_coefs: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1)
    """β of each run (fixed controller); include 0 to see over-optimisation unchecked."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """PPO seeds per β (the SFT policy, reward model and evaluation prompts stay the same)."""
    jobs: int = 2
    """Runs in parallel, one CPU thread each."""
    out_dir: str | None = None
    """Write <out_dir>/sweep.json and <out_dir>/sweep.png; None = keep in memory only."""

    @property
    def seed(self) -> int:
        return self.seeds[0]

    def validate(self) -> None:
        self._positive_int("jobs")
        check_field(len(self.kl_coefs) > 0 and all(b >= 0 for b in self.kl_coefs), "kl_coefs",
                    f"needs values >= 0, got {self.kl_coefs}")
        check_field(len(self.seeds) > 0, "seeds", "needs at least one seed")
        check_field(self.ppo.eval_every > 0, "ppo.eval_every",
                    "must be > 0: the sweep's curves are the evaluations")


SWEEP_PRESETS: dict[str, tuple[str, SweepConfig]] = {
    "tiny": ("the review task: the committed tiny SFT policy and reward model, 4 β x 3 seeds",
             SweepConfig(ppo=PRESETS["tiny"][1].replace(iterations=60, eval_every=2,
                                                       eval_prompts=128))),
}


@dataclass
class SweepResult:
    config: SweepConfig
    runs: list[dict[str, Any]]
    summary: dict[str, Any]


def _one_run(config: dict) -> dict:
    """One (β, seed) run in a worker process: its evaluations and per-iteration curves."""
    from ppo_lab.llm.ppo import train

    config = RLHFConfig(**config)
    start = time.perf_counter()
    result = train(config)
    keys = ("objective/scores", "objective/gold_reward", "objective/kl")
    return {"kl_coef": config.kl_coef, "seed": config.seed, "evals": result.evals,
            "seconds": time.perf_counter() - start,
            "history": {k: [row[k] for row in result.history] for k in keys}}


def summarise_run(run: dict) -> dict:
    """Peak and final gold reward of a run, in SFT gold std (the first evaluation's), and whether
    the proxy score is still rising past the gold peak."""
    evals = run["evals"]
    sft_gold, sft_std = evals[0]["gold"], evals[0]["gold_std"]
    peak = max(range(len(evals)), key=lambda i: evals[i]["gold"])
    final = evals[-1]
    return {"kl_coef": run["kl_coef"], "seed": run["seed"], "sft_gold": sft_gold,
            "sft_gold_std": sft_std, "peak_gold": evals[peak]["gold"],
            "peak_iteration": evals[peak]["iteration"], "final_gold": final["gold"],
            "final_scores": final["scores"], "final_kl": final["kl"],
            "peak_gain_in_sft_std": (evals[peak]["gold"] - sft_gold) / sft_std,
            "final_gain_in_sft_std": (final["gold"] - sft_gold) / sft_std,
            "drop_from_peak_in_sft_std": (evals[peak]["gold"] - final["gold"]) / sft_std,
            "proxy_rises_after_gold_peak": final["scores"] > evals[peak]["scores"]}


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """y at x on the piecewise-linear curve through (xs, ys) sorted by x; None outside it (e.g. a
    run's gold reward at a given KL, from its evaluations)."""
    points = sorted(zip(xs, ys))
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def run_sweep(config: SweepConfig, progress: bool = True, command: str = "") -> SweepResult:
    """Every (β, seed) run, ``jobs`` at a time in fresh one-thread processes. ``OUT/sweep.json``
    is rewritten after each finished run, so an interrupted sweep keeps what it measured."""
    start = time.perf_counter()
    todo = [asdict(config.ppo.replace(kl_coef=b, adaptive_kl=False, seed=s, out_dir=None,
                                      checkpoint_every=0, resume=False, torch_threads=1))
            for s in config.seeds for b in config.kl_coefs]  # every β's first seed first
    context = multiprocessing.get_context("spawn")  # a clean torch per worker
    runs: list[dict] = []
    with concurrent.futures.ProcessPoolExecutor(config.jobs, mp_context=context) as pool:
        for run in pool.map(_one_run, todo):
            runs.append(run)
            summary = {"seconds": time.perf_counter() - start,
                       "per_run": [summarise_run(r) for r in runs]}
            if config.out_dir is not None:
                _write(Path(config.out_dir), config, runs, summary, command)
            if progress:
                s = summary["per_run"][-1]
                print(f"β={s['kl_coef']:g} seed {s['seed']}: gold {s['sft_gold']:.2f} -> peak "
                      f"{s['peak_gold']:.2f} -> {s['final_gold']:.2f}, KL {s['final_kl']:.1f}, "
                      f"{run['seconds']:.0f} s", flush=True)
    if config.out_dir is not None:
        plot_sweep(runs, Path(config.out_dir) / "sweep.png")
    return SweepResult(config, runs, summary)


def _write(out: Path, config: SweepConfig, runs: list[dict], summary: dict, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "rlhf_sweep", "command": command,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": _machine(), "config": asdict(config), "results": runs, "summary": summary}
    tmp = out / "sweep.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out / "sweep.json")  # atomic


def sweep_report(result: SweepResult) -> str:
    lines = ["sweep: β  seed  peak gold (+SFT std)  final gold (drop from peak)  final KL"]
    for r in result.summary["per_run"]:
        lines.append(f"  {r['kl_coef']:<5g} {r['seed']:<4} {r['peak_gold']:7.3f} "
                     f"({r['peak_gain_in_sft_std']:+.2f})   {r['final_gold']:7.3f} "
                     f"({r['drop_from_peak_in_sft_std']:.2f} std)   {r['final_kl']:6.2f}")
    lines.append(f"{len(result.runs)} runs in {result.summary['seconds']:.0f} s")
    return "\n".join(lines)


def plot_sweep(runs: list[dict], path: Path) -> None:
    """Gold reward and proxy score against KL(π‖π_SFT), one colour per β, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    betas = sorted({r["kl_coef"] for r in runs})
    colours = plt.get_cmap("viridis")([i / max(len(betas) - 1, 1) for i in range(len(betas))])
    for run in runs:
        colour = colours[betas.index(run["kl_coef"])]
        kl = [e["kl"] for e in run["evals"]]
        first = run is next(r for r in runs if r["kl_coef"] == run["kl_coef"])
        for ax, key in zip(axes, ("gold", "scores")):
            ax.plot(kl, [e[key] for e in run["evals"]], "o-", ms=3, color=colour, alpha=0.8,
                    label=rf"$\beta={run['kl_coef']:g}$" if first else None)
    axes[0].set_ylabel(r"gold reward $r^*$")
    axes[1].set_ylabel(r"proxy score $r_\phi$")
    for ax in axes:
        ax.set_xlabel(r"KL$(\pi\,\|\,\pi_{\mathrm{SFT}})$ (nats per response)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu cores": str(os.cpu_count()), "torch": torch.__version__,
            "load average": " ".join(f"{x:.2f}" for x in os.getloadavg())}
