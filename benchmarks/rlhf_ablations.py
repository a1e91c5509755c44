"""The stability tricks of PPO-RLHF, each switched off or on alone (§7), and a β = 0 run's samples.

    python benchmarks/rlhf_ablations.py                 # -> ppo_lab/results/rlhf_ablations.json
    python benchmarks/rlhf_ablations.py --seeds 1 --jobs 1      # one seed, one process
    python benchmarks/rlhf_ablations.py --variants baseline "no gradient clipping" --out /tmp/x.json

Every run is ``ppo-lab rlhf ppo tiny`` (the committed tiny SFT policy and reward model) with one
field of ``RLHFConfig`` changed (``VARIANTS``); each runs in a fresh one-thread worker process.
Per run: the held-out evaluations (gold reward, proxy score, KL to the SFT policy), the
per-iteration log rows of the diagnostics in ``HISTORY_KEYS``, wall-clock and CPU seconds, and
a few responses of the final policy to held-out prompts, decoded, with each gold-reward term.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

VARIANTS: dict[str, dict] = {
    "baseline": {},
    "no advantage whitening": {"whiten_advantages": "off"},
    "per-minibatch whitening": {"whiten_advantages": "minibatch"},
    "no gradient clipping": {"max_grad_norm": None},
    "no value clipping": {"vf_clip_eps": None},
    "reward whitening": {"whiten_scores": True},
    "reward clipping at 1": {"clip_scores": 1.0},
    "adaptive KL, target 2": {"adaptive_kl": True, "kl_coef": 0.05, "kl_target": 2.0, "kl_horizon": 160},
    "beta = 0, 80 iterations": {"kl_coef": 0.0, "iterations": 80},
}

HISTORY_KEYS = ("objective/scores", "objective/gold_reward", "objective/kl", "objective/kl_coef",
                "policy/approx_kl", "policy/clip_fraction", "policy/entropy", "optim/grad_norm",
                "value/explained_variance", "value/clip_fraction", "response/length",
                "response/eos_fraction")

SAMPLE_PROMPTS = 6


def one_run(job: tuple[str, dict, int]) -> dict:
    """Train one variant with one seed (in a worker process); its evaluations, curves and samples."""
    import torch

    from ppo_lab.llm.ppo import PRESETS, _decode, _encode_prompts, train
    from ppo_lab.llm.rollout import generate
    from ppo_lab.llm.models import sampling_spec
    from ppo_lab.llm.task import ReviewTask

    name, changes, seed = job
    torch.set_num_threads(1)
    config = PRESETS["tiny"][1].replace(seed=seed, torch_threads=1, **changes)
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime, time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - wall0
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0

    task = ReviewTask()
    prompts = task.prompts(config.eval_prompts, seed=config.task_seed + 1)[:SAMPLE_PROMPTS]
    tokenizer = result.tokenizer
    ids, mask = _encode_prompts(tokenizer, prompts)
    with torch.no_grad():
        batch, _ = generate(result.policy, ids, mask, sampling_spec(tokenizer, config.temperature),
                            max_new_tokens=config.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id,
                            generator=torch.Generator().manual_seed(0))
    texts = _decode(tokenizer, batch)
    samples = [{"prompt": p, "response": y, "eos": bool(e), **task.gold_terms(p, y, eos=bool(e))}
               for p, y, e in zip(prompts, texts, batch.eos.tolist())]
    return {"variant": name, "changes": changes, "seed": seed, "wall_seconds": wall,
            "cpu_seconds": cpu, "evals": result.evals,
            "history": {k: [row[k] for row in result.history] for k in HISTORY_KEYS},
            "samples": samples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2, help="worker processes, one thread each")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from ppo_lab.llm.ppo import PRESETS

    jobs = [(name, VARIANTS[name], seed) for name in args.variants for seed in args.seeds]
    context = multiprocessing.get_context("spawn")  # a clean torch in every worker
    rows = []
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        for row in pool.map(one_run, jobs):
            final = row["evals"][-1]
            print(f"{row['variant']:>26s} seed {row['seed']}: gold {row['evals'][0]['gold']:.3f} -> "
                  f"{final['gold']:.3f}, KL {final['kl']:.2f}, {row['cpu_seconds']:.0f} s CPU",
                  file=sys.stderr)
            rows.append(row)
    path = write("rlhf_ablations", {"preset": PRESETS["tiny"][1].to_dict(), "seeds": args.seeds,
                                    "variants": {n: VARIANTS[n] for n in args.variants},
                                    "history_keys": list(HISTORY_KEYS), "torch_threads": 1},
                 rows, out=args.out)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
