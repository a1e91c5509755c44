"""The reward model, §6: a causal-LM trunk plus a scalar head, trained on preference pairs.

A preference pair is a prompt x with two responses, y_w preferred to y_l. The Bradley–Terry model
says P(y_w ≻ y_l | x) = σ(r_φ(x, y_w) − r_φ(x, y_l)); the reward model r_φ minimises its negative
log-likelihood (``ppo_lab.llm.rewards.bradley_terry_loss``)::

    L_RM(φ) = −mean log σ(r_φ(x, y_w) − r_φ(x, y_l))

r_φ(x, y) is the scalar head read at the sequence's last real token — the EOS that ends the
response, found from the response lengths (``ppo_lab.llm.models.sequence_scores``), never at
padding. The model is an ``AutoModelForSequenceClassification`` with ``num_labels=1`` whose trunk
starts from the SFT policy's weights (the head is new), saved with ``save_pretrained``.

On the review task (``ppo_lab.llm.task``) the pairs come from the grammar, labelled by the gold
reward with label noise; :func:`policy_pair_agreement` then measures what PPO will meet: how
often the reward model orders two responses *sampled from the SFT policy* as the noise-free gold
reward does, and returns the pairs where it does not (the loopholes).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ppo_lab.checkpoint import seed_everything
from ppo_lab.config import ConfigBase, check_field
from ppo_lab.llm.models import (check_model_path, load_causal_lm, load_tokenizer,
                                quiet_transformers, sampling_spec, scalar_model_from_causal_lm,
                                sequence_scores)
from ppo_lab.llm.rewards import bradley_terry_loss
from ppo_lab.llm.rollout import generate
from ppo_lab.llm.sequences import SequenceBatch, left_pad
from ppo_lab.llm.sft import adamw_with_warmup, batch_indices, encode_examples
from ppo_lab.llm.task import ReviewTask, read_jsonl
from ppo_lab.runs import write_run_files
from ppo_lab.scale.precision import DType

__all__ = ["RMConfig", "RMResult", "pair_batch", "policy_pair_agreement", "preference_accuracy",
           "train_reward_model"]


@dataclass
class RMConfig(ConfigBase):
    """Reward-model training on preference pairs. Every field is a flag of ``ppo-lab rlhf rm``."""

    model: str | None = None
    """The SFT policy: a directory or hub id. Its weights start the trunk, its tokenizer encodes
    the pairs, and it writes the responses of the held-out policy pairs. None = the committed tiny
    SFT policy (ppo_lab.llm.assets)."""
    data: str | None = None
    """Preference pairs as JSON lines {"prompt": ..., "chosen": ..., "rejected": ...}; None
    generates them from the review task, labelled by its gold reward with label_noise."""
    num_pairs: int = 8192
    """Preference pairs generated from the review task (when data is None)."""
    label_noise: float = 0.1
    """Probability that a generated pair's label is flipped (annotator noise)."""
    num_eval: int = 512
    """Held-out pairs for the eval accuracy (at most a tenth of a user's data)."""
    prompts: str | None = None
    """Prompts (JSON lines {"prompt": ...}) of the held-out pairs sampled from the SFT policy and
    ordered by the gold reward; None = review-task prompts. Only with the review task."""
    num_policy_pairs: int = 256
    """Held-out pairs sampled from the SFT policy (two responses per prompt); 0 = skip."""
    max_new_tokens: int = 32
    """Length limit of the sampled responses (a response cut there has no EOS)."""
    task_seed: int = 0
    """Seed of the review task's pairs (held out: task_seed + 1; policy-pair prompts: + 2)."""
    max_steps: int = 120
    """Optimizer steps."""
    batch_size: int = 32
    """Preference pairs per step (2 x batch_size sequences)."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, then linear decay to 0)."""
    warmup_steps: int = 10
    """Steps of linear learning-rate warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None turns clipping off."""
    eval_every: int = 50
    """Compute the held-out accuracy every this many steps (and at the end)."""
    seed: int = 1
    """Seeds the score head's initialisation, the order of the pairs and the policy samples."""
    device: str = "cpu"
    """torch device, e.g. cpu, cuda, cuda:1, mps."""
    dtype: DType = "fp32"
    """Weights dtype: fp32, bf16 or fp16 (scores and loss in float32)."""
    torch_threads: int = 1
    """torch intra-op threads; 0 leaves torch's default."""
    out_dir: str | None = None
    """Write <out_dir>/reward (model + tokenizer + metrics); None = keep in memory only (the
    CLI's default: runs/rlhf-<preset>-seed<seed>-<time>)."""

    def validate(self) -> None:
        self._positive_int("num_pairs", "max_new_tokens", "max_steps", "batch_size", "eval_every")
        self._non_negative_int("num_eval", "num_policy_pairs", "task_seed", "warmup_steps", "seed",
                               "torch_threads")
        self._number("label_noise", low=0.0)
        check_field(self.label_noise < 0.5, "label_noise", f"must be < 0.5, got {self.label_noise}")
        self._number("learning_rate", low=0.0, low_open=True)
        self._number("weight_decay", low=0.0)
        self._number("max_grad_norm", low=0.0, low_open=True, optional=True)
        check_field(self.prompts is None or self.data is None, "prompts",
                    "the policy pairs are ordered by the review task's gold reward: not with data")
        check_model_path(self.model, "model")


@dataclass
class RMResult:
    """What :func:`train_reward_model` returns."""

    model: Any
    """The reward model (``AutoModelForSequenceClassification``, ``num_labels=1``, eval mode)."""
    tokenizer: Any
    config: RMConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    """One row per step: step, time, reward/loss, reward/accuracy, reward/margin, optim/*, and
    reward/eval_accuracy where evaluated."""
    summary: dict[str, Any] = field(default_factory=dict)
    """Final numbers: seconds, held-out accuracy, policy-pair agreement (review task)."""
    policy_pairs: list[dict[str, Any]] = field(default_factory=list)
    """The held-out pairs sampled from the SFT policy (see :func:`policy_pair_agreement`)."""


def pair_batch(tokenizer, prompts: list[str], chosen: list[str], rejected: list[str]) -> SequenceBatch:
    """One batch of ``2B`` sequences: the B chosen responses, then the B rejected ones, each after
    its prompt (prompt tokens with BOS, response tokens then EOS: the SFT encoding)."""
    prompt_ids, chosen_ids = encode_examples(tokenizer, prompts, chosen)
    _, rejected_ids = encode_examples(tokenizer, prompts, rejected)
    return SequenceBatch.from_token_lists(prompt_ids + prompt_ids, chosen_ids + rejected_ids,
                                          pad_token_id=tokenizer.pad_token_id,
                                          eos_token_id=tokenizer.eos_token_id)


def rm_loss(model, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """L_RM on a :func:`pair_batch`: score all 2B sequences in one pass, split, Bradley–Terry."""
    scores = sequence_scores(model, batch)  # (2B,) float32, at each last real token
    chosen, rejected = scores.chunk(2)  # (B,), (B,)
    return bradley_terry_loss(chosen, rejected)


@torch.no_grad()
def preference_accuracy(model, tokenizer, pairs: list[dict[str, str]], device="cpu",
                        batch_size: int = 256) -> float:
    """Fraction of ``pairs`` ({"prompt", "chosen", "rejected"}) with r(chosen) > r(rejected)."""
    was_training = model.training
    model.eval()
    right = 0
    for begin in range(0, len(pairs), batch_size):
        part = pairs[begin : begin + batch_size]
        batch = pair_batch(tokenizer, *([p[k] for p in part] for k in ("prompt", "chosen", "rejected")))
        chosen, rejected = sequence_scores(model, batch.to(device)).chunk(2)
        right += int((chosen > rejected).sum())
    model.train(was_training)
    return right / len(pairs)


@torch.no_grad()
def policy_pair_agreement(reward_model, policy, tokenizer, prompts: list[str], *,
                          task: ReviewTask | None = None, max_new_tokens: int = 32,
                          generator: torch.Generator | None = None) -> dict[str, Any]:
    """How often the reward model orders two responses of the policy as the gold reward does.

    For each prompt, two responses are sampled from ``policy`` (plain temperature-1 sampling,
    ``ppo_lab.llm.rollout.generate``), scored by ``reward_model`` (at the last real token) and by
    the task's noise-free gold reward. Pairs with equal gold reward carry no preference and are
    left out. Returns ``agreement`` (fraction of the other pairs ordered alike), ``num_pairs``,
    ``ties``, and ``pairs``: one dict per prompt with both responses (text, EOS flag, reward
    score, gold terms) and whether the two orders agree — the disagreements show what the reward
    model did not learn.
    """
    task = task or ReviewTask()
    device = next(policy.parameters()).device
    spec = sampling_spec(tokenizer, 1.0)
    prompt_ids, prompt_mask = left_pad(tokenizer(list(prompts))["input_ids"], tokenizer.pad_token_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    samples = []
    for _ in range(2):
        batch, _ = generate(policy, prompt_ids, prompt_mask, spec, max_new_tokens=max_new_tokens,
                            eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, generator=generator)
        texts = [tokenizer.decode(row[:n], skip_special_tokens=False)
                 for row, n in zip(batch.response_ids.tolist(), batch.response_lengths.tolist())]
        samples.append((texts, batch.eos.tolist(), sequence_scores(reward_model, batch).tolist()))
    pairs, agree, ties = [], 0, 0
    for i, prompt in enumerate(prompts):
        (ta, ea, sa), (tb, eb, sb) = ((s[0][i], s[1][i], s[2][i]) for s in samples)
        ga, gb = task.gold_terms(prompt, ta, eos=ea), task.gold_terms(prompt, tb, eos=eb)
        tie = abs(ga["gold"] - gb["gold"]) < 1e-9
        same = not tie and (sa > sb) == (ga["gold"] > gb["gold"])
        ties += tie
        agree += same
        pairs.append({"prompt": prompt, "responses": [ta, tb], "eos": [ea, eb],
                      "scores": [sa, sb], "gold": [ga, gb], "tie": tie, "agree": same})
    counted = len(prompts) - ties
    return {"agreement": agree / counted if counted else math.nan, "num_pairs": counted,
            "ties": ties, "pairs": pairs}


def train_reward_model(config: RMConfig, *, progress: bool = False, command: str = "") -> RMResult:
    """Train r_φ with L_RM on preference pairs; deterministic on CPU.

    ``progress`` shows a tqdm bar; ``command`` is stored in the run files. A non-finite loss or
    score is a ``ValueError``; an empty data file or a malformed line is a ``ValueError`` naming
    ``data``; a missing model directory one naming ``model``.
    """
    start = time.perf_counter()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    seed_everything(config.seed)
    device = torch.device(config.device)
    task = ReviewTask()

    # 0. Tokenizer and model: the SFT trunk plus a new scalar head (drawn from the seed).
    model_path = config.model
    if model_path is None:
        from ppo_lab.llm.assets import tiny_path
        model_path = str(tiny_path("sft"))
    try:
        tokenizer = load_tokenizer(model_path)
        model = scalar_model_from_causal_lm(model_path, device=config.device, dtype=config.dtype,
                                            pad_token_id=tokenizer.pad_token_id)
    except ValueError as error:
        raise ValueError(f"model: {error}") from None

    # 1. Preference pairs: the user's file, or the review task's (labels with noise); held out:
    #    the user's last tenth, or fresh task pairs compared with their noise-free gold order.
    fields_ = ("prompt", "chosen", "rejected")
    if config.data is not None:
        records = read_jsonl(config.data, fields_, name="data")
        num_eval = min(config.num_eval, len(records) // 10)
        train_pairs, eval_pairs = records[: len(records) - num_eval], records[len(records) - num_eval:]
    else:
        train_pairs = [{k: getattr(p, k) for k in fields_} for p in task.preference_pairs(
            config.num_pairs, seed=config.task_seed, label_noise=config.label_noise)]
        eval_pairs = [{k: getattr(p, k) for k in fields_} for p in task.preference_pairs(
            config.num_eval, seed=config.task_seed + 1, label_noise=0.0)] if config.num_eval else []

    optimizer, scheduler = adamw_with_warmup(model, config)
    batches = batch_indices(len(train_pairs), config.batch_size, seed=config.seed)
    result = RMResult(model, tokenizer, config)
    bar = tqdm(total=config.max_steps, unit="step", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, desc="reward model")

    # 2. Minibatch steps on L_RM.
    model.train()
    for step in range(1, config.max_steps + 1):
        part = [train_pairs[i] for i in next(batches)]
        batch = pair_batch(tokenizer, *([p[k] for p in part] for k in fields_)).to(device)
        try:
            loss, stats = rm_loss(model, batch)
        except ValueError as error:  # bradley_terry_loss refuses NaN / inf scores
            raise ValueError(f"learning_rate: non-finite reward scores at step {step} "
                             f"({error}); lower learning_rate") from None
        if not torch.isfinite(loss):
            raise ValueError(f"learning_rate: the reward-model loss is {loss.item()} at step "
                             f"{step}; lower learning_rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), config.max_grad_norm or math.inf)
        row = {"step": step, "time": time.perf_counter() - start, "reward/loss": loss.item(),
               "reward/accuracy": stats["accuracy"], "reward/margin": stats["margin"],
               "optim/learning_rate": optimizer.param_groups[0]["lr"],
               "optim/grad_norm": grad_norm.item()}
        optimizer.step()
        scheduler.step()
        if eval_pairs and (step % config.eval_every == 0 or step == config.max_steps):
            row["reward/eval_accuracy"] = preference_accuracy(model, tokenizer, eval_pairs, device)
        result.history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['reward/loss']:.3f}", refresh=False)
    bar.close()
    model.eval()
    train_seconds = time.perf_counter() - start

    # 3. What PPO will meet: pairs sampled from the SFT policy, ordered by the gold reward.
    result.summary = {"steps": config.max_steps, "train_seconds": train_seconds,
                      "eval_accuracy": result.history[-1].get("reward/eval_accuracy"),
                      "num_train": len(train_pairs), "num_eval": len(eval_pairs)}
    if config.data is None and config.num_policy_pairs:
        if config.prompts is not None:
            prompts = [r["prompt"] for r in read_jsonl(config.prompts, ["prompt"], name="prompts")]
        else:
            prompts = task.prompts(config.num_policy_pairs, seed=config.task_seed + 2)
        policy = load_causal_lm(model_path, device=config.device, dtype=config.dtype)
        agreement = policy_pair_agreement(
            model, policy, tokenizer, prompts, task=task, max_new_tokens=config.max_new_tokens,
            generator=torch.Generator().manual_seed(config.seed))
        result.policy_pairs = agreement.pop("pairs")
        result.summary.update({f"policy_pair_{k}": v for k, v in agreement.items()})
    result.summary["seconds"] = time.perf_counter() - start
    if config.out_dir is not None:
        out = Path(config.out_dir) / "reward"
        with quiet_transformers():
            model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        write_run_files(result, out, command, curve=("step", "reward/loss"))
    return result
