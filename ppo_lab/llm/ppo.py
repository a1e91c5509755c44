"""PPO-RLHF, §7: the algorithm box as one readable loop, for any Hugging Face causal LM.

    for iteration = 1, 2, …:
      1. rollout: sample a response y ~ π_θold(·|x) for a batch of prompts x  (rollout.generate)
      2. score: r(x, y) from the reward model at the last real token, or a Python reward_fn
      3. reference and old log-probs log π_ref(y_t|·), log π_θold(y_t|·); values V(s_t)
      4. per-token rewards r_t = −β·KL_t + [t = last]·r(x, y)               (rewards.per_token_rewards)
      5. GAE per token on the response, [T, B]; the last real token ends the episode (core.gae_advantages)
      6. K epochs of minibatches: the PPO loss of §3 (core.ppo_loss — the CartPole trainer's),
         advantages whitened over response tokens, gradient clipping, early stop on approx KL
      7. KL controller (adaptive or fixed), LR schedule with warm-up, log, checkpoint

The same names as the CartPole trainer (``ppo_lab.toy.ppo``) wherever the two agree; every switch
the chapter ablates is a field of :class:`RLHFConfig`. Tensors are ``[B, T]`` (B sequences, T
response tokens) and are transposed to ``[T, B]`` for the time-major core functions.
"""

from __future__ import annotations

import copy
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from ppo_lab import metrics
from ppo_lab.checkpoint import seed_everything
from ppo_lab.config import ConfigBase, check_field
from ppo_lab.core import (AdaptiveKLController, FixedKLController, explained_variance,
                          gae_advantages, kl_estimate, masked_mean, ppo_loss)
from ppo_lab.scale.accumulation import accumulate_gradients, micro_batches
from ppo_lab.scale.distributed import (ForwardWith, all_reduce_stats, derive_micro_batch_sizes,
                                       find_checkpoint, generation_model, global_early_stop,
                                       global_masked_whiten, global_mean, init_distributed,
                                       load_distributed_checkpoint, rank_seed,
                                       save_distributed_checkpoint, shard, unwrap, wrap_model)
from ppo_lab.scale.memory import add_lora, enable_activation_checkpointing, on_device, reference_model
from ppo_lab.scale.precision import DType, Precision

from .logprobs import response_logprobs
from .models import (ValueHead, check_shares_tokenizer, load_causal_lm, load_scalar_model,
                     load_tokenizer, quiet_transformers, response_values, sampling_spec,
                     scalar_model_from_causal_lm, sequence_scores, token_scalars)
from .rewards import clip_scores, mixture_ref_logprobs, per_token_rewards, whiten_scores
from .rollout import generate
from .sequences import SequenceBatch, left_pad
from .task import ReviewTask, read_jsonl

__all__ = ["PRESETS", "RLHFConfig", "RLHFResult", "evaluate", "token_advantages", "train"]

RewardFn = Callable[..., torch.Tensor]
"""``reward_fn(prompts: list[str], responses: list[str], *, eos: list[bool]) -> Tensor[B]``."""

CHECKPOINT_DIR = "ppo/checkpoint"


@dataclass
class RLHFConfig(ConfigBase):
    """PPO-RLHF on a causal LM. Every field is a flag of ``ppo-lab rlhf ppo``."""

    model: str | None = None
    """Policy to start from (the SFT model): a local directory or hub id. None = the committed
    tiny SFT policy (ppo_lab/llm/assets/tiny/sft)."""
    ref_model: str | None = None
    """Reference policy π_ref for the KL penalty; None = the same weights as --model."""
    reward_model: str | None = None
    """Reward model (a *ForSequenceClassification with one label); None = the committed tiny
    reward model. Ignored when train() is given a reward_fn."""
    tokenizer: str | None = None
    """Tokenizer directory or hub id; None = the policy's."""
    prompts: str | None = None
    """Training prompts as JSON lines {"prompt": ...}; None = prompts of the review task."""
    chat_template: bool = False
    """Give each prompt to the policy as a user turn of the tokenizer's chat template, ending with
    the assistant's header (add_generation_prompt), as an instruct model expects."""
    num_prompts: int = 4096
    """Review-task prompts to draw from (when prompts is None)."""
    task_seed: int = 2
    """Seed of the review task's training prompts (evaluation uses task_seed + 1)."""
    gold: bool = False
    """Log the review task's gold reward (Eq. (7.1)) of every rollout; needs review prompts."""
    seed: int = 1
    """Seeds sampling, prompt order and minibatch order."""
    iterations: int = 100
    """PPO iterations: one batch of rollouts, then ppo_epochs over it."""
    batch_size: int = 32
    """Prompts (hence responses) per rollout."""
    num_minibatches: int = 1
    """Minibatches per epoch; must divide batch_size."""
    ppo_epochs: int = 4
    """K: passes over each rollout."""
    max_new_tokens: int = 32
    """Response length limit T; a response cut here is truncated (no EOS)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end a response besides the tokenizer's EOS, e.g. an instruct model's
    end-of-turn token (the ids in its generation_config.eos_token_id); kept and counted like EOS."""
    temperature: float = 1.0
    """τ: sampling temperature, applied identically when scoring (§6)."""
    learning_rate: float = 1e-5
    """Peak Adam step size for the policy and the value model."""
    warmup_iterations: int = 0
    """Linear learning-rate warm-up over this many iterations."""
    anneal_lr: bool = False
    """After warm-up, decay the learning rate linearly to 0 over the remaining iterations."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    clip_eps: float = 0.2
    """ε: policy ratio clip range."""
    vf_clip_eps: float | None = 0.2
    """ε_v: value clipping around the rollout's values; None turns it off."""
    vf_coef: float = 0.1
    """c₁: value loss coefficient (½·mean((V − R)²) inside)."""
    ent_coef: float = 0.0
    """c₂: entropy bonus coefficient."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None turns clipping off."""
    target_kl: float | None = None
    """Stop an iteration's epochs once a minibatch's approx KL(π_old‖π_θ) exceeds this."""
    gamma: float = 1.0
    """γ: discount over response tokens (1: the sequence reward is not discounted)."""
    gae_lambda: float = 0.95
    """λ of GAE over response tokens."""
    whiten_advantages: Literal["rollout", "minibatch", "off"] = "rollout"
    """Normalise advantages over the real response tokens: once per rollout, per minibatch, or off."""
    whiten_scores: bool = False
    """Normalise the batch's reward scores to mean 0, std 1 before the KL penalty."""
    clip_scores: float | None = None
    """Clamp reward scores to [−clip_scores, clip_scores]; None = no clamp."""
    reference: Literal["sft", "old", "mixture"] = "sft"
    """KL anchor: the SFT model (KL in the reward), the old policy (KL term in the loss: it is 0 at
    rollout time), or the mixture α·π_SFT + (1 − α)·π_old (in the reward)."""
    ref_mix_alpha: float = 0.5
    """α of the mixture reference (1 = SFT, 0 = old policy)."""
    kl_coef: float = 0.05
    """β: initial (adaptive) or fixed KL coefficient."""
    adaptive_kl: bool = False
    """Adapt β towards kl_target (Ziegler et al. 2019) instead of keeping it fixed."""
    kl_target: float = 6.0
    """Target of the adaptive controller: KL(π‖π_ref) summed over a response, nats."""
    kl_horizon: int = 10_000
    """Horizon of the adaptive controller, in sequences."""
    kl_kind: Literal["k1", "k3"] = "k1"
    """KL estimator in the reward (k1 = log π − log π_ref; k3 = e^{−d} − 1 + d ≥ 0)."""
    value_design: Literal["separate", "head"] = "separate"
    """Separate value model (a trunk of its own) or a value head on the policy's trunk."""
    value_init: Literal["reward", "sft"] = "reward"
    """Initialise the separate value model from the reward model or from the SFT policy."""
    eval_every: int = 0
    """Evaluate on held-out prompts every this many iterations (and at the start and end); 0 = never."""
    eval_prompts: int = 256
    """Held-out prompts per evaluation."""
    device: str = "cpu"
    """torch device for every model, e.g. cpu, cuda, cuda:1."""
    dtype: DType = "fp32"
    """Compute dtype (§8): bf16/fp16 autocast around the trained models' forward, float32 master
    weights, Adam state, log-probs and losses (fp16 adds a GradScaler); the frozen reference and
    reward models are stored in this dtype."""
    fsdp: bool = False
    """Shard the policy and value model over the torchrun ranks with FSDP2 (fully_shard)
    instead of DDP (§8)."""
    grad_accum_steps: int = 1
    """Forward/backward micro-steps per optimiser step; a micro-batch is the (global) minibatch
    divided by (ranks x grad_accum_steps) (§8)."""
    lora_r: int = 0
    """LoRA rank of the policy's adapters (peft); the reference is then the base weights with
    the adapters switched off, no second copy (§8). 0 = train all weights."""
    grad_checkpointing: bool = False
    """Activation checkpointing: recompute each transformer block in the backward (§8)."""
    offload_frozen: bool = False
    """Keep the reference and reward models in host memory, each moved to the device for its
    scoring pass (§8)."""
    torch_threads: int = 1
    """torch intra-op threads; 0 leaves torch's default."""
    out_dir: str | None = None
    """Write <out_dir>/ppo: checkpoints and, from the CLI, the trained policy, value model,
    metrics and learning curve; None = keep in memory only."""
    checkpoint_every: int = 0
    """Write <out_dir>/ppo/checkpoint every this many iterations and at the end; 0 = never.
    Under torchrun every rank writes its random state, and --fsdp its shards (§8)."""
    resume: bool = False
    """Continue from <out_dir>/ppo/checkpoint if it exists (bit-exact on CPU); also under torchrun
    (DDP or --fsdp) and with --lora-r, given the same number of processes and settings (§8)."""

    def validate(self) -> None:
        self._positive_int("iterations", "batch_size", "num_minibatches", "ppo_epochs",
                           "max_new_tokens", "num_prompts", "eval_prompts", "kl_horizon",
                           "grad_accum_steps")
        self._non_negative_int("seed", "task_seed", "warmup_iterations", "eval_every",
                               "torch_threads", "checkpoint_every", "lora_r")
        check_field(all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids),
                    "stop_token_ids", f"must be token ids (integers >= 0), got {self.stop_token_ids!r}")
        check_field(not (self.lora_r and self.ref_model), "ref_model",
                    "with lora_r > 0 the reference is the base weights with adapters off")
        for name in ("temperature", "learning_rate", "adam_eps", "clip_eps"):
            self._number(name, low=0.0, low_open=True)
        for name in ("vf_clip_eps", "max_grad_norm", "target_kl", "clip_scores"):
            self._number(name, low=0.0, low_open=True, optional=True)
        for name in ("vf_coef", "ent_coef", "kl_coef"):
            self._number(name, low=0.0)
        self._number("kl_target", low=0.0, low_open=True)
        for name in ("gamma", "gae_lambda", "ref_mix_alpha"):
            self._number(name, low=0.0, high=1.0)
        check_field(self.batch_size % self.num_minibatches == 0, "num_minibatches",
                    f"{self.num_minibatches} does not divide batch_size = {self.batch_size}")
        check_field(self.batch_size // self.num_minibatches >= 2, "num_minibatches",
                    "leaves fewer than 2 sequences per minibatch")
        check_field(not (self.adaptive_kl and self.kl_coef == 0), "kl_coef",
                    "must be > 0 for the adaptive controller (it scales β multiplicatively)")
        for name, allowed in (("whiten_advantages", ("rollout", "minibatch", "off")),
                              ("reference", ("sft", "old", "mixture")), ("kl_kind", ("k1", "k3")),
                              ("value_design", ("separate", "head")),
                              ("value_init", ("reward", "sft")),
                              ("dtype", ("fp32", "bf16", "fp16"))):
            check_field(getattr(self, name) in allowed, name,
                        f"must be one of {allowed}, got {getattr(self, name)!r}")
        check_field(self.out_dir is not None or not (self.checkpoint_every or self.resume),
                    "out_dir", "is needed for checkpoint_every > 0 or resume")
        check_field(not (self.gold and self.prompts), "gold",
                    "the gold reward is defined for the review task's prompts only (prompts=None)")


# Fields a resumed run may change without changing the result (on CPU).
_RESUMABLE = {"out_dir", "checkpoint_every", "resume", "device", "torch_threads", "iterations"}

PRESETS: dict[str, tuple[str, RLHFConfig]] = {
    "tiny": ("the review task: committed tiny SFT policy and reward model, gold reward logged",
             RLHFConfig(
        # 40 iterations x 32 responses, 2 minibatches x 4 epochs (8 Adam steps per rollout) at
        # 1e-4 after 5 warm-up iterations; a fixed β = 0.05 holds KL(π‖π_SFT) near 4 nats per
        # response, where the gold reward is still rising (at β = 0 it collapses: §7's sweep).
        gold=True, iterations=40, batch_size=32, num_minibatches=2, ppo_epochs=4,
        max_new_tokens=32, temperature=1.0, learning_rate=1e-4, warmup_iterations=5,
        kl_coef=0.05, eval_every=10)),
}


@dataclass
class RLHFResult:
    """What :func:`train` returns (and the CLI writes to the run directory)."""

    policy: Any
    value_model: Any
    tokenizer: Any
    config: RLHFConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    """One row per iteration (metric keys from ``ppo_lab.metrics`` + bookkeeping)."""
    evals: list[dict[str, Any]] = field(default_factory=list)
    """Held-out evaluations (:func:`evaluate`), each with its iteration."""
    summary: dict[str, Any] = field(default_factory=dict)


def train(config: RLHFConfig, *, policy=None, ref_model=None, reward_model=None,
          reward_fn: RewardFn | None = None, tokenizer=None, value_model=None,
          progress: bool = False) -> RLHFResult:
    """Train the policy with PPO-RLHF as configured; models given as objects override the paths.

    Every model stays in eval mode (dropout off) during rollout and training: the ratio on the
    first minibatch of an iteration is then exactly 1 (logged as ``policy/ratio_error``).
    Deterministic on CPU; ``progress`` shows a tqdm bar.
    """
    start_time = time.perf_counter()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    info = init_distributed(config.device)  # torchrun's ranks (§8); one process: rank 0 of 1
    config = config.replace(device=str(info.device)) if info.enabled else config
    sizes = derive_micro_batch_sizes(batch_size=config.batch_size, world_size=info.world_size,
                                     minibatch_size=config.batch_size // config.num_minibatches,
                                     grad_accum_steps=config.grad_accum_steps)
    seed_everything(rank_seed(config.seed, info.rank))
    generator = torch.Generator().manual_seed(config.seed)  # prompt and minibatch order

    # 0. Prompts, models, optimiser, schedules.
    prompts = _prompts(config)
    tokenizer, policy, ref_model, reward_model, value_model = _load_models(
        config, policy, ref_model, reward_model, reward_fn, tokenizer, value_model)
    check_field(not config.chat_template or bool(getattr(tokenizer, "chat_template", None)),
                "chat_template", "the tokenizer has no chat template (tokenizer.chat_template is empty)")
    outside = [t for t in config.stop_token_ids if t >= len(tokenizer)]
    check_field(not outside, "stop_token_ids", f"{outside} outside the tokenizer's {len(tokenizer)} tokens")
    device = next(policy.parameters()).device
    sampler = torch.Generator(device).manual_seed(rank_seed(config.seed, info.rank))  # tokens
    spec = sampling_spec(tokenizer, config.temperature, config.stop_token_ids)
    gold = ReviewTask().gold_rewards if config.gold else None
    # §8 switches: LoRA (the reference = adapters off), activation checkpointing, DDP/FSDP2.
    if config.lora_r:
        policy, ref_model = add_lora(policy, config.lora_r), None
    if config.grad_checkpointing:
        for model in (policy, value_model):
            if hasattr(model, "config"):  # a Hugging Face model (not the value head)
                enable_activation_checkpointing(model)
    train_policy = wrap_model(policy, info, fsdp=config.fsdp)
    train_value = wrap_model(value_model if config.value_design == "head" else
                             ForwardWith(value_model, token_scalars), info, fsdp=config.fsdp)
    precision = Precision(config.dtype, device)
    frozen_home = torch.device("cpu") if config.offload_frozen else None  # None: never moved
    for frozen in (ref_model, reward_model):
        if frozen is not None and frozen_home is not None:
            frozen.to(frozen_home)
    params = [p for m in (policy, value_model) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, eps=config.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: _lr_factor(k, config))
    kl_ctl = (AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
              if config.adaptive_kl else FixedKLController(config.kl_coef))
    result = RLHFResult(policy, value_model, tokenizer, config)
    first = 0
    if config.resume and find_checkpoint(Path(config.out_dir) / CHECKPOINT_DIR) is not None:
        first, elapsed = _restore(Path(config.out_dir) / CHECKPOINT_DIR, config, policy,
                                  value_model, optimizer, scheduler, kl_ctl, (generator, sampler),
                                  result, info)
        start_time -= elapsed
    eval_prompts = ReviewTask().prompts(config.eval_prompts, seed=config.task_seed + 1) \
        if config.eval_every and not config.prompts else prompts[: config.eval_prompts]
    bar = tqdm(total=config.iterations, initial=first, unit="it",
               disable=not (progress and info.is_main),
               file=sys.stderr, dynamic_ncols=True)

    for iteration in range(first, config.iterations):
        if config.eval_every and iteration % config.eval_every == 0:
            with generation_model(train_policy) as sampling_policy:
                result.evals.append({"iteration": iteration, **evaluate(
                    sampling_policy, tokenizer, eval_prompts, config, reward_model=reward_model,
                    reward_fn=reward_fn, ref_model=ref_model, gold=gold)})
        t0 = time.perf_counter()

        # 1. Rollout: B prompts, one sampled response each (batched, KV cache, left padding).
        idx = torch.randperm(len(prompts), generator=generator)[: config.batch_size]
        idx = shard(idx, info)  # this rank's block of the global batch (§8)
        texts = [prompts[i] for i in idx.tolist()]
        prompt_ids, prompt_mask = _encode_prompts(tokenizer, texts, config.chat_template)
        with torch.no_grad(), generation_model(train_policy) as sampling_policy:
            batch, logprobs = generate(  # logprobs: log π_θold of the sampled tokens, [B, T]
                sampling_policy, prompt_ids.to(device), prompt_mask.to(device), spec,
                max_new_tokens=config.max_new_tokens,
                eos_token_id=_stops(tokenizer, config),
                pad_token_id=tokenizer.pad_token_id, generator=sampler)
        _check_rollout(batch)
        t1 = time.perf_counter()

        with torch.no_grad():
            # 2. Score r(x, y): the reward model reads the last real token (§6), or reward_fn on
            #    the decoded text with special tokens kept (an EOS stays visible, errata 16).
            with on_device(reward_model, device if frozen_home else None):
                scores = _score(batch, texts, tokenizer, reward_model, reward_fn, config)  # [B]
            gold_scores = gold(texts, _decode(tokenizer, batch), eos=batch.eos.tolist()) \
                if gold else None

            # 3. Reference log-probs, old log-probs (from the sampler: no second pass, the
            #    ratio test holds them equal) and values V(s_t) on the response tokens.
            old_logprobs = logprobs
            if config.dtype != "fp32":  # §8: the cached 16-bit sampler rounds differently from
                with precision.autocast():  # the training pass; score once as stage 6 will
                    old_logprobs = response_logprobs(train_policy, batch, spec).logprobs
            with reference_model(policy, ref_model, device if frozen_home else None) as ref:
                ref_logprobs = _reference_logprobs(ref, batch, spec, old_logprobs, config)
            old_values = _values(policy, unwrap(train_value), batch, spec)  # [B, T]

            # 4. Per-token rewards: −β·KL_t on every token, + r(x, y) on the last real one.
            rewards, kl = per_token_rewards(
                scores, old_logprobs, ref_logprobs, batch.response_mask, batch.response_lengths,
                kl_coef=0.0 if config.reference == "old" else kl_ctl.value,
                kl_kind=config.kl_kind)

            # 5. GAE over response tokens (time-major inside); the last real token ends the
            #    episode, so nothing crosses a response's end. Whitened once here by default.
            advantages, returns = token_advantages(
                rewards, old_values, batch.response_mask, gamma=config.gamma,
                gae_lambda=config.gae_lambda, whiten=config.whiten_advantages == "rollout")
        t2 = time.perf_counter()

        # 6. K epochs of minibatch SGD on the PPO loss.
        lr = optimizer.param_groups[0]["lr"]
        stats, epochs_done = _optimise(train_policy, train_value, optimizer, batch, spec,
                                       old_logprobs, old_values, advantages, returns, config,
                                       generator, kl_ctl.value, precision, sizes)
        t3 = time.perf_counter()

        # 7. KL controller, learning-rate schedule, log, checkpoint.
        mask = batch.response_mask
        sequence_kl = kl.sum(1)  # [B]: Σ_t KL_t per response
        kl_coef = kl_ctl.value
        kl_ctl.update(float(global_mean(sequence_kl)), config.batch_size)  # all ranks' mean
        scheduler.step()
        result.history.append({
            "iteration": iteration + 1, "episodes": (iteration + 1) * config.batch_size,
            "time": time.perf_counter() - start_time, "epochs": epochs_done,
            "tokens_per_second": float(mask.sum()) / (t3 - t0),
            "time/generate": t1 - t0, "time/score": t2 - t1, "time/train": t3 - t2,
            "time/iteration": t3 - t0,
            **metrics.check_keys(all_reduce_stats({
                "objective/scores": float(scores.mean()),
                "objective/gold_reward": None if gold_scores is None else float(gold_scores.mean()),
                "objective/kl": float(sequence_kl.mean()),
                "objective/kl_coef": kl_coef,
                "objective/rlhf_reward": float((scores - kl_coef * sequence_kl).mean()),
                "response/length": float(batch.response_lengths.float().mean()),
                "response/eos_fraction": float(batch.eos.float().mean()),
                "value/explained_variance": float(explained_variance(old_values, returns, mask=mask)),
                "optim/learning_rate": lr,
                **stats,
            }, weight=len(batch))),
        })
        bar.update(1)
        bar.set_postfix(score=f"{float(scores.mean()):.2f}", kl=f"{float(sequence_kl.mean()):.2f}",
                        refresh=False)
        if config.checkpoint_every and (  # every rank: its own random streams, its shards
                (iteration + 1) % config.checkpoint_every == 0 or iteration + 1 == config.iterations):
            _save(Path(config.out_dir) / CHECKPOINT_DIR, iteration + 1,
                  time.perf_counter() - start_time, config, policy, value_model, optimizer,
                  scheduler, kl_ctl, (generator, sampler), result, info)
    bar.close()
    if config.eval_every and (not result.evals or result.evals[-1]["iteration"] != config.iterations):
        with generation_model(train_policy) as sampling_policy:
            result.evals.append({"iteration": config.iterations, **evaluate(
                sampling_policy, tokenizer, eval_prompts, config, reward_model=reward_model,
                reward_fn=reward_fn, ref_model=ref_model, gold=gold)})
    return result


def token_advantages(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor,
                     *, gamma: float, gae_lambda: float, whiten: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 5: GAE, Eqs. (4.2) and (4.6) (§4), per response token; ``[B, T]`` in and out.

    The core ``gae_advantages`` runs time-major on ``[T, B]``. Each response's last real token
    (EOS, or the length limit) is ``terminated`` and an episode end: δ there is r − V with no
    bootstrap, and the recursion stops, so no value or reward beyond a response's end — padding
    — reaches its advantages. ``returns = advantages + values`` (the value targets). With
    ``whiten``, advantages are normalised over the real response tokens only (core
    ``masked_whiten``; 0 on padding). Symbols: r_t ↔ rewards, V(s_t) ↔ values, γ ↔ gamma,
    λ ↔ gae_lambda.
    """
    mask = response_mask.bool()
    last = mask & ~torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)  # [B, T]
    values = torch.where(mask, values, 0.0)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)  # V(s_{t+1})
    advantages, returns = gae_advantages(
        rewards=torch.where(mask, rewards, 0.0).T, values=values.T, next_values=next_values.T,
        terminated=last.T, episode_ends=last.T, gamma=gamma, gae_lambda=gae_lambda)
    advantages, returns = advantages.T, returns.T  # [B, T]
    if whiten:  # over every rank's tokens (§8); one process: masked_whiten itself
        advantages = global_masked_whiten(advantages, mask)
    return advantages, returns


def _optimise(policy, value_model, optimizer, batch: SequenceBatch, spec, old_logprobs,
              old_values, advantages, returns, config: RLHFConfig, generator: torch.Generator,
              kl_coef: float, precision: Precision | None = None, sizes=None
              ) -> tuple[dict[str, float], int]:
    """Stage 6: ``ppo_epochs`` passes of shuffled minibatches of whole sequences; one forward
    (policy, and the value model when separate) and one backward per minibatch — or per
    micro-batch with ``grad_accum_steps`` > 1 (§8: ``policy`` and ``value_model`` are the
    DDP/FSDP2-wrapped models, so every training gradient flows through the wrapper).

    Returns the mean loss statistics under their log keys, ``policy/ratio_error`` (max |ratio − 1|
    over the first minibatch's response tokens, before any step: 0 up to rounding when sampling
    and scoring agree) and the number of epochs completed (fewer after an early stop on KL).
    """
    size = sizes.local_minibatch_size if sizes else len(batch) // config.num_minibatches
    precision = precision or Precision("fp32")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    totals: dict[str, float] = defaultdict(float)
    steps, epochs_done, ratio_error = 0, 0, None

    def minibatch_loss(mb: dict):
        out = response_logprobs(policy, mb["batch"], spec, with_entropy=config.ent_coef > 0,
                                with_hidden=config.value_design == "head")
        if config.value_design == "head":
            values = value_model(out.hidden)  # [b, T]
        else:
            values = response_values(_scalars(value_model, mb["batch"]), mb["batch"])  # [b, T]
        kl = None
        if config.reference == "old":  # KL(π_old‖π_θ) on π_old's samples, k3, in the loss
            kl = kl_estimate(mb["old_logprobs"], out.logprobs, kind="k3")
        nonlocal ratio_error
        if ratio_error is None:
            with torch.no_grad():
                ratio = torch.exp(out.logprobs - mb["old_logprobs"])
                ratio_error = float(torch.where(mb["response_mask"], (ratio - 1).abs(), 0).max())
        return ppo_loss(
            logprobs=out.logprobs, old_logprobs=mb["old_logprobs"], advantages=mb["advantages"],
            values=values, old_values=mb["old_values"], returns=mb["returns"],
            entropy=out.entropy, clip_eps=config.clip_eps, vf_clip_eps=config.vf_clip_eps,
            vf_coef=config.vf_coef, ent_coef=config.ent_coef, kl=kl,
            kl_coef=kl_coef if kl is not None else 0.0, mask=mb["response_mask"])

    for _epoch in range(config.ppo_epochs):
        stop = False
        for idx in torch.randperm(len(batch), generator=generator).split(size):
            idx = idx.to(old_logprobs.device)
            mask = batch.response_mask[idx]
            mb_advantages = advantages[idx]
            if config.whiten_advantages == "minibatch":
                mb_advantages = global_masked_whiten(mb_advantages, mask)
            mb = {"batch": batch.select(idx), "response_mask": mask, "old_logprobs": old_logprobs[idx],
                  "advantages": mb_advantages, "old_values": old_values[idx], "returns": returns[idx]}
            optimizer.zero_grad()
            stats = accumulate_gradients((policy, value_model), micro_batches(mb, config.grad_accum_steps),
                                         minibatch_loss, precision=precision)
            # Early stop on this minibatch's approx KL (all ranks' tokens) before its step.
            if global_early_stop(stats["approx_kl"], config.target_kl, weight=int(mask.sum())):
                optimizer.zero_grad()
                stop = True
                break
            _, grad_norm = precision.step(optimizer, params, config.max_grad_norm)
            for key, value in stats.items():
                totals[key] += value
            totals["grad_norm"] += grad_norm
            steps += 1
        if stop:
            break
        epochs_done += 1
    means = {k: v / max(steps, 1) for k, v in totals.items()}
    if "entropy" not in means:  # not in the loss: the sampled tokens' −log π, a Monte-Carlo estimate
        means["entropy"] = -float(masked_mean(old_logprobs, batch.response_mask))
    return {"optim/grad_norm": means.pop("grad_norm", 0.0), "policy/ratio_error": ratio_error,
            **metrics.loss_metrics(means)}, epochs_done


def _load_models(config, policy, ref_model, reward_model, reward_fn, tokenizer, value_model):
    """Stage 0: tokenizer, policy, reference, reward and value models from objects or paths,
    all in eval mode (dropout off); the frozen ones without gradients."""
    def tiny(name: str) -> str:  # the committed tiny models, only when no path is given
        from .assets import tiny_path
        return str(tiny_path(name))

    model_path = config.model or (tiny("sft") if policy is None else None)
    kw = dict(device=config.device, dtype=config.dtype)  # frozen models: stored in the compute dtype
    trained_kw = dict(kw, dtype="fp32")  # trained models: float32 master weights (§8)
    check_field(model_path is not None or (tokenizer is not None and ref_model is not None),
                "model", "is needed for the tokenizer and the reference when only a policy object is given")
    if tokenizer is None:
        tokenizer = _named("tokenizer" if config.tokenizer else "model", load_tokenizer,
                           config.tokenizer or model_path)
    if policy is None:
        policy = _named("model", load_causal_lm, model_path, **trained_kw)
    if ref_model is None:
        ref_model = _named("ref_model" if config.ref_model else "model", load_causal_lm,
                           config.ref_model or model_path, **kw)
    reward_path = config.reward_model or (tiny("reward") if reward_fn is None
                                          and reward_model is None else None)
    if reward_fn is None and reward_model is None:
        reward_model = _named("reward_model", load_scalar_model, reward_path, **kw)
    if config.value_design == "head":
        value_model = value_model if value_model is not None else ValueHead(
            policy.config.get_text_config().hidden_size).to(config.device)
    elif value_model is None:
        if config.value_init == "reward":
            check_field(reward_model is not None or config.reward_model is not None, "value_init",
                        "'reward' needs a reward model; use 'sft' with a reward_fn")
            value_model = copy.deepcopy(reward_model).float() if reward_model is not None else \
                _named("reward_model", load_scalar_model, reward_path, **trained_kw)
        else:
            check_field(model_path is not None, "value_init",
                        "'sft' loads the value trunk from --model; give model or value_model")
            value_model = _named("model", scalar_model_from_causal_lm, model_path,
                                 pad_token_id=tokenizer.pad_token_id, **trained_kw)
    # Each model reads the policy's token ids as they are (§6): a visibly different tokenizer
    # (too small an embedding, another id for a token) is an error naming the field.
    tokenizer_path = config.tokenizer and model_path  # the policy's own, unless another was given
    for name, model, path in (("model", policy, tokenizer_path), ("ref_model", ref_model, config.ref_model),
                              ("reward_model", reward_model, reward_path),
                              ("value_model", value_model, None)):
        if model is not None and hasattr(model, "get_input_embeddings"):  # not the value head
            check_shares_tokenizer(model, tokenizer, name, path)
    for frozen in (ref_model, reward_model):
        if frozen is not None:
            frozen.eval().requires_grad_(False)
    policy.eval()
    value_model.eval()
    return tokenizer, policy, ref_model, reward_model, value_model


def _named(name: str, loader, path, **kwargs):
    """``loader(path)``; a missing path or unknown id is a ValueError naming the config field."""
    try:
        return loader(path, **kwargs)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _prompts(config: RLHFConfig) -> list[str]:
    if config.prompts is not None:
        prompts = [r["prompt"] for r in read_jsonl(config.prompts, ["prompt"], name="prompts")]
    else:
        prompts = ReviewTask().prompts(config.num_prompts, seed=config.task_seed)
    check_field(len(prompts) >= config.batch_size, "batch_size",
                f"{config.batch_size} is more than the {len(prompts)} prompts")
    return prompts


def _encode_prompts(tokenizer, texts: list[str], chat_template: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (the tokenizer's special tokens added, as in SFT), left-padded: ``[B, P]`` each.
    With ``chat_template`` each text is a user turn of the tokenizer's chat template followed by
    the assistant's header; the template writes its own special tokens. A prompt with no token
    would be an all-padding row: a ValueError naming it."""
    if chat_template:
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True) for text in texts]
        ids = tokenizer(chats, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(texts)["input_ids"]
    empty = [text for text, row in zip(texts, ids) if not row]
    if empty:
        raise ValueError(f"prompts: {empty[0]!r} has no tokens (it would be an all-padding row)")
    return left_pad(ids, tokenizer.pad_token_id)


def _stops(tokenizer, config: RLHFConfig) -> list[int]:
    """The ids that end a response: the tokenizer's EOS, and ``stop_token_ids`` if any."""
    return [tokenizer.eos_token_id, *config.stop_token_ids]


def _check_rollout(batch: SequenceBatch) -> None:
    """Nothing is skipped silently: an empty response is an error, not a zero-length row."""
    empty = torch.nonzero(batch.response_lengths < 1).flatten().tolist()
    if empty:
        raise ValueError(f"max_new_tokens: the rollout produced empty responses (rows {empty})")


def _decode(tokenizer, batch: SequenceBatch) -> list[str]:
    """Responses as text with special tokens kept (an EOS stays in the text the reward sees)."""
    return [tokenizer.decode(ids[:n], skip_special_tokens=False)
            for ids, n in zip(batch.response_ids.tolist(), batch.response_lengths.tolist())]


def _score(batch, texts, tokenizer, reward_model, reward_fn, config) -> torch.Tensor:
    if reward_fn is not None:
        scores = torch.as_tensor(reward_fn(texts, _decode(tokenizer, batch), eos=batch.eos.tolist()),
                                 dtype=torch.float32).to(batch.input_ids.device)
    else:
        scores = sequence_scores(reward_model, batch)
    if scores.shape != (len(batch),):
        raise ValueError(f"reward_fn: returned shape {tuple(scores.shape)}, expected ({len(batch)},)")
    if not bool(torch.isfinite(scores).all()):
        bad = torch.nonzero(~torch.isfinite(scores)).flatten().tolist()
        raise ValueError(f"reward_fn/reward_model: non-finite rewards for rows {bad} "
                         f"(e.g. {scores[bad[0]].item()})")
    if config.clip_scores is not None:
        scores = clip_scores(scores, config.clip_scores)
    if config.whiten_scores:
        scores = whiten_scores(scores)
    return scores


def _reference_logprobs(ref_model, batch, spec, old_logprobs, config) -> torch.Tensor:
    """log π_ref of the sampled tokens for the reference choice of §6."""
    if config.reference == "old":
        return old_logprobs  # KL to the old policy is 0 here; it acts in the loss (stage 6)
    sft = response_logprobs(ref_model, batch, spec).logprobs
    if config.reference == "sft":
        return sft
    return mixture_ref_logprobs(sft, old_logprobs, config.ref_mix_alpha)


def _values(policy, value_model, batch, spec) -> torch.Tensor:
    """V(s_t) for every response token, ``[B, T]`` (0 outside the response mask)."""
    if isinstance(value_model, ValueHead):
        return value_model(response_logprobs(policy, batch, spec, with_hidden=True).hidden)
    return response_values(_scalars(value_model, batch), batch)


def _scalars(value_model, batch) -> torch.Tensor:
    """``token_scalars`` of a bare scalar model, or through ``ForwardWith(model, token_scalars)``
    and its DDP/FSDP2 wrapper (§8), so the wrapper's hooks run: ``[B, P + T]``."""
    return token_scalars(value_model, batch) if hasattr(value_model, "score") else value_model(batch)


def _lr_factor(k: int, config: RLHFConfig) -> float:
    """Linear warm-up over ``warmup_iterations``, then constant or linear decay to 0."""
    if k < config.warmup_iterations:
        return (k + 1) / config.warmup_iterations
    if not config.anneal_lr:
        return 1.0
    rest = config.iterations - config.warmup_iterations
    return max(0.0, 1.0 - (k - config.warmup_iterations) / max(rest, 1))


@torch.no_grad()
def evaluate(policy, tokenizer, prompts: list[str], config: RLHFConfig, *, reward_model=None,
             reward_fn: RewardFn | None = None, ref_model=None, gold: RewardFn | None = None,
             seed: int = 12345) -> dict[str, float]:
    """One response per held-out prompt, sampled with a generator of its own (training's random
    streams are untouched): mean proxy score, gold reward (mean and std, where known), KL to the
    reference (k1, summed over each response), response length and EOS fraction."""
    device = next(policy.parameters()).device
    spec = sampling_spec(tokenizer, config.temperature, config.stop_token_ids)
    ids, mask = _encode_prompts(tokenizer, list(prompts), config.chat_template)
    batch, logprobs = generate(policy, ids.to(device), mask.to(device), spec,
                               max_new_tokens=config.max_new_tokens,
                               eos_token_id=_stops(tokenizer, config),
                               pad_token_id=tokenizer.pad_token_id,
                               generator=torch.Generator(device).manual_seed(seed))
    scores = _score(batch, list(prompts), tokenizer, reward_model, reward_fn,
                    config.replace(whiten_scores=False, clip_scores=None))
    out = {"scores": float(scores.mean()),
           "length": float(batch.response_lengths.float().mean()),
           "eos_fraction": float(batch.eos.float().mean())}
    if ref_model is not None:
        ref = response_logprobs(ref_model, batch, spec).logprobs
        out["kl"] = float(torch.where(batch.response_mask, logprobs - ref, 0).sum(1).mean())
    if gold is not None:
        g = gold(list(prompts), _decode(tokenizer, batch), eos=batch.eos.tolist())
        out["gold"], out["gold_std"] = float(g.mean()), float(g.std())
    return out


# --- checkpoints: one code path for one process, DDP and FSDP2 (ppo_lab.scale.distributed) ------

def _save(directory: Path, iteration, elapsed, config, policy, value_model, optimizer, scheduler,
          kl_ctl, generators, result, info) -> None:
    """Write ``directory`` atomically with ``save_distributed_checkpoint`` (every rank calls it).

    One process and DDP: rank 0 writes ``policy/`` and ``value/`` with ``save_pretrained`` (the
    adapters only under LoRA; a value head goes into ``state.pt``) and ``state.pt`` (optimiser,
    LR schedule, β, step, config, world size, log). FSDP2: the models' and optimiser's shards go
    to ``dcp/`` (``torch.distributed.checkpoint``, each rank its part). Every rank writes
    ``rng_rank{r}.pt``: its global RNG state and ``generators`` (prompt/minibatch order, and its
    own token sampler).
    """
    with quiet_transformers():
        save_distributed_checkpoint(
            directory, {"policy": policy, "value": value_model}, optimizer, info, extra={
                "iteration": iteration, "elapsed": elapsed, "config": config.to_dict(),
                "scheduler": scheduler.state_dict(), "kl_coef": kl_ctl.value,
                "history": result.history, "evals": result.evals},
            generators=generators)


def _restore(directory, config, policy, value_model, optimizer, scheduler, kl_ctl, generators,
             result, info) -> tuple[int, float]:
    """Load what :func:`_save` wrote; a config field outside ``_RESUMABLE`` that differs, or
    another number of processes (``world_size``), is a ``ValueError`` naming it, raised before
    anything is loaded."""
    def check(saved_state: dict[str, Any]) -> None:
        saved, current = saved_state["config"], config.to_dict()
        for f in fields(config):  # a field added since the checkpoint was written: its default
            value = saved.get(f.name, f.default)
            if f.name not in _RESUMABLE and value != current[f.name]:
                raise ValueError(f"{f.name}: checkpoint {directory} was written with "
                                 f"{value!r}, this run has {current[f.name]!r}")

    with quiet_transformers():
        state = load_distributed_checkpoint(directory, {"policy": policy, "value": value_model},
                                            optimizer, info, generators=generators, check=check)
    scheduler.load_state_dict(state["scheduler"])
    kl_ctl.value = state["kl_coef"]
    result.history[:], result.evals[:] = state["history"], state["evals"]
    return state["iteration"], state["elapsed"]
