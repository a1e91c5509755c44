"""Chapters 1–4 as pure tensor functions: tensors (+ mask) in, tensor (+ stats dict) out.

No environment, model, optimizer or ``torch.distributed`` in here, and no import of the rest of
``ppo_lab``. Toy-RL tensors are time-major ``[T, N]``; LLM tensors are ``[B, T]`` (transpose to
call the time-major functions). ``reference`` holds a slow loop twin of every function below.

Docstrings cite the book's equation labels ("Eq. (3.2)" is ``eq-3-2`` in chapter 3; a test
checks each exists) and sections ("§4.6" is ``sec-4-6``); chapters 2 and 7, not yet written,
are cited by section only.
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
