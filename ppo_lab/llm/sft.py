"""Supervised fine-tuning (SFT), §6: the policy PPO starts from.

Given demonstrations (x, y) — a prompt and a response written for it — SFT minimises the
negative log-likelihood of the response tokens only::

    L_SFT(θ) = −(1/|M|) Σ_{(b, t) ∈ M} log π_θ(y_{b,t} | x_b, y_{b,<t})

where M is the set of real response tokens (``response_mask``, EOS included). Prompt tokens
are inputs, never targets: the policy is trained to answer, not to write prompts. The batch uses
the layout every ``ppo_lab.llm`` function shares (``ppo_lab.llm.sequences``): prompts
left-padded, responses right-padded, positions from the attention mask, and the logits at
position P + t − 1 scoring response token t.

``train_sft(SFTConfig(...))`` builds a tiny GPT-2 or Llama and a word-level tokenizer for the
review task (``ppo_lab.llm.task``), or loads any causal LM by path or hub id, trains it and, with
``out_dir``, saves ``<out_dir>/sft`` (model + tokenizer, ``save_pretrained``),
``<out_dir>/tokenizer`` (when it trained one) and the run files.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from ppo_lab.checkpoint import seed_everything
from ppo_lab.config import ConfigBase, check_field
from ppo_lab.core import logprobs_from_logits, masked_mean
from ppo_lab.llm.models import (build_model, check_model_path, load_causal_lm, load_tokenizer,
                                quiet_transformers, tiny_config)
from ppo_lab.llm.sequences import SequenceBatch
from ppo_lab.llm.task import ReviewTask, read_jsonl, train_tokenizer
from ppo_lab.runs import write_run_files
from ppo_lab.scale.precision import DTYPES, DType

__all__ = ["SFTConfig", "SFTResult", "encode_examples", "evaluate_sft_loss", "sft_loss",
           "train_sft"]

Arch = Literal["gpt2", "llama"]


@dataclass
class SFTConfig(ConfigBase):
    """Supervised fine-tuning on demonstrations. Every field is a flag of ``ppo-lab rlhf sft``."""

    model: str | None = None
    """Causal LM to start from: a local directory or hub id (its tokenizer is loaded from the same
    place). None builds a tiny model (arch, n_layer, d_model, n_head) and trains a word-level
    tokenizer for the review task."""
    arch: Arch = "gpt2"
    """Architecture of the tiny model: gpt2 (learned positions) or llama (rotary positions)."""
    n_layer: int = 2
    """Transformer blocks of the tiny model."""
    d_model: int = 128
    """Hidden width of the tiny model."""
    n_head: int = 4
    """Attention heads of the tiny model (must divide d_model)."""
    max_positions: int = 64
    """Longest prompt + response the tiny model handles."""
    pad_equals_eos: bool = False
    """Train the tiny tokenizer without a pad token: pad = eos, as in GPT-2."""
    data: str | None = None
    """Demonstrations as JSON lines {"prompt": ..., "response": ...}; None generates them from the
    review task (ppo_lab.llm.task)."""
    num_demonstrations: int = 8192
    """Demonstrations generated from the review task (when data is None)."""
    num_eval: int = 512
    """Held-out demonstrations for the eval loss (at most a tenth of a user's data)."""
    task_seed: int = 0
    """Seed of the review task's generated data (held out: task_seed + 1)."""
    max_steps: int = 400
    """Optimizer steps."""
    batch_size: int = 64
    """Demonstrations per step."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, then linear decay to 0)."""
    warmup_steps: int = 20
    """Steps of linear learning-rate warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None turns clipping off."""
    eval_every: int = 50
    """Compute the held-out loss every this many steps (and at the end)."""
    seed: int = 1
    """Seeds model initialisation and the order of the demonstrations."""
    device: str = "cpu"
    """torch device, e.g. cpu, cuda, cuda:1, mps."""
    dtype: DType = "fp32"
    """Weights dtype: fp32, bf16 or fp16 (the loss is computed in float32)."""
    torch_threads: int = 1
    """torch intra-op threads; 0 leaves torch's default."""
    out_dir: str | None = None
    """Write <out_dir>/sft (model + tokenizer + metrics) and <out_dir>/tokenizer; None = keep in
    memory only (the CLI's default: runs/rlhf-<preset>-seed<seed>-<time>)."""

    def validate(self) -> None:
        self._positive_int("n_layer", "d_model", "n_head", "max_positions", "num_demonstrations",
                           "max_steps", "batch_size", "eval_every")
        self._non_negative_int("num_eval", "task_seed", "warmup_steps", "seed", "torch_threads")
        check_field(self.d_model % self.n_head == 0, "n_head",
                    f"{self.n_head} does not divide d_model = {self.d_model}")
        self._number("learning_rate", low=0.0, low_open=True)
        self._number("weight_decay", low=0.0)
        self._number("max_grad_norm", low=0.0, low_open=True, optional=True)
        check_field(self.model is None or (isinstance(self.model, str) and self.model.strip()),
                    "model", "must be a directory or hub id")
        check_model_path(self.model, "model")


@dataclass
class SFTResult:
    """What :func:`train_sft` returns."""

    model: Any
    """The fine-tuned ``AutoModelForCausalLM`` (in eval mode)."""
    tokenizer: Any
    config: SFTConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    """One row per step: step, time, sft/loss, optim/*, and sft/eval_loss where evaluated."""
    summary: dict[str, Any] = field(default_factory=dict)
    """Final numbers: steps, seconds, final train and eval loss, sizes."""


def encode_examples(tokenizer, prompts: list[str], responses: list[str]
                    ) -> tuple[list[list[int]], list[list[int]]]:
    """Token lists for prompts (the tokenizer's special tokens added, e.g. BOS) and responses
    (no special tokens, then EOS appended — the policy must learn to stop)."""
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return prompt_ids, [ids + [tokenizer.eos_token_id] for ids in response_ids]


def sft_loss(model, batch: SequenceBatch) -> torch.Tensor:
    """L_SFT (module docstring): mean negative log-likelihood of the real response tokens of ``batch``.

    One forward pass over ``[B, P + T]``; the logits at positions P − 1 … P + T − 2 score
    response tokens 0 … T − 1 (the shift); prompt and padding positions are not targets.
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits  # (B, P + T, V)
    logits = logits[:, batch.prompt_width - 1 : -1]  # (B, T, V): position P + t − 1 → token t
    logprobs = logprobs_from_logits(logits, batch.response_ids)  # (B, T), float32
    return -masked_mean(logprobs, batch.response_mask)


def train_sft(config: SFTConfig, *, progress: bool = False, command: str = "") -> SFTResult:
    """Fine-tune a causal LM on demonstrations with L_SFT (module docstring); deterministic on CPU.

    ``progress`` shows a tqdm bar; ``command`` is stored in the run files. A non-finite loss is
    a ``ValueError`` (lower ``learning_rate``); an empty data file or a malformed line is a
    ``ValueError`` naming ``data``.
    """
    start = time.perf_counter()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    seed_everything(config.seed)
    device = torch.device(config.device)

    # 0. Tokenizer and model: built from a config, or loaded by path / hub id.
    trained_tokenizer = config.model is None
    if trained_tokenizer:
        tokenizer = train_tokenizer(pad_equals_eos=config.pad_equals_eos)
        model = build_model(tiny_config(
            config.arch, len(tokenizer), n_layer=config.n_layer, d_model=config.d_model,
            n_head=config.n_head, max_positions=config.max_positions,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
        model = model.to(device=device, dtype=DTYPES[config.dtype])
    else:
        try:
            tokenizer = load_tokenizer(config.model)
            model = load_causal_lm(config.model, device=config.device, dtype=config.dtype)
        except ValueError as error:
            raise ValueError(f"model: {error}") from None

    # 1. Demonstrations: the user's file, or the review task's generator; a held-out split.
    if config.data is not None:
        records = read_jsonl(config.data, ("prompt", "response"), name="data")
        num_eval = min(config.num_eval, len(records) // 10)
        train_records, eval_records = records[: len(records) - num_eval], records[len(records) - num_eval:]
    else:
        task = ReviewTask()
        train_records = [vars(d) for d in task.demonstrations(config.num_demonstrations,
                                                              seed=config.task_seed)]
        eval_records = ([vars(d) for d in task.demonstrations(config.num_eval,
                                                              seed=config.task_seed + 1)]
                        if config.num_eval else [])
    train_data = _encode(tokenizer, train_records, model)
    eval_data = _encode(tokenizer, eval_records, model) if eval_records else None

    # 2. AdamW, linear warm-up then linear decay to 0.
    optimizer, scheduler = adamw_with_warmup(model, config)
    batches = batch_indices(len(train_data[0]), config.batch_size, seed=config.seed)
    result = SFTResult(model, tokenizer, config)
    bar = tqdm(total=config.max_steps, unit="step", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, desc="sft")

    # 3. Minibatch steps on L_SFT.
    model.train()
    for step in range(1, config.max_steps + 1):
        batch = _batch(train_data, next(batches), tokenizer).to(device)
        loss = sft_loss(model, batch)
        if not torch.isfinite(loss):
            raise ValueError(f"learning_rate: the SFT loss is {loss.item()} at step {step}; "
                             "lower learning_rate (or check the data)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), config.max_grad_norm or math.inf)
        row = {"step": step, "time": time.perf_counter() - start, "sft/loss": loss.item(),
               "optim/learning_rate": optimizer.param_groups[0]["lr"],
               "optim/grad_norm": grad_norm.item()}
        optimizer.step()
        scheduler.step()
        if eval_data is not None and (step % config.eval_every == 0 or step == config.max_steps):
            row["sft/eval_loss"] = evaluate_sft_loss(model, eval_data, tokenizer, device)
        result.history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['sft/loss']:.3f}", refresh=False)
    bar.close()
    model.eval()

    final = result.history[-1]
    result.summary = {"steps": config.max_steps, "seconds": time.perf_counter() - start,
                      "train_loss": final["sft/loss"], "eval_loss": final.get("sft/eval_loss"),
                      "num_train": len(train_data[0]),
                      "num_eval": 0 if eval_data is None else len(eval_data[0]),
                      "parameters": sum(p.numel() for p in model.parameters())}
    if config.out_dir is not None:
        out = Path(config.out_dir)
        with quiet_transformers():
            model.save_pretrained(out / "sft")
        tokenizer.save_pretrained(out / "sft")
        if trained_tokenizer:
            tokenizer.save_pretrained(out / "tokenizer")
        write_run_files(result, out / "sft", command, curve=("step", "sft/loss"))
    return result


@torch.no_grad()
def evaluate_sft_loss(model, data, tokenizer, device, batch_size: int = 256) -> float:
    """L_SFT over held-out ``data`` (token-weighted mean, dropout off)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for begin in range(0, len(data[0]), batch_size):
        batch = _batch(data, range(begin, min(begin + batch_size, len(data[0]))), tokenizer)
        count = int(batch.response_mask.sum())
        total += sft_loss(model, batch.to(device)).item() * count
        tokens += count
    model.train(was_training)
    return total / tokens


def _encode(tokenizer, records, model) -> tuple[list[list[int]], list[list[int]]]:
    prompts, responses = encode_examples(tokenizer, [r["prompt"] for r in records],
                                         [r["response"] for r in records])
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None)
    longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
    if limit is not None and longest > limit:
        raise ValueError(f"data: a prompt + response has {longest} tokens, more than the "
                         f"model's {limit} positions")
    return prompts, responses


def _batch(data, indices, tokenizer) -> SequenceBatch:
    prompts, responses = data
    return SequenceBatch.from_token_lists([prompts[i] for i in indices],
                                          [responses[i] for i in indices],
                                          pad_token_id=tokenizer.pad_token_id,
                                          eos_token_id=tokenizer.eos_token_id)


def adamw_with_warmup(model, config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW on every parameter (``config.learning_rate``, ``config.weight_decay``) and its
    schedule: linear warm-up over ``config.warmup_steps``, then linear decay to 0 at
    ``config.max_steps`` (step the scheduler once per optimizer step)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: lr_factor(k, config.warmup_steps, config.max_steps))
    return optimizer, scheduler


def batch_indices(num: int, batch_size: int, *, seed: int):
    """Endless minibatches of ``range(num)``: a fresh permutation per epoch (from a generator
    seeded with ``seed``), split in order."""
    generator = torch.Generator().manual_seed(seed)
    if num < batch_size:
        raise ValueError(f"batch_size: {batch_size} is more than the {num} training examples")
    while True:
        order = torch.randperm(num, generator=generator).tolist()
        for begin in range(0, num - batch_size + 1, batch_size):
            yield order[begin : begin + batch_size]


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then linear decay to 0 at ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))
