"""PPO-RLHF on the review task (§7): gold-reward gains per seed against the SFT policy and best-of-n.

    python benchmarks/rlhf_tiny.py                  # seeds 1 2 3 -> ppo_lab/results/rlhf_tiny.json
    python benchmarks/rlhf_tiny.py --seeds 4 --iterations 10 --out /tmp/x.json

From the committed tiny SFT policy and reward model (``ppo-lab rlhf ppo tiny``'s preset), on the
held-out prompts of ``RLHFConfig.eval_prompts`` (review-task seed ``task_seed + 1``):

- the SFT policy: mean and standard deviation of the gold reward of one sample per prompt;
- best-of-n: n samples per prompt from the SFT policy, the one the gold reward (an oracle) or the
  proxy reward model ranks highest kept, n = 1, 2, 4, …, 64; its KL to the SFT policy is at most
  log n − (n − 1)/n (Stiennon et al. 2020, appendix G; Beirami et al. 2024);
- PPO, one run per seed: the gold reward, proxy score and KL on the same prompts at every
  evaluation (``--eval-every``, default every iteration: evaluation samples from its own seeded
  generator, so it does not change the training run), wall-clock and CPU seconds of the run. A
  run's gain is (gold − SFT mean) / SFT std; the gap it closes is (gold − SFT mean) /
  (best-of-64-by-gold − SFT mean); at each best-of-n's KL bound the PPO curve's gold (linear
  interpolation between evaluations) is set against the best-of-n-by-proxy gold, and
  ``beats_best_of_n_at_matched_kl`` says whether PPO's is higher at every n.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from ppo_lab.llm.sweep import interpolate  # noqa: E402

NS = (1, 2, 4, 8, 16, 32, 64)


def best_of_n_kl_bound(n: int) -> float:
    """KL(best-of-n ‖ π) ≤ log n − (n − 1)/n."""
    return math.log(n) - (n - 1) / n


@torch.no_grad()
def best_of_n(config, prompts: list[str], *, max_n: int = 64, seed: int = 0,
              chunk: int = 2048) -> dict:
    """SFT statistics and best-of-n by gold and by the proxy reward model, on ``prompts``."""
    from ppo_lab.llm.models import (load_causal_lm, load_scalar_model, load_tokenizer,
                                    sampling_spec, sequence_scores)
    from ppo_lab.llm.ppo import _decode, _encode_prompts
    from ppo_lab.llm.rollout import generate
    from ppo_lab.llm.task import ReviewTask

    from ppo_lab.llm.assets import tiny_path
    model = config.model or str(tiny_path("sft"))
    tokenizer = load_tokenizer(model)
    policy = load_causal_lm(model)
    reward = load_scalar_model(config.reward_model or str(tiny_path("reward")))
    spec = sampling_spec(tokenizer, config.temperature)
    task = ReviewTask()
    repeated = [p for p in prompts for _ in range(max_n)]  # prompt i's samples are rows i·n …
    gold, proxy = [], []
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(repeated), chunk):
        texts = repeated[start:start + chunk]
        ids, mask = _encode_prompts(tokenizer, texts)
        batch, _ = generate(policy, ids, mask, spec, max_new_tokens=config.max_new_tokens,
                            eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, generator=generator)
        gold.append(task.gold_rewards(texts, _decode(tokenizer, batch), eos=batch.eos.tolist()))
        proxy.append(sequence_scores(reward, batch))
    gold = torch.cat(gold).view(len(prompts), max_n)  # [prompts, n]
    proxy = torch.cat(proxy).view(len(prompts), max_n)
    rows = []
    for n in NS:
        by_proxy = gold[:, :n].gather(1, proxy[:, :n].argmax(1, keepdim=True)).squeeze(1)
        rows.append({"n": n, "kl_bound": best_of_n_kl_bound(n),
                     "gold_best_by_gold": float(gold[:, :n].max(1).values.mean()),
                     "gold_best_by_proxy": float(by_proxy.mean()),
                     "proxy_best_by_proxy": float(proxy[:, :n].max(1).values.mean())})
    first = gold[:, 0]
    return {"sft_gold_mean": float(first.mean()), "sft_gold_std": float(first.std()),
            "sft_proxy_mean": float(proxy[:, 0].mean()), "best_of_n": rows}


def run_seed(config) -> dict:
    from ppo_lab.llm.ppo import train

    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime, time.perf_counter()
    result = train(config)
    return {"seed": config.seed, "wall_seconds": time.perf_counter() - wall0,
            "cpu_seconds": resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0,
            "train_seconds": sum(r["time/iteration"] for r in result.history),
            "evals": result.evals}


def main(argv: list[str] | None = None) -> None:
    from ppo_lab.llm.ppo import PRESETS
    from ppo_lab.llm.task import ReviewTask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iterations", type=int, default=None, help="override the preset's")
    parser.add_argument("--eval-every", type=int, default=1,
                        help="evaluate on the held-out prompts every K iterations (default 1)")
    parser.add_argument("--model", default=None, help="SFT policy (default: committed tiny)")
    parser.add_argument("--reward-model", default=None, help="default: committed tiny")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    base = PRESETS["tiny"][1].replace(model=args.model, reward_model=args.reward_model,
                                      eval_every=args.eval_every)
    if args.iterations:
        base = base.replace(iterations=args.iterations)
    prompts = ReviewTask().prompts(base.eval_prompts, seed=base.task_seed + 1)
    baseline = best_of_n(base, prompts)
    mean, std = baseline["sft_gold_mean"], baseline["sft_gold_std"]
    best64 = baseline["best_of_n"][-1]["gold_best_by_gold"]
    runs = []
    for seed in args.seeds:
        run = run_seed(base.replace(seed=seed))
        final = run["evals"][-1]
        kls, golds = [e["kl"] for e in run["evals"]], [e["gold"] for e in run["evals"]]
        run.update({
            "final_gold": final["gold"], "final_kl": final["kl"], "final_scores": final["scores"],
            "gain_in_sft_std": (final["gold"] - mean) / std,
            "gap_closed_to_best_of_64": (final["gold"] - mean) / (best64 - mean),
            "vs_best_of_n_by_proxy": [
                {"n": row["n"], "kl_bound": row["kl_bound"],
                 "ppo_gold_at_kl": interpolate(kls, golds, row["kl_bound"]),
                 "best_of_n_gold": row["gold_best_by_proxy"]}
                for row in baseline["best_of_n"] if row["n"] > 1]})
        matched = run["vs_best_of_n_by_proxy"]
        run["beats_best_of_n_at_matched_kl"] = all(
            r["ppo_gold_at_kl"] is not None and r["ppo_gold_at_kl"] > r["best_of_n_gold"] for r in matched)
        runs.append(run)
        print(f"seed {seed}: gold {mean:.3f} -> {final['gold']:.3f} "
              f"({run['gain_in_sft_std']:+.2f} SFT std, {run['gap_closed_to_best_of_64']:.0%} "
              f"of the gap to best-of-64), KL {final['kl']:.2f}, {run['cpu_seconds']:.0f} s CPU",
              file=sys.stderr)
    summary = {"sft": {k: v for k, v in baseline.items() if k != "best_of_n"},
               "best_of_64_by_gold": best64,
               "min_gain_in_sft_std": min(r["gain_in_sft_std"] for r in runs),
               "min_gap_closed_to_best_of_64": min(r["gap_closed_to_best_of_64"] for r in runs),
               "seeds_beating_best_of_n_at_matched_kl": sum(r["beats_best_of_n_at_matched_kl"]
                                                           for r in runs)}
    path = write("rlhf_tiny", {"preset": base.to_dict(), "seeds": args.seeds,
                               "eval_prompts": len(prompts), "torch_threads": 1,
                               "best_of_n": baseline["best_of_n"]},
                 runs, out=args.out, summary=summary)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
