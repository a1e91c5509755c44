"""Rollouts of §6/§7: batched sampling from a causal LM with a KV cache (errata 10: the seed
generated one prompt at a time).

``generate`` is a short sampler of our own: one forward pass over the left-padded prompts, then
one single-token forward per step that reuses the cache (``past_key_values``), sampling from
``spec.apply(logits)`` — the same function ``response_logprobs`` scores with. It is plain
temperature sampling and never reads the model's ``generation_config`` (whose transformers
default keeps only the top 50 tokens, and which a downloaded model may set to top-p, a
repetition penalty, …). ``hf_generate`` does the same with ``model.generate`` and an explicit
``GenerationConfig``; the tests check the two draw the same tokens from the same seed, and
``benchmarks/llm_logprobs.py`` times them: for tiny GPT-2 / Llama models (B = 32, 16 prompt + 32
new tokens, one thread) ``model.generate`` took 1.09× and 1.21× the own loop's time, its
per-step bookkeeping (stopping criteria, processors, cache management) being the difference.

Returned: a ``SequenceBatch`` (prompt width P, response width T = the number of steps taken, at
most ``max_new_tokens``) and the sampled tokens' log-probabilities ``[B, T]`` float32 under the
sampling distribution, 0 after the response ends. Lengths count the EOS; tokens after it are pad.
In float32 these equal ``response_logprobs`` on the same batch within 1e-5 (tested), so they can
serve as ``old_logprobs``. A 16-bit model rounds the cached one-token steps differently from the
full scoring pass (up to 0.03 nat on the tiny bf16 models): score the batch once instead.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from ppo_lab.core import logprobs_from_logits

from .logprobs import forward_takes
from .models import SamplingSpec
from .sequences import SequenceBatch, position_ids_from_mask


def _check_args(model, prompt_ids, prompt_mask, spec, max_new_tokens, eos_token_id, pad_token_id) -> None:
    if model.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        raise ValueError("model: is in training mode with dropout on, so the sampled distribution is not the "
                         "one any later pass scores; call model.eval() before sampling")
    if prompt_ids.dim() != 2 or prompt_ids.is_floating_point() or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids: expected integer ids [B, P], got {prompt_ids.dtype} {tuple(prompt_ids.shape)}")
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_mask: shape {tuple(prompt_mask.shape)} does not match prompt_ids {tuple(prompt_ids.shape)}")
    if not bool(prompt_mask[:, -1].bool().all()):
        raise ValueError("prompt_mask: prompts must be LEFT-padded (every row's last column a real token)")
    if not isinstance(spec, SamplingSpec):
        raise ValueError(f"spec: expected a SamplingSpec, got {type(spec).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    stops = stop_ids(eos_token_id)
    for name, value in [("eos_token_id", stop) for stop in stops] + [("pad_token_id", pad_token_id)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected a token id, got {value!r}")
    if not stops:
        raise ValueError("eos_token_id: expected a token id or a non-empty list of them, got []")
    for stop in stops:
        if stop in spec.excluded_token_ids:
            raise ValueError(f"spec: excludes eos_token_id {stop}, so no response could end with it")


def stop_ids(eos_token_id: int | list[int] | tuple[int, ...]) -> list[int]:
    """The ids that end a response (one EOS, or an instruct model's several), as a list."""
    return list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]


def _cache_kwarg(model) -> str:
    """The name a model's forward takes its KV cache by (transformers 5.24: ``cache``; the older
    ``past_key_values`` is deprecated), looked up on the model inside any DDP / LoRA wrapper."""
    return "cache" if forward_takes(model, "cache") else "past_key_values"


def _output_cache(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _finish(prompt_ids, prompt_mask, tokens, logprobs, lengths, ended) -> tuple[SequenceBatch, torch.Tensor]:
    batch = SequenceBatch.from_parts(prompt_ids, prompt_mask, tokens, lengths, ended)
    return batch, torch.where(batch.response_mask, logprobs, 0.0)


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, spec: SamplingSpec, *,
             max_new_tokens: int, eos_token_id: int | list[int] | tuple[int, ...], pad_token_id: int,
             generator: torch.Generator | None = None) -> tuple[SequenceBatch, torch.Tensor]:
    """Sample one response per left-padded prompt from π = softmax(spec.apply(logits)), §6.

    Shapes: ``prompt_ids``, ``prompt_mask [B, P]`` → ``(batch [B, P + T], logprobs [B, T])``.
    A row stops at its first EOS (kept, counted in the length, ``batch.eos`` True; ``eos_token_id``
    may list several ids, e.g. an instruct model's end-of-turn token beside its EOS) or after
    ``max_new_tokens`` (``eos`` False); later positions hold ``pad_token_id``. The loop stops as
    soon as every row has ended. ``generator`` (on the model's device) seeds the draws
    (reproducible on CPU).
    """
    _check_args(model, prompt_ids, prompt_mask, spec, max_new_tokens, eos_token_id, pad_token_id)
    B = prompt_ids.shape[0]
    device = prompt_ids.device
    mask = prompt_mask.long()  # (B, P + t): grows by one column per step
    positions = position_ids_from_mask(mask)  # (B, P)
    kwargs = {"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
    next_position = positions[:, -1:] + 1  # (B, 1)
    cache_name = _cache_kwarg(model)

    tokens, logprobs = [], []
    eos_ids = torch.tensor(stop_ids(eos_token_id), device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
    for t in range(max_new_tokens):
        z = spec.apply(out.logits[:, -1])  # (B, V) float32: the sampling distribution's logits
        token = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator).squeeze(1)  # (B,)
        logprobs.append(logprobs_from_logits(z, token))
        tokens.append(torch.where(ended, pad_token_id, token))
        stops = ~ended & torch.isin(token, eos_ids)
        lengths = torch.where(stops, t + 1, lengths)
        ended |= stops
        if t == max_new_tokens - 1 or bool(ended.all()):
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)  # rows that ended: ignored later
        out = model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=next_position,
                    use_cache=True, **{cache_name: _output_cache(out)})
        next_position = next_position + 1
    return _finish(prompt_ids, prompt_mask, torch.stack(tokens, 1), torch.stack(logprobs, 1), lengths, ended)


class SpecLogitsProcessor(LogitsProcessor):
    """``spec.apply`` as a transformers ``LogitsProcessor`` (for ``model.generate``)."""

    def __init__(self, spec: SamplingSpec):
        self.spec = spec

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.spec.apply(scores)


NEUTRAL_GENERATION = dict(
    do_sample=True, num_beams=1, temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, epsilon_cutoff=0.0,
    eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0, min_length=0, renormalize_logits=False,
    remove_invalid_values=False, num_return_sequences=1, use_cache=True,
)
"""Every ``GenerationConfig`` field that could change the sampled distribution, set to "off"
explicitly (a field left None would be filled from the model's own ``generation_config``, then
from transformers' defaults, e.g. ``top_k=50``)."""

UNMATCHABLE = ("min_p", "min_new_tokens", "bad_words_ids", "force_words_ids", "suppress_tokens", "begin_suppress_tokens",
               "sequence_bias", "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty",
               "guidance_scale", "watermarking_config", "constraints")
"""Fields with no explicit "off" value: set in a model's ``generation_config``, they would leak
into ``model.generate`` unseen by the scoring pass, so ``hf_generate`` refuses such a model."""


@torch.no_grad()
def hf_generate(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, spec: SamplingSpec, *,
                max_new_tokens: int, eos_token_id: int | list[int] | tuple[int, ...], pad_token_id: int
                ) -> tuple[SequenceBatch, torch.Tensor]:
    """``generate`` through ``model.generate``: the same distribution, the global RNG.

    An explicit ``GenerationConfig`` switches off every warper (``NEUTRAL_GENERATION``), a
    ``SpecLogitsProcessor`` applies ``spec``, and the returned ``scores`` (the processed logits)
    give the sampled tokens' log-probs. A model whose ``generation_config`` sets a field that
    cannot be switched off (``UNMATCHABLE``) is a ``ValueError``.
    """
    _check_args(model, prompt_ids, prompt_mask, spec, max_new_tokens, eos_token_id, pad_token_id)
    own = getattr(model, "generation_config", None)
    leaks = [f for f in UNMATCHABLE if own is not None and getattr(own, f, None) not in (None, [], {})]
    if leaks:
        raise ValueError(f"model: its generation_config sets {leaks}, which would change the sampled "
                         "distribution without being applied when scoring; unset them")
    stops = stop_ids(eos_token_id)
    config = GenerationConfig(**NEUTRAL_GENERATION, max_new_tokens=max_new_tokens, eos_token_id=stops,
                              pad_token_id=pad_token_id, output_scores=True, return_dict_in_generate=True)
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                         logits_processor=LogitsProcessorList([SpecLogitsProcessor(spec)]))
    P = prompt_ids.shape[1]
    tokens = out.sequences[:, P:]  # (B, T)
    scores = torch.stack(out.scores, 1).float()  # (B, T, V): spec.apply(logits), as sampled from
    logprobs = logprobs_from_logits(scores, tokens)  # (B, T); -inf after EOS where pad is excluded
    is_eos = torch.isin(tokens, torch.tensor(stops, device=tokens.device))
    ended = is_eos.any(1)
    lengths = torch.where(ended, is_eos.float().argmax(1) + 1, tokens.shape[1])
    tokens = torch.where(torch.arange(tokens.shape[1], device=tokens.device) < lengths[:, None], tokens, pad_token_id)
    return _finish(prompt_ids, prompt_mask, tokens, logprobs, lengths, ended)
