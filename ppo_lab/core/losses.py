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
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eqs. (3.11)–(3.12), §3: maximise L^CLIP − c₁ L^VF + c₂ S, i.e. minimise
    ``loss = policy_loss + vf_coef · value_loss − ent_coef · mean(entropy)``.

    ``policy_loss`` is Eq. (3.2) (``clipped_surrogate_loss`` with ε ↔ ``clip_eps``),
    ``value_loss`` Eq. (3.8) (``clipped_value_loss`` with ε_v ↔ ``vf_clip_eps``; None = Eq. (3.7)),
    ``entropy`` the per-element entropy S (Eq. (3.9), e.g. ``entropy_from_logits``);
    c₁ ↔ ``vf_coef``, c₂ ↔ ``ent_coef``. All tensors alike in shape; every mean is over kept
    elements. Keyword-only: ten tensors and numbers are too many to pass by position safely.

    Optional KL term (the L^KLPEN variant, Schulman et al. 2017 §4, their eq. 8): ``kl`` is a
    per-element KL estimate that carries gradient — e.g. ``kl_estimate(logprobs, ref_logprobs,
    kind="k3")`` for KL(π_θ‖π_ref), or against ``old_logprobs`` for KL to the old policy — and
    ``loss += kl_coef · masked_mean(kl)``; β ↔ ``kl_coef``. With ``clip_eps`` huge this is pure
    L^KLPEN; with both, a clipped objective with a KL brake. The LLM trainer (§7) uses the same
    term when the reference is the old policy, whose KL is identically 0 at rollout time.

    ``stats``: ``loss``, ``policy_loss``, ``value_loss``, ``entropy`` (present only with an
    entropy tensor), ``kl`` (present only with a kl tensor), ``clip_fraction``, ``approx_kl``,
    ``value_clip_fraction`` — Python floats; ``ppo_lab.metrics.loss_metrics`` maps them to log
    keys.
    """
    vf_coef = check.non_negative(vf_coef, "vf_coef")
    ent_coef = check.non_negative(ent_coef, "ent_coef")
    kl_coef = check.non_negative(kl_coef, "kl_coef")
    if vf_clip_eps is not None:
        check.positive(vf_clip_eps, "vf_clip_eps")
    optional = {name: t for name, t in (("entropy", entropy), ("kl", kl)) if t is not None}
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
    if kl is not None:
        (kl,) = check.floats(kl=kl)
        mean_kl = masked_mean(kl, mask)
        loss = loss + kl_coef * mean_kl
        stats["kl"] = mean_kl.item()
    stats["loss"] = loss.item()
    return loss, stats
