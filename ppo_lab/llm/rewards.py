"""Rewards of §6: the Bradley–Terry loss of the reward model, per-token rewards (terminal score
+ −β·KL per token), the reference mixture, score whitening and clipping, and the mistaken
"spread the score over the tokens" form (errata 4) for comparison.

Symbols: r(x, y) ↔ ``scores [B]``; log π ↔ ``logprobs [B, T]``; log π_ref ↔ ``ref_logprobs``;
β ↔ ``kl_coef``; α ↔ ``alpha`` (``ref_mix_alpha`` in the trainer config).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ppo_lab.core import kl_estimate, masked_whiten

from .sequences import response_mask_from_lengths


def _finite_1d(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 1 or x.numel() == 0 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a non-empty float tensor [B], got {x.dtype} {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """§6, the Bradley–Terry model P(y_w ≻ y_l) = σ(r_w − r_l); its negative log-likelihood
    ``loss = −mean log σ(r_w − r_l)`` (``logsigmoid``: exact for large margins).

    r_w ↔ ``chosen_scores [B]``, r_l ↔ ``rejected_scores [B]``. ``stats``: ``accuracy`` (fraction
    with r_w > r_l) and ``margin`` (mean r_w − r_l), Python floats.
    """
    chosen_scores = _finite_1d(chosen_scores, "chosen_scores")
    rejected_scores = _finite_1d(rejected_scores, "rejected_scores")
    if chosen_scores.shape != rejected_scores.shape:
        raise ValueError(f"rejected_scores: shape {tuple(rejected_scores.shape)} does not match "
                         f"chosen_scores {tuple(chosen_scores.shape)}")
    margin = chosen_scores - rejected_scores  # (B,)
    loss = -F.logsigmoid(margin).mean()
    stats = {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}
    return loss, stats


def _check_token_args(logprobs, response_mask, response_lengths) -> tuple[torch.Tensor, torch.Tensor]:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs: expected [B, T], got shape {tuple(logprobs.shape)}")
    B, T = logprobs.shape
    response_lengths = torch.as_tensor(response_lengths, device=logprobs.device)
    if response_lengths.shape != (B,) or response_lengths.is_floating_point():
        raise ValueError(f"response_lengths: expected integers [{B}], got {response_lengths.dtype} "
                         f"{tuple(response_lengths.shape)}")
    if int(response_lengths.min()) < 1 or int(response_lengths.max()) > T:
        raise ValueError(f"response_lengths: every length must lie in [1, {T}], got {response_lengths.tolist()}")
    if tuple(response_mask.shape) != (B, T):
        raise ValueError(f"response_mask: expected shape {(B, T)}, got {tuple(response_mask.shape)}")
    keep = response_mask.bool()
    if not torch.equal(keep, response_mask_from_lengths(response_lengths, T)):
        raise ValueError("response_mask: disagrees with response_lengths (build it with response_mask_from_lengths)")
    return keep, response_lengths.long()


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      response_mask: torch.Tensor, response_lengths: torch.Tensor, kl_coef: float,
                      kl_kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """§6 (Ziegler et al. 2019, §2.2; Ouyang et al. 2022, Eq. 2): per-token rewards

        r_t = −β · KL_t + [t = last real token] · r(x, y),    KL_t = kl_estimate(log π, log π_ref)

    with KL_t the ``kl_kind`` estimate ("k1" = log π − log π_ref, "k3" = e^{−d} − 1 + d) of
    KL(π‖π_ref) from the sampled tokens. Shapes: ``scores [B]``, ``logprobs``, ``ref_logprobs``,
    ``response_mask [B, T]``, ``response_lengths [B]`` → ``(rewards [B, T], kl [B, T])``, both
    float32 and 0 outside the mask. The score lands on index ``length − 1`` — the EOS when the
    response ended with one, even when EOS == pad. Rewards are constants: inputs are detached.
    """
    keep, response_lengths = _check_token_args(logprobs, response_mask, response_lengths)
    scores = _finite_1d(scores, "scores").to(logprobs.device)
    if scores.shape != (logprobs.shape[0],):
        raise ValueError(f"scores: expected shape {(logprobs.shape[0],)}, got {tuple(scores.shape)}")
    if ref_logprobs.shape != logprobs.shape:
        raise ValueError(f"ref_logprobs: shape {tuple(ref_logprobs.shape)} does not match logprobs {tuple(logprobs.shape)}")
    if isinstance(kl_coef, bool) or not math.isfinite(float(kl_coef)) or float(kl_coef) < 0:
        raise ValueError(f"kl_coef: expected a finite number >= 0, got {kl_coef!r}")
    d = kl_estimate(logprobs.detach().float(), ref_logprobs.detach().float(), kind=kl_kind)  # (B, T)
    kl = torch.where(keep, d, 0.0)
    rewards = -float(kl_coef) * kl
    last = (response_lengths - 1)[:, None]  # (B, 1)
    rewards = rewards.scatter_add(1, last, scores.detach().float()[:, None])
    return rewards, kl


def mixture_ref_logprobs(sft_logprobs: torch.Tensor, old_logprobs: torch.Tensor, alpha: float) -> torch.Tensor:
    """§6, the mixture reference π_mix = α·π_SFT + (1 − α)·π_old, per token:

        log π_mix = logsumexp(log α + log π_SFT, log(1 − α) + log π_old)

    α ↔ ``alpha`` ∈ [0, 1]: α = 1 gives the SFT model's log-probs, α = 0 the old policy's (both
    exactly). Shapes alike → alike.
    """
    if isinstance(alpha, bool) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    if sft_logprobs.shape != old_logprobs.shape:
        raise ValueError(f"old_logprobs: shape {tuple(old_logprobs.shape)} does not match "
                         f"sft_logprobs {tuple(sft_logprobs.shape)}")
    alpha = float(alpha)
    if alpha == 1.0:
        return sft_logprobs
    if alpha == 0.0:
        return old_logprobs
    return torch.logaddexp(math.log(alpha) + sft_logprobs, math.log1p(-alpha) + old_logprobs)


def whiten_scores(scores: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scores normalised over the batch, ``(r − mean) / sqrt(var + 1e-8)`` (core ``masked_whiten``;
    ``shift_mean=False`` adds the mean back). ``[B]`` → ``[B]``; B ≥ 2."""
    scores = _finite_1d(scores, "scores")
    if scores.numel() < 2:
        raise ValueError(f"scores: whitening needs at least 2 scores, got {scores.numel()}")
    return masked_whiten(scores, None, shift_mean=shift_mean)


def clip_scores(scores: torch.Tensor, clip: float) -> torch.Tensor:
    """Scores clamped to ``[−clip, clip]`` (a reward model's outliers cannot dominate a batch)."""
    if isinstance(clip, bool) or not float(clip) > 0 or not math.isfinite(float(clip)):
        raise ValueError(f"clip: expected a finite number > 0, got {clip!r}")
    return _finite_1d(scores, "scores").clamp(-float(clip), float(clip))


def spread_reward_over_tokens(scores: torch.Tensor, response_mask: torch.Tensor,
                              response_lengths: torch.Tensor) -> torch.Tensor:
    """The mistaken attribution of errata 4, kept for the comparison in §6: every real response
    token gets ``r(x, y) / length`` and there is no KL term. ``[B]`` → ``[B, T]``, 0 on padding.

    Wrong for PPO-RLHF: the sum is the same, but a token's return now depends on how many tokens
    follow it, the policy is never pulled back towards π_ref, and the end of the response (the
    only place the reward model saw the whole text) carries no special signal.
    """
    scores = _finite_1d(scores, "scores")
    keep, response_lengths = _check_token_args(response_mask.float(), response_mask, response_lengths)
    return torch.where(keep, (scores.float() / response_lengths.float())[:, None], 0.0)
