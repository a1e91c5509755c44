"""The full PPO objective L^{CLIP+VF+S}, §3 — one function for both trainers.

Schulman et al. 2017, their eq. 9. The CartPole trainer (§5) passes ``[T·N]`` minibatches and no
mask; the RLHF trainer (§7) passes ``[B, T]`` tensors and ``mask=response_mask``.
"""

from __future__ import annotations

import torch

from . import _validate as check
from .clipping import clipped_surrogate_loss, clipped_value_loss
from .masked import masked_mean


def ppo_loss(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_eps: float,
    vf_clip_eps: float | None,
    vf_coef: float,
    entropy: torch.Tensor | None = None,
    ent_coef: float = 0.0,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eqs. (3.11)–(3.12), §3: maximise L^CLIP − c₁ L^VF + c₂ S, i.e. minimise
    ``loss = policy_loss + vf_coef · value_loss − ent_coef · mean(entropy)``.

    ``policy_loss`` is Eq. (3.2) (``clipped_surrogate_loss`` with ε ↔ ``clip_eps``),
    ``value_loss`` Eq. (3.8) (``clipped_value_loss`` with ε_v ↔ ``vf_clip_eps``; None = Eq. (3.7)),
    ``entropy`` the per-element entropy S (Eq. (3.9), e.g. ``entropy_from_logits``);
    c₁ ↔ ``vf_coef``, c₂ ↔ ``ent_coef``. All tensors alike in shape; every mean is over kept
    elements. Keyword-only: ten tensors and numbers are too many to pass by position safely.

    ``stats``: ``loss``, ``policy_loss``, ``value_loss``, ``entropy`` (present only with an
    entropy tensor), ``clip_fraction``, ``approx_kl``, ``value_clip_fraction`` — Python floats;
    ``ppo_lab.metrics.loss_metrics`` maps them to log keys.
    """
    vf_coef = check.non_negative(vf_coef, "vf_coef")
    ent_coef = check.non_negative(ent_coef, "ent_coef")
    if vf_clip_eps is not None:
        check.positive(vf_clip_eps, "vf_clip_eps")
    optional = {} if entropy is None else {"entropy": entropy}
    check.alike(logprobs=logprobs, values=values, old_values=old_values, returns=returns, **optional)
    policy_loss, policy_stats = clipped_surrogate_loss(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, clip_eps=clip_eps, mask=mask
    )
    value_loss, value_stats = clipped_value_loss(
        values=values, old_values=old_values, returns=returns, clip_eps=vf_clip_eps, mask=mask
    )
    loss = policy_loss + vf_coef * value_loss
    stats = {
        "policy_loss": policy_loss.item(),
        "value_loss": value_loss.item(),
        "clip_fraction": policy_stats["clip_fraction"],
        "approx_kl": policy_stats["approx_kl"],
        "value_clip_fraction": value_stats["clip_fraction"],
    }
    if entropy is not None:
        (entropy,) = check.floats(entropy=entropy)
        mean_entropy = masked_mean(entropy, mask)
        loss = loss - ent_coef * mean_entropy
        stats["entropy"] = mean_entropy.item()
    stats["loss"] = loss.item()
    return loss, stats
