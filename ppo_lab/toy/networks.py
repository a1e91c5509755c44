"""Actor-critic MLPs for chapter 5: a categorical head for discrete actions, a diagonal Gaussian
head for continuous ones, with a separate or a shared trunk.

Shapes: ``obs`` is ``[B, obs_dim]``; discrete ``actions`` are ``[B]`` (int64), continuous ones
``[B, action_dim]``; ``logprobs``, ``entropy`` and ``values`` are ``[B]``.

Implementation details (numbered as in the book's implementation-details appendix, after
Huang et al. 2022, "The 37 Implementation Details of PPO"):

- detail 2: orthogonal weights, zero biases; gain √2 for hidden layers, 0.01 for the policy
  output (so the initial policy is close to uniform / its mean close to 0), 1 for the value
  output (Andrychowicz et al. 2021, §3.2 and Fig. 2).
- continuous detail 2: a state-independent log standard deviation, one learnable parameter per
  action dimension, as in the original PPO code (Schulman et al. 2017, §6.1).
- detail 13 / continuous detail 4: separate policy and value MLPs by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ppo_lab.core import entropy_from_logits, logprobs_from_logits

__all__ = ["ActorCritic", "gaussian_entropy", "gaussian_logprobs", "layer_init", "mlp"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def layer_init(layer: nn.Linear, gain: float = math.sqrt(2.0)) -> nn.Linear:
    """Detail 2: orthogonal weights with ``gain``, zero bias."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def gaussian_logprobs(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor):
    """log N(a; μ, diag σ²), summed over action dimensions: ``[B, A]`` → ``[B]``.

    log N = Σ_i [−½((a_i − μ_i)/σ_i)² − log σ_i − ½ log 2π].
    """
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
    """Entropy of N(μ, diag σ²), Σ_i (½ + ½ log 2π + log σ_i), broadcast to ``batch_shape``."""
    return (0.5 + _LOG_SQRT_2PI + log_std).sum(-1).expand(batch_shape)


def mlp(in_dim: int, hidden_sizes: Sequence[int]) -> nn.Sequential:
    """Linear → tanh blocks, each Linear with detail 2's init (gain √2): ``[B, in] → [B, H]``."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [layer_init(nn.Linear(in_dim, size)), nn.Tanh()]
        in_dim = size
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Policy π_θ(a|s) and value V(s) for a gymnasium ``Discrete`` or ``Box`` action space.

    Args:
        obs_dim: size of the (flat) observation.
        action_dim: number of actions (discrete) or action dimensions (continuous).
        continuous: Gaussian head if True, categorical head if False.
        hidden_sizes: widths of the hidden tanh layers.
        shared_trunk: one trunk feeding both heads (fewer parameters; the value loss then shapes
            the policy's features, which is why ``vf_coef`` matters more) instead of separate
            policy and value MLPs (CleanRL's and SB3's default for MLP policies).
        init_log_std: initial log σ of the Gaussian head (ignored for discrete actions).
        ortho_init: detail 2 (orthogonal weights with gains √2, 0.01 and 1, zero biases); False
            keeps torch's default ``nn.Linear`` initialisation instead (SB3's ``ortho_init``).
    """

    def __init__(self, obs_dim: int, action_dim: int, *, continuous: bool,
                 hidden_sizes: Sequence[int] = (64, 64), shared_trunk: bool = False,
                 init_log_std: float = 0.0, ortho_init: bool = True):
        super().__init__()
        if not hidden_sizes:
            raise ValueError("hidden_sizes: needs at least one hidden layer")
        self.continuous = continuous
        self.shared_trunk = shared_trunk
        if shared_trunk:
            self.trunk = mlp(obs_dim, hidden_sizes)  # [B, obs_dim] → [B, H], feeds both heads
        else:
            self.policy_net = mlp(obs_dim, hidden_sizes)
            self.value_net = mlp(obs_dim, hidden_sizes)
        self.policy_head = layer_init(nn.Linear(hidden_sizes[-1], action_dim), gain=0.01)
        self.value_head = layer_init(nn.Linear(hidden_sizes[-1], 1), gain=1.0)
        if continuous:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        if not ortho_init:  # the ablation of detail 2: torch's default initialisation
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()

    @classmethod
    def for_spaces(cls, observation_space: gym.Space, action_space: gym.Space,
                   **kwargs) -> ActorCritic:
        """Build the network that fits a single env's observation and action spaces."""
        if not isinstance(observation_space, gym.spaces.Box):
            raise ValueError(f"observation_space: expected a Box, got {observation_space}")
        obs_dim = int(np.prod(observation_space.shape))
        if isinstance(action_space, gym.spaces.Discrete):
            return cls(obs_dim, int(action_space.n), continuous=False, **kwargs)
        if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            return cls(obs_dim, action_space.shape[0], continuous=True, **kwargs)
        raise ValueError(f"action_space: expected Discrete or a 1-D Box, got {action_space}")

    def _policy_and_value(self, obs: torch.Tensor):
        """Policy output (logits or Gaussian mean) ``[B, A]`` and values ``[B]``."""
        if self.shared_trunk:
            policy_hidden = value_hidden = self.trunk(obs)  # [B, H]
        else:
            policy_hidden, value_hidden = self.policy_net(obs), self.value_net(obs)
        return self.policy_head(policy_hidden), self.value_head(value_hidden).squeeze(-1)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s): ``[B, obs_dim]`` → ``[B]``."""
        return self._policy_and_value(obs)[1]

    def act(self, obs: torch.Tensor):
        """Sample ``a ~ π(·|s)``: returns ``(actions, logprobs, values)``.

        Sampling draws from torch's global generator, so a seeded run is reproducible.
        """
        out, values = self._policy_and_value(obs)
        if self.continuous:
            actions = out + self.log_std.exp() * torch.randn_like(out)  # [B, A]
            return actions, gaussian_logprobs(out, self.log_std, actions), values
        actions = torch.distributions.Categorical(logits=out).sample()  # [B]
        return actions, logprobs_from_logits(out, actions), values

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor, *, entropy: bool = True):
        """``log π(a|s)``, entropy ``H[π(·|s)]`` (None unless ``entropy``) and V(s) for given actions —
        the PPO update's forward pass."""
        out, values = self._policy_and_value(obs)
        if self.continuous:
            logprobs = gaussian_logprobs(out, self.log_std, actions)
            ent = gaussian_entropy(self.log_std, out.shape[:-1]) if entropy else None
        else:
            logprobs = logprobs_from_logits(out, actions)
            ent = entropy_from_logits(out) if entropy else None
        return logprobs, ent, values
