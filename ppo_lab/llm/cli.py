"""``ppo-lab rlhf STAGE PRESET [FLAGS]``: the language-model stages from the command line.

    ppo-lab rlhf sft tiny                               # tiny GPT-2 + tokenizer on the review task
    ppo-lab rlhf rm tiny --model runs/x/sft             # reward model on that SFT policy
    ppo-lab rlhf sft tiny --model gpt2 --data demos.jsonl --device cuda --dtype bf16
    ppo-lab rlhf sft tiny --help                        # every flag, with its docstring
    ppo-lab rlhf ppo tiny                               # PPO from the committed SFT policy and RM
    ppo-lab rlhf all tiny                               # SFT -> RM -> PPO in one output folder
    ppo-lab rlhf sweep tiny                             # gold vs proxy reward at several β

Each stage is a typed config (``SFTConfig``, ``RMConfig``, …) with presets; every field is a
flag. ``--out-dir DIR`` (default ``runs/rlhf-<preset>-seed<seed>-<time>``) receives one folder
per stage — ``DIR/tokenizer``, ``DIR/sft``, ``DIR/reward`` — each loadable with
``from_pretrained`` and holding the stage's ``metrics.csv``, ``metrics.json`` and
``learning_curve.png``. A bad flag, a missing model, an empty or malformed data file and a
non-finite loss all end with exit status 2 and a message naming the field.

A new stage is one more entry in :data:`STAGES` (presets, the train function, a summary line).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

from ppo_lab.checkpoint import save_checkpoint
from ppo_lab.llm.models import quiet_transformers
from ppo_lab.llm.ppo import PRESETS as PPO_PRESETS
from ppo_lab.llm.ppo import RLHFConfig, RLHFResult
from ppo_lab.llm.ppo import train as train_ppo
from ppo_lab.llm.reward_model import RMConfig, train_reward_model
from ppo_lab.llm.sft import SFTConfig, train_sft
from ppo_lab.llm.sweep import SWEEP_PRESETS, run_sweep, sweep_report
from ppo_lab.runs import write_run_files
from ppo_lab.scale.distributed import full_state_dict, is_main_process

__all__ = ["STAGES", "Stage", "main"]


@dataclass(frozen=True)
class Stage:
    """One ``ppo-lab rlhf`` subcommand."""

    help: str
    presets: dict[str, tuple[str, Any]]
    """preset name -> (description, config); the config must have ``seed`` and ``out_dir``."""
    train: Callable[..., Any]
    """``train(config, progress=True, command=...)`` -> a result with ``summary``."""
    report: Callable[[Any], str]
    """The line printed when the stage is done."""


def _sft_report(result) -> str:
    s = result.summary
    return (f"sft: {s['steps']} steps in {s['seconds']:.1f} s; train loss {s['train_loss']:.3f}, "
            f"held-out loss {s['eval_loss'] if s['eval_loss'] is None else round(s['eval_loss'], 3)}")


def _rm_report(result) -> str:
    s = result.summary
    line = (f"reward model: {s['steps']} steps in {s['train_seconds']:.1f} s; held-out accuracy "
            f"{s['eval_accuracy']}")
    if "policy_pair_agreement" in s:
        line += (f"; agrees with the gold order on {s['policy_pair_agreement']:.3f} of "
                 f"{s['policy_pair_num_pairs']} pairs sampled from the SFT policy")
    return line


def _train_ppo(config: RLHFConfig, progress: bool = True, command: str = "") -> RLHFResult:
    """PPO from the SFT policy (§7); writes OUT/ppo: the policy with its tokenizer and the value
    model (save_pretrained), metrics.csv/json and learning_curve.png (gold reward, else score)."""
    result = train_ppo(config, progress=progress)
    first, last = (result.evals[0], result.evals[-1]) if result.evals else ({}, {})
    result.summary = {"iterations": len(result.history), "seconds": result.history[-1]["time"],
                      "eval_first": first, "eval_last": last}
    # --fsdp: every rank helps gather the full weights (None otherwise); under torchrun rank 0 writes.
    policy_state, value_state = full_state_dict(result.policy), full_state_dict(result.value_model)
    if config.out_dir is not None and is_main_process():
        out = Path(config.out_dir) / "ppo"
        with quiet_transformers():
            result.policy.save_pretrained(out / "policy", state_dict=policy_state)
            result.tokenizer.save_pretrained(out / "policy")
            if hasattr(result.value_model, "save_pretrained"):
                result.value_model.save_pretrained(out / "value", state_dict=value_state)
            else:  # the value head on the policy's trunk
                save_checkpoint(out / "value_head.pt", value_state or result.value_model.state_dict())
        y = "objective/gold_reward" if config.gold else "objective/scores"
        write_run_files(result, out, command, curve=("iteration", y))
    return result


def _ppo_report(result: RLHFResult) -> str:
    s = result.summary
    line = f"ppo: {s['iterations']} iterations in {s['seconds']:.1f} s"
    first, last = s["eval_first"], s["eval_last"]
    if "gold" in last:
        line += (f"; held-out gold reward {first['gold']:.3f} -> {last['gold']:.3f} "
                 f"({(last['gold'] - first['gold']) / first['gold_std']:+.2f} SFT std)")
    if last:
        line += f", score {first['scores']:.3f} -> {last['scores']:.3f}, KL {last.get('kl', 0):.2f}"
    return line


def _train_all(config: RLHFConfig, progress: bool = True, command: str = "") -> RLHFResult:
    """SFT -> reward model -> PPO into one OUT directory (OUT/sft, OUT/reward, OUT/ppo)."""
    out = Path(config.out_dir)
    common = dict(out_dir=config.out_dir, seed=config.seed, device=config.device, dtype=config.dtype)
    sft = train_sft(SFTConfig(**common), progress=progress, command=command)
    print(_sft_report(sft))
    rm = train_reward_model(RMConfig(model=str(out / "sft"), **common), progress=progress,
                            command=command)
    print(_rm_report(rm))
    return _train_ppo(config.replace(model=str(out / "sft"), reward_model=str(out / "reward")),
                      progress=progress, command=command)


STAGES: dict[str, Stage] = {
    "sft": Stage(
        "supervised fine-tuning on demonstrations (writes OUT/sft, and OUT/tokenizer when it "
        "trains one)",
        {"tiny": ("the review task: a 2-layer GPT-2 (d=128) and a word-level tokenizer, built "
                  "here; about a minute on one CPU thread", SFTConfig())},
        train_sft, _sft_report),
    "rm": Stage(
        "reward model on preference pairs, Bradley–Terry loss (writes OUT/reward)",
        {"tiny": ("the review task: trunk from the SFT policy (--model, default the committed "
                  "tiny one), pairs labelled by the gold reward with 10% noise",
                  RMConfig())},
        train_reward_model, _rm_report),
    "ppo": Stage(
        "PPO-RLHF from an SFT policy and a reward model (writes OUT/ppo)",
        PPO_PRESETS, _train_ppo, _ppo_report),
    "all": Stage(
        "SFT, then the reward model, then PPO, into one OUT directory",
        {"tiny": ("the review task end to end: the tiny presets of sft, rm and ppo",
                  PPO_PRESETS["tiny"][1])},
        _train_all, _ppo_report),
    "sweep": Stage(
        "the over-optimisation experiment: PPO at several fixed KL coefficients and seeds "
        "(writes OUT/sweep.json, OUT/sweep.png)",
        SWEEP_PRESETS, run_sweep, sweep_report),
}


def _usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: ppo-lab rlhf STAGE PRESET [FLAGS]", "",
             "Train the language-model stages of RLHF. Stages:"]
    lines += [f"  {name:<{width}}  {stage.help}" for name, stage in STAGES.items()]
    lines += ["", "`ppo-lab rlhf STAGE --help` lists the presets; "
              "`ppo-lab rlhf STAGE PRESET --help` every flag."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (a stage, a preset, then config flags), train, write the output folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    if name not in STAGES:
        print(f"{_usage()}\n\nppo-lab rlhf: error: unknown stage {name!r}", file=sys.stderr)
        return 2
    stage = STAGES[name]
    prog = f"ppo-lab rlhf {name}"
    try:
        config = tyro.extras.overridable_config_cli(
            stage.presets, prog=prog, args=args,
            description=f"{stage.help[0].upper()}{stage.help[1:]}. Pick a preset, then override "
                        "any field.")
    except SystemExit as exit_:  # --help, or a flag tyro could not parse (it printed why)
        return exit_.code if isinstance(exit_.code, int) else 2
    except ValueError as error:  # Config.validate: the message names the field
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    preset = args[0] if args and args[0] in stage.presets else next(iter(stage.presets))
    if config.out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config = config.replace(out_dir=str(Path("runs") / f"rlhf-{preset}-seed{config.seed}-{stamp}"))
    try:
        result = stage.train(config, progress=True, command=" ".join([prog, *args]))
    except ValueError as error:  # bad data, missing model, non-finite loss: names the field
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    if is_main_process():
        print(f"{stage.report(result)}; output {config.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
