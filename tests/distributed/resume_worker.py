"""Run by torchrun (2 gloo CPU ranks) from test_trainer_resume.py; writes {phase}_rank{r}.pt.

    torchrun --nproc-per-node 2 tests/distributed/resume_worker.py OUT_DIR first
    torchrun --nproc-per-node 2 tests/distributed/resume_worker.py OUT_DIR resume

For each of ``MODES`` (DDP, FSDP2, FSDP2 with LoRA and a value head), phase ``first`` trains the
RLHF trainer ``ITERATIONS`` iterations without a checkpoint (the uninterrupted run), then ``STOP``
iterations with ``checkpoint_every=STOP`` into OUT_DIR/<mode>; phase ``resume`` (a new launch:
fresh processes) continues that checkpoint to ``ITERATIONS``. Each rank saves its final weights (whole tensors), its log and its evaluations.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_helpers import weights  # noqa: E402

from ppo_lab.llm.ppo import PRESETS, RLHFConfig, train  # noqa: E402
from ppo_lab.scale.distributed import cleanup, init_distributed  # noqa: E402

ITERATIONS, STOP = 3, 1
MODES = {"ddp": dict(), "fsdp": dict(fsdp=True),
         "fsdp_lora_head": dict(fsdp=True, lora_r=4, value_design="head")}


def config(mode: str, out_dir: Path | None = None, **changes) -> RLHFConfig:
    """The tiny preset, small: 8 responses of <= 8 tokens, adaptive β, a warm-up longer than the
    first segment (a scheduler not restored would restart it), evaluations on 4 prompts."""
    return PRESETS["tiny"][1].replace(**{
        "iterations": ITERATIONS, "batch_size": 8, "num_minibatches": 2, "ppo_epochs": 2,
        "max_new_tokens": 8, "warmup_iterations": 3, "anneal_lr": False, "adaptive_kl": True,
        "eval_every": 2, "eval_prompts": 4, "out_dir": None if out_dir is None else str(out_dir),
        **MODES[mode], **changes})


def summary(result) -> dict:
    return {"policy": weights(result.policy), "value": weights(result.value_model),
            "history": result.history, "evals": result.evals}


def main() -> None:
    torch.set_num_threads(1)
    out, phase = Path(sys.argv[1]), sys.argv[2]
    info = init_distributed("cpu")
    results = {}
    try:
        for mode in MODES:
            if phase == "first":
                results[f"{mode}_uninterrupted"] = summary(train(config(mode)))
                train(config(mode, out / mode, iterations=STOP, checkpoint_every=STOP))
            else:
                results[f"{mode}_resumed"] = summary(
                    train(config(mode, out / mode, checkpoint_every=STOP, resume=True)))
        torch.save(results, out / f"{phase}_rank{info.rank}.pt")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
