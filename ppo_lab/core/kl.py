"""KL estimators from samples (§2) and the KL-coefficient controllers (§7).

Schulman, "Approximating KL Divergence" (2020, http://joschu.net/blog/kl-approx.html) for
k1/k2/k3; Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", §2.2 for
the adaptive controller. A common ``F.kl_div(log π, p_sft)`` computes KL(sft‖π), not
KL(π‖sft) (errata 5); these estimators are written for samples of π, the policy being trained.
"""

from __future__ import annotations

import torch

from . import _validate as check

KL_KINDS = ("k1", "k2", "k3")


def k3(d: torch.Tensor) -> torch.Tensor:
    """``exp(−d) − 1 + d``, written with ``expm1`` so it stays accurate (and ≥ 0) near d = 0."""
    return torch.expm1(-d) + d


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Eq. (2.11), §2.4: per-sample estimates of KL(π‖π_ref) from samples a ~ π. Shapes alike → alike.

    With d = log π(a) − log π_ref(a) (``logprobs − ref_logprobs``):

    - ``k1 = d``: unbiased, can be negative, high variance;
    - ``k2 = ½ d²``: biased, ≥ 0; as a loss its expected gradient is ∇_θ KL(π‖π_ref);
    - ``k3 = e^{−d} − 1 + d``: unbiased, ≥ 0, low variance when π ≈ π_ref.

    Unknown ``kind`` is a ``ValueError``. 16-bit inputs give float32 estimates.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind: expected one of {KL_KINDS}, got {kind!r}")
    logprobs, ref_logprobs = check.floats(logprobs=logprobs, ref_logprobs=ref_logprobs)
    d = logprobs - ref_logprobs
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d.square()
    return k3(d)


class _KLController:
    """β ↔ ``kl_coef`` as ``.value``; checkpointed by ``state_dict`` / ``load_state_dict``."""

    value: float

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = check.non_negative(state["value"], "value")


class FixedKLController(_KLController):
    """A constant KL coefficient β, with the adaptive controller's interface (§7)."""

    def __init__(self, kl_coef: float):
        self.value = check.non_negative(kl_coef, "kl_coef")

    def update(self, current_kl: float, n_steps: int) -> float:
        """Checks its arguments like the adaptive controller, changes nothing; returns β."""
        _update_args(current_kl, n_steps)
        return self.value


class AdaptiveKLController(_KLController):
    """§7 (Ziegler et al. 2019, §2.2): steer the measured KL towards ``target``.

    ``update`` does e = clip(current_kl / target − 1, −0.2, 0.2) and
    β ← β · (1 + e · n_steps / horizon). ``current_kl`` is the batch mean of each sequence's KL
    summed over its response tokens; ``n_steps`` is the number of sequences in the batch.
    Errata 12 shows a trainer that uses such a class without defining it.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value = check.positive(init_kl_coef, "init_kl_coef")
        self.target = check.positive(target, "target")
        self.horizon = check.positive(horizon, "horizon")

    def update(self, current_kl: float, n_steps: int) -> float:
        current_kl, n_steps = _update_args(current_kl, n_steps)
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def _update_args(current_kl, n_steps) -> tuple[float, int]:
    current_kl = check.number(current_kl, "current_kl")
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive integer, got {n_steps!r}")
    return current_kl, int(n_steps)
