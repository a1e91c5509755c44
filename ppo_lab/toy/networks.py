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

__all__ = ["ActorCritic", "TwinLinear", "gaussian_entropy", "gaussian_logprobs", "layer_init"]

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


class TwinLinear(nn.Module):
    """Two independent ``Linear(in_dim, out_dim)`` layers — slice 0 for the policy, slice 1 for
    the value function — applied by one batched matmul.

    Separate policy and value MLPs see the same input, so their layers can run side by side:
    ``[2, B, in] @ [2, in, out] + [2, 1, out] → [2, B, out]``. The maths is exactly that of two
    ``nn.Linear`` stacks; on a CPU, where a small MLP's time goes to per-operation overhead,
    half as many operations make a ``cartpole-zoo`` gradient step about 6% and a whole update
    about 5% cheaper (``benchmarks/call_overhead.py``, ``ppo_lab/results/call_overhead.json``).
    """

    def __init__(self, in_dim: int, out_dim: int, gain: float = math.sqrt(2.0)):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(2, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(2, 1, out_dim))
        with torch.no_grad():
            for i in range(2):  # detail 2 for each layer (W^T is what nn.Linear would hold)
                nn.init.orthogonal_(self.weight[i].T, gain)

    def reset_parameters(self) -> None:
        """Re-initialise each slice as ``nn.Linear.reset_parameters`` does (torch's default:
        U(−1/√in, 1/√in) for weights and biases) instead of detail 2."""
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        with torch.no_grad():
            for i in range(2):
                nn.init.kaiming_uniform_(self.weight[i].T, a=math.sqrt(5))
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # [B, in]: the same input for both
            x = x.expand(2, *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)  # [2, B, out]


class ActorCritic(nn.Module):
    """Policy π_θ(a|s) and value V(s) for a gymnasium ``Discrete`` or ``Box`` action space.

    Args:
        obs_dim: size of the (flat) observation.
        action_dim: number of actions (discrete) or action dimensions (continuous).
        continuous: Gaussian head if True, categorical head if False.
        hidden_sizes: widths of the hidden tanh layers.
        shared_trunk: one trunk feeding both heads (fewer parameters; the value loss then shapes
            the policy's features, which is why ``vf_coef`` matters more) instead of separate
            policy and value MLPs (CleanRL's and SB3's default for MLP policies), which are
            held as :class:`TwinLinear` layers.
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
        layers: list[nn.Module] = []
        for size in hidden_sizes:  # Linear → tanh blocks, detail 2 init with gain √2
            linear = layer_init(nn.Linear(obs_dim, size)) if shared_trunk else TwinLinear(obs_dim, size)
            layers += [linear, nn.Tanh()]
            obs_dim = size
        self.trunk = nn.Sequential(*layers)  # [B, H] shared, or [2, B, H] policy/value
        self.policy_head = layer_init(nn.Linear(obs_dim, action_dim), gain=0.01)
        self.value_head = layer_init(nn.Linear(obs_dim, 1), gain=1.0)
        if continuous:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        if not ortho_init:  # the ablation of detail 2: torch's default initialisation
            for module in self.modules():
                if isinstance(module, (nn.Linear, TwinLinear)):
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
        hidden = self.trunk(obs)  # [B, H] shared, or [2, B, H] policy / value
        policy_hidden, value_hidden = (hidden, hidden) if self.shared_trunk else hidden
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
