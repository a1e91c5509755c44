"""Categorical policies and the REINFORCE estimator, §1 (and §3 entropy, §6 token logprobs).

A categorical policy is a tensor of logits ``[..., V]`` (V actions or vocabulary entries);
``log π(a|s)`` is the log-softmax gathered at the action taken. Toy policies give logits
``[T, N, A]``, language models ``[B, T, V]`` — the same functions serve both.
"""

from __future__ import annotations

import torch

from . import _validate as check
from .masked import mean_kept, zero_dropped

_CHUNK_ELEMENTS = 1 << 24  # 16-bit logits are lifted to float32 this many elements at a time


def _rowwise(fn, logits: torch.Tensor, *per_row: torch.Tensor) -> torch.Tensor:
    """``fn(logits_rows, *per_row_rows)`` over the leading dims, in the compute dtype.

    16-bit logits are converted to float32 a chunk of rows at a time, so a ``[B, T, V]``
    bf16 batch never exists in float32 all at once (TRL's ``selective_log_softmax`` does the
    same).
    """
    lead = logits.shape[:-1]
    if logits.dtype not in check.HALF:
        return fn(logits, *per_row)
    flat = logits.reshape(-1, logits.shape[-1])  # (M, V)
    rows = max(1, _CHUNK_ELEMENTS // max(1, flat.shape[1]))
    extra = [t.reshape(-1) for t in per_row]  # (M,)
    chunks = [
        fn(flat[i : i + rows].float(), *(t[i : i + rows] for t in extra))
        for i in range(0, flat.shape[0], rows)
    ]
    out = torch.cat(chunks) if chunks else flat.new_empty(0, dtype=torch.float32)
    return out.reshape(lead)


def _check_logits(logits) -> torch.Tensor:
    logits = check.tensor(logits, "logits")
    if not logits.is_floating_point() or logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits: expected a float tensor [..., V] with V >= 1, got {logits.dtype} {tuple(logits.shape)}")
    if logits.dtype not in check.HALF:
        logits = logits.to(check.compute_dtype(logits))
    return logits


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[..., tokens]``: log π(a|s) ↔ ``logprobs``; its gradient is Eq. (1.3), §1.1.

    Shapes: ``logits [..., V]``, ``tokens [...]`` (integer) → ``[...]``. 16-bit logits give
    float32 log-probs (float64 stays float64). The caller divides logits by the sampling
    temperature first and aligns positions: ``logits[:, :-1]`` predicts ``ids[:, 1:]`` (the
    seed used the logits that had already seen the token, errata 1).

    Two exact forms of the same number. Small logits (a toy policy's ``[B, A]``, up to
    ``_CHUNK_ELEMENTS``): ``log_softmax`` then gather — one fused kernel, ~3× faster on a CPU
    than ``logsumexp``. Large logits (a language model's ``[B, T, V]``): ``logits[a] −
    logsumexp(logits)``, which keeps no second ``[B, T, V]`` tensor alive for the backward pass
    (``log_softmax`` saves its output).
    """
    logits = _check_logits(logits)
    tokens = check.tensor(tokens, "tokens")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens: expected an integer tensor, got {tokens.dtype}")
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(f"tokens: shape {tuple(tokens.shape)} does not match logits shape {tuple(logits.shape)} without its last dim")
    if tokens.numel():
        low, high = torch.aminmax(tokens)  # one pass over the tokens
        if int(low) < 0 or int(high) >= logits.shape[-1]:
            raise ValueError(f"tokens: values must lie in [0, {logits.shape[-1]})")
    tokens = tokens.long()
    if logits.numel() <= _CHUNK_ELEMENTS:
        logp = torch.log_softmax(logits, dim=-1, dtype=check.compute_dtype(logits))  # (..., V)
        return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def gather_minus_lse(rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        picked = rows.gather(-1, idx.unsqueeze(-1)).squeeze(-1)  # (...)
        return picked - torch.logsumexp(rows, dim=-1)

    return _rowwise(gather_minus_lse, logits, tokens)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Eq. (3.9), §3: ``S = −Σ_a π(a) log π(a)`` per position ↔ ``entropy``. ``[..., V]`` → ``[...]``.

    Logits of ``-inf`` (masked actions) contribute 0, as in ``torch.distributions.Categorical``.
    16-bit logits give a float32 entropy.
    """

    def entropy(rows: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(rows, dim=-1)
        return -(logp.exp() * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)

    return _rowwise(entropy, _check_logits(logits))


def reinforce_loss(
    logprobs: torch.Tensor,
    returns: torch.Tensor,
    baseline: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (1.13), §1.4: ``loss = −mean[(G_t − b(s_t)) · log π(a_t|s_t)]`` over the kept (t, n).

    Its gradient is minus the REINFORCE estimate of ∇_θ J(θ) (Eq. (1.12) without γ^t).
    G_t ↔ ``returns`` (the episode return, or the reward-to-go from ``discounted_returns``),
    b(s_t) ↔ ``baseline`` (§1.5); both are constants (detached): a baseline that carried
    gradient would bias the estimate. Shapes: all alike, ``[T, N]``. Like most libraries this
    drops the γ^t factor of the discounted objective (errata 15, §1.6): multiply ``returns`` by
    γ^t for the unbiased estimator.
    """
    optional = {} if baseline is None else {"baseline": baseline}
    logprobs, returns, *rest = check.floats(logprobs=logprobs, returns=returns, **optional)
    keep = check.keep_mask(mask, logprobs.shape, "logprobs")
    weights = returns - rest[0] if rest else returns
    weights = zero_dropped(weights.detach(), keep)  # (T, N)
    return -mean_kept(zero_dropped(logprobs, keep) * weights, keep)
