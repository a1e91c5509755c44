"""Chapters 6–7: a causal language model as a PPO policy (``ppo_lab.llm``).

- ``sequences``: the shared layout — left-padded prompts, right-padded responses, masks from
  lengths, ``position_ids`` from the attention mask, ``SequenceBatch``.
- ``models``: loading any causal LM / tokenizer by path or hub id, tiny GPT-2 / Llama configs,
  ``SamplingSpec`` (temperature + excluded tokens, shared by sampling and scoring), reward and
  value models (a trunk + a scalar head), the value head on the policy trunk.
- ``logprobs``: response log-probabilities in one forward pass, and the per-token loop twin.
- ``rollout``: batched, left-padded generation with a KV cache.
- ``rewards``: Bradley–Terry loss, per-token rewards (terminal score − β·KL), the reference
  mixture, score whitening / clipping.

Tensors are ``[B, T]`` (batch, response tokens). ``ppo_lab.llm`` uses ``ppo_lab.core`` and the
shared services, never ``ppo_lab.toy``.
"""

from .logprobs import LogprobOutput, reference_loop_logprobs, response_logprobs
from .models import (
    PolicyWithValueHead,
    SamplingSpec,
    ValueHead,
    build_model,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    response_values,
    sampling_spec,
    scalar_model_from_causal_lm,
    sequence_scores,
    tiny_config,
    token_scalars,
)
from .rollout import generate, hf_generate
from .rewards import (
    bradley_terry_loss,
    clip_scores,
    mixture_ref_logprobs,
    per_token_rewards,
    spread_reward_over_tokens,
    whiten_scores,
)
from .sequences import (
    Batch,
    SequenceBatch,
    last_token_index,
    left_pad,
    position_ids_from_mask,
    response_mask_from_lengths,
    right_pad,
)

__all__ = [
    "Batch",
    "LogprobOutput",
    "PolicyWithValueHead",
    "SamplingSpec",
    "SequenceBatch",
    "ValueHead",
    "bradley_terry_loss",
    "build_model",
    "clip_scores",
    "generate",
    "hf_generate",
    "last_token_index",
    "left_pad",
    "load_causal_lm",
    "load_scalar_model",
    "load_tokenizer",
    "mixture_ref_logprobs",
    "per_token_rewards",
    "position_ids_from_mask",
    "reference_loop_logprobs",
    "response_logprobs",
    "response_mask_from_lengths",
    "response_values",
    "right_pad",
    "sampling_spec",
    "scalar_model_from_causal_lm",
    "sequence_scores",
    "spread_reward_over_tokens",
    "tiny_config",
    "token_scalars",
    "whiten_scores",
]
