"""Chapters 1–4 as pure tensor functions: tensors (+ mask) in, tensor (+ stats dict) out.

No environment, model, optimizer or ``torch.distributed`` in here, and no import of the rest of
``ppo_lab``. Toy-RL tensors are time-major ``[T, N]``; LLM tensors are ``[B, T]`` (transpose to
call the time-major functions). ``reference`` holds a slow loop twin of every function below.

Equation numbers cited in the docstrings (the chapters label their equations to match):
(1.3) REINFORCE estimator, (1.4) reward-to-go, (1.5) baseline — ``policy_gradient``, ``returns``;
(2.1) ratio, (2.2) L^CPI, (2.3) KL estimators k1/k2/k3 — ``importance``, ``kl``;
(3.1) L^CLIP, (3.2) value clipping, (3.3) entropy, (3.4) L^{CLIP+VF+S} — ``clipping``, ``losses``;
(4.1) TD residual, (4.2) GAE recursion, (4.3) λ-return — ``gae``; (7.2) adaptive KL — ``kl``.
"""

from .clipping import clipped_surrogate_loss, clipped_value_loss
from .gae import gae_advantages
from .importance import cpi_surrogate_loss, trajectory_ratio
from .kl import AdaptiveKLController, FixedKLController, kl_estimate
from .losses import ppo_loss
from .masked import explained_variance, masked_mean, masked_var, masked_whiten
from .policy_gradient import entropy_from_logits, logprobs_from_logits, reinforce_loss
from .returns import discounted_returns

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "clipped_surrogate_loss",
    "clipped_value_loss",
    "cpi_surrogate_loss",
    "discounted_returns",
    "entropy_from_logits",
    "explained_variance",
    "gae_advantages",
    "kl_estimate",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "ppo_loss",
    "reinforce_loss",
    "trajectory_ratio",
]
