"""Log-probabilities of response tokens, §6: one forward pass per batch (errata 1).

For a batch in the shared layout (``sequences``), the logits at position ``P + t − 1`` score
response token ``t``, so the response's logits are ``logits[:, P − 1 : P + T − 1]``. They are
sliced there before any dtype conversion, turned into the sampling distribution by the same
``SamplingSpec.apply`` the sampler uses (÷ temperature, excluded tokens −inf), and reduced by the
core ``logprobs_from_logits`` a few rows at a time, so a 16-bit model never has a float32 copy of
its ``[B, T, V]`` logits.

Symbols: log π(y_t | x, y_<t) ↔ ``logprobs [B, T]`` (float32 whatever the model dtype);
S_t ↔ ``entropy [B, T]``; h_t ↔ ``hidden [B, T, H]`` (the last hidden state that predicts y_t, for
a value head). Positions outside ``response_mask`` are 0.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import torch

from ppo_lab.core import entropy_from_logits, logprobs_from_logits
from ppo_lab.scale.distributed import unwrap

from .models import SamplingSpec
from .sequences import SequenceBatch

CHUNK_ELEMENTS = 1 << 24
"""Logit elements turned into float32 at a time (64 MiB), as in the core's ``_rowwise``."""


@dataclasses.dataclass
class LogprobOutput:
    """``logprobs`` float32 ``[B, T]``; ``entropy`` float32 ``[B, T]`` or None; ``hidden``
    ``[B, T, H]`` (model dtype) or None. All zero outside ``response_mask``."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


def forward_type(model) -> type:
    """The class whose ``forward`` finally runs the call: the model inside DDP (``.module``) and
    peft's LoRA wrapper (``get_base_model()``), which both pass their keyword arguments through
    (``forward(**kwargs)``), so their own signatures do not tell what the model takes."""
    while True:
        inner = unwrap(model)
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        if inner is model:
            return type(model)
        model = inner


def forward_takes(model, name: str) -> bool:
    """Whether the forward that finally runs (:func:`forward_type`) takes the keyword ``name``,
    e.g. ``logits_to_keep`` (compute the LM head on the last positions only)."""
    return _takes(forward_type(model), name)


@functools.lru_cache(maxsize=None)
def _takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters


def check_spec_tokens(batch: SequenceBatch, spec: SamplingSpec) -> None:
    """A real response token the spec excludes has probability 0 (log-prob −inf): ValueError."""
    if spec.excluded_token_ids:
        excluded = torch.tensor(spec.excluded_token_ids, device=batch.input_ids.device)
        bad = torch.isin(batch.response_ids, excluded) & batch.response_mask
        if bool(bad.any()):
            token = int(batch.response_ids[bad][0])
            raise ValueError(f"batch: response token {token} is in spec.excluded_token_ids "
                             f"{spec.excluded_token_ids}; the policy can never emit it")


def response_logits(model, batch: SequenceBatch, *, output_hidden_states: bool = False):
    """One forward pass; returns ``(logits [B, T, V] in the model dtype, model output)``.

    ``position_ids`` come from the attention mask (left padding). Models that take
    ``logits_to_keep`` (every Hugging Face causal LM, also inside DDP or a LoRA wrapper) compute
    the LM head only on the last T + 1 positions, so a long prompt costs no ``[B, P, V]`` logits.
    """
    P, T = batch.prompt_width, batch.response_mask.shape[1]
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    if output_hidden_states:
        kwargs["output_hidden_states"] = True
    if forward_takes(model, "logits_to_keep"):
        out = model(**kwargs, logits_to_keep=T + 1)
        logits = out.logits[:, -(T + 1):-1]  # (B, T, V): positions P − 1 … P + T − 2
    else:
        out = model(**kwargs)
        logits = out.logits[:, P - 1 : P + T - 1]  # (B, T, V)
    return logits, out


def response_logprobs(model, batch: SequenceBatch, spec: SamplingSpec, *, with_entropy: bool = False,
                      with_hidden: bool = False) -> LogprobOutput:
    """§6: log π(y_t | x, y_<t) for every response token of ``batch``, in ONE forward pass.

    π is the sampling distribution ``spec`` describes (the same ``spec.apply`` as generation), so
    on the policy's own rollout these equal the sampler's log-probs. Shapes: ``batch`` [B, P + T]
    → ``logprobs [B, T]`` float32 (``entropy [B, T]``, ``hidden [B, T, H]`` on request), 0
    outside ``response_mask``. Gradients flow when called outside ``torch.no_grad``.
    """
    check_spec_tokens(batch, spec)
    logits, out = response_logits(model, batch, output_hidden_states=with_hidden)
    tokens = batch.response_ids  # (B, T)
    B, T, V = logits.shape
    rows = max(1, CHUNK_ELEMENTS // max(1, T * V))  # sequences per float32 chunk
    logprobs, entropy = [], []
    for i in range(0, B, rows):
        z = spec.apply(logits[i : i + rows])  # (b, T, V) float32 for 16-bit models
        logprobs.append(logprobs_from_logits(z, tokens[i : i + rows]))
        if with_entropy:
            entropy.append(entropy_from_logits(z))
    keep = batch.response_mask
    result = LogprobOutput(logprobs=torch.where(keep, torch.cat(logprobs), 0.0))
    if with_entropy:
        result.entropy = torch.where(keep, torch.cat(entropy), 0.0)
    if with_hidden:
        P = batch.prompt_width
        hidden = out.hidden_states[-1][:, P - 1 : P + T - 1]  # (B, T, H)
        result.hidden = torch.where(keep[..., None], hidden, 0)
    return result


@torch.no_grad()
def reference_loop_logprobs(model, batch: SequenceBatch, spec: SamplingSpec) -> torch.Tensor:
    """The per-token loop, corrected: for each sequence and each response token t, run the model
    on the prompt (no padding) + ``y_<t`` and score ``y_t`` with the LAST position's logits.

    The slow twin of ``response_logprobs`` (errata 1: the mistaken loop fed ``y_≤t``, so the logits had
    already seen the token, and it re-ran the model T times, O(T²) work). No padding and default
    positions, so it also checks the left-padding and ``position_ids`` handling. The log-softmax
    is taken in float64. Returns float32 ``[B, T]``, 0 outside ``response_mask``.
    """
    B, T = batch.response_mask.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        prompt = batch.prompt_ids[b][batch.prompt_mask[b].bool()]
        response = batch.response_ids[b]
        for t in range(int(batch.response_lengths[b])):
            ids = torch.cat([prompt, response[:t]])[None]  # (1, p + t)
            last = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]  # (V,): has seen y_<t only
            logp = torch.log_softmax(spec.apply(last).double(), dim=-1)
            out[b, t] = logp[response[t]]
    return out.float()
