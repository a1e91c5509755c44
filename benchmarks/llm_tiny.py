"""The tiny review-task models (§6, §7): training time, and the numbers PPO is measured against.

Re-trains the committed tiny SFT policy and reward model with exactly the commands that wrote
them (``ppo-lab rlhf sft tiny`` and ``ppo-lab rlhf rm tiny``, one torch thread, in this
process), checks the result equals ``ppo_lab/llm/assets/tiny`` tensor for tensor, and records:

- SFT and reward-model training seconds (wall clock and process CPU time: on a shared machine
  the CPU time is the closer measure of one quiet core);
- the reward model's agreement with the noise-free gold order on pairs sampled from the SFT
  policy (two responses per prompt, ties left out), and on held-out pairs of the grammar;
- how often each gold-reward penalty fires on those SFT samples (the reward model never saw one);
- on the held-out prompts of ``ppo-lab rlhf ppo tiny``'s evaluation, the SFT policy's gold
  reward (one sample per prompt: mean, std) and best-of-n for n = 1 … 64 selected by the gold
  reward and by the reward model (``benchmarks/rlhf_tiny.py``'s ``best_of_n``).

    python benchmarks/llm_tiny.py            # writes ppo_lab/results/llm_tiny.json
    python benchmarks/llm_tiny.py --quick    # a smoke run: 10 steps, 16 prompts; writes nothing
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
import tyro
from safetensors.torch import load_file

from ppo_lab.llm.assets import tiny_path
from ppo_lab.llm.cli import STAGES
from ppo_lab.llm.ppo import PRESETS as PPO_PRESETS
from ppo_lab.llm.task import ReviewTask

from common import write  # benchmarks/common.py (the script's own folder is on sys.path)
from rlhf_tiny import best_of_n


@dataclasses.dataclass
class Args:
    quick: bool = False
    """Smoke run: 10 training steps, 16 prompts, best-of-8; nothing compared or written."""


def train_stage(name: str, **changes) -> dict:
    """Train the ``tiny`` preset of stage ``name`` with ``changes`` — what ``ppo-lab rlhf NAME
    tiny --field value`` does — in this process; its seconds, summary and result."""
    stage = STAGES[name]
    config = stage.presets["tiny"][1].replace(**changes)
    command = " ".join(["ppo-lab rlhf", name, "tiny",
                        *(f"--{k.replace('_', '-')} {v}" for k, v in changes.items())])
    wall, cpu = time.perf_counter(), time.process_time()
    result = stage.train(config, command=command)
    return {"command": command, "wall_seconds": time.perf_counter() - wall,
            "cpu_seconds": time.process_time() - cpu, **result.summary}, result


def same_tensors(dir_a: Path, dir_b: Path) -> bool:
    a, b = load_file(dir_a / "model.safetensors"), load_file(dir_b / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main(args: Args) -> None:
    torch.set_num_threads(1)
    quick = {"max_steps": 10} if args.quick else {}
    with tempfile.TemporaryDirectory() as tmp:
        sft, _ = train_stage("sft", out_dir=tmp, **quick)
        rm, rm_result = train_stage("rm", model=f"{tmp}/sft", out_dir=tmp, **quick,
                                    **({"num_policy_pairs": 16} if args.quick else {}))
        identical = {name: same_tensors(Path(tmp) / name, tiny_path(name)) for name in ("sft", "reward")}
    for row in (sft, rm):  # the temporary folder stands for the reader's DIR
        row["command"] = row["command"].replace(tmp, "DIR")
    sft["equals_committed"], rm["equals_committed"] = identical["sft"], identical["reward"]
    samples = [g for pair in rm_result.policy_pairs for g in pair["gold"]]
    penalties = {f"fraction_with_{term}": statistics.mean(g[term] != 0 for g in samples)
                 for term in ("repeats", "off_topic", "no_eos")}
    rm.update(penalties, num_policy_samples=len(samples))

    config = PPO_PRESETS["tiny"][1]
    prompts = ReviewTask().prompts(16 if args.quick else config.eval_prompts,
                                   seed=config.task_seed + 1)
    bon = best_of_n(config, prompts, max_n=8 if args.quick else 64)
    best_of = [row for row in bon.pop("best_of_n") if row["n"] <= (8 if args.quick else 64)]
    policy = {"stage": "sft_policy", "num_prompts": len(prompts),
              "prompts": f"ReviewTask().prompts({len(prompts)}, seed={config.task_seed + 1})", **bon}
    summary = {
        "sft_seconds": sft["wall_seconds"], "sft_cpu_seconds": sft["cpu_seconds"],
        "rm_train_seconds": rm["train_seconds"], "rm_cpu_seconds": rm["cpu_seconds"],
        "rm_policy_pair_agreement": rm.get("policy_pair_agreement"),
        "rm_held_out_accuracy": rm["eval_accuracy"],
        "sft_gold_mean": bon["sft_gold_mean"], "sft_gold_std": bon["sft_gold_std"],
        "best_of_64_gold_mean": None if args.quick else best_of[-1]["gold_best_by_gold"],
        "reproduces_committed_assets": all(identical.values()),
    }
    rows = [{"stage": "sft", **sft}, {"stage": "rm", **rm}, policy,
            *({"stage": "best_of_n", **row} for row in best_of)]
    if not args.quick:
        print(f"wrote {write('llm_tiny', {'torch_threads': 1}, rows, summary=summary)}")
    for key, value in summary.items():
        print(f"{key:>28}: {value}")
    print("best-of-n, gold of the pick:   n   by gold  by proxy")
    for row in best_of:
        print(f"{row['n']:>32}  {row['gold_best_by_gold']:8.3f}  {row['gold_best_by_proxy']:8.3f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
