"""Rollouts from a gymnasium vector environment into a :class:`RolloutBatch` (§5, stage 1).

Two facts about gymnasium ≥ 1.0 vector envs shape this module.

**Autoreset on the next step.** When sub-env ``i`` ends an episode at step t (terminated or
truncated), the observation it returns at t is the episode's *final* observation, and at step
t + 1 it ignores the action, resets, and returns the first observation of the next episode with
reward 0 and both flags False. Step t + 1 is a *ghost* transition: no real (s, a, r, s') took
place. We store it (so tensors stay ``[T, N]``) with ``mask[t + 1] = False``, and the trainer
drops it from every loss and statistic.

**Truncation bootstraps, termination does not.** Because the final observation is returned at
the end step itself, the value computed at the ghost step t + 1 is exactly V(final obs), so
``next_values[t] = values[t + 1]`` holds at *every* step and is the right bootstrap on
truncation (Pardo et al. 2018, "Time Limits in Reinforcement Learning"); GAE ignores it where
``terminated[t]`` (the episode really ended, so V(s_{t+1}) = 0).

Vectorisation: ``gymnasium.make_vec`` picks an env's numpy-vectorised ``vector_entry_point``
when it has one (CartPole: all sub-envs stepped by one array operation), else ``sync``
(sub-envs stepped in a Python loop) or ``async`` (one subprocess each).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.wrappers.utils import RunningMeanStd
from gymnasium.wrappers.vector import (ClipReward, NormalizeObservation, NormalizeReward,
                                       RecordEpisodeStatistics, TransformObservation)

from ppo_lab.toy.networks import ActorCritic

__all__ = [
    "RolloutBatch",
    "RolloutState",
    "VectorizationMode",
    "collect_rollout",
    "load_vector_env_state",
    "make_vector_env",
    "reset_rollout_state",
    "vector_env_state",
]

VectorizationMode = Literal["auto", "vector_entry_point", "sync", "async"]


def make_vector_env(
    env_id: str,
    num_envs: int,
    *,
    vectorization_mode: VectorizationMode = "auto",
    normalize_obs: bool = False,
    normalize_reward: bool = False,
    gamma: float = 0.99,
    clip_obs: float | None = None,
    clip_reward: float | None = None,
    **env_kwargs: Any,
) -> VectorEnv:
    """``num_envs`` copies of ``env_id`` with episode statistics and optional normalisation.

    ``"auto"`` uses the env's ``vector_entry_point`` where it has one, else ``sync``. Wrappers,
    innermost first: ``RecordEpisodeStatistics`` (raw returns, reported as
    ``info["episode"]``), ``NormalizeObservation`` (running mean/var of observations),
    ``NormalizeReward`` (rewards divided by the running std of the discounted return —
    continuous detail 8 in Huang et al. 2022; it keeps the value targets of order 1).
    ``clip_obs`` / ``clip_reward`` clip what the normalisers return to [−c, c] (continuous
    detail 7 and continuous detail 9; CleanRL and SB3's ``VecNormalize`` use c = 10); None
    leaves it unclipped.
    """
    if vectorization_mode not in ("auto", "vector_entry_point", "sync", "async"):
        raise ValueError(f"vectorization_mode: unknown mode {vectorization_mode!r}")
    spec = gym.spec(env_id)
    missing = [m for m in MUJOCO_MODULES if not _installed(m)] \
        if str(spec.entry_point).startswith("gymnasium.envs.mujoco") else []
    if missing:
        raise gym.error.DependencyNotInstalled(
            f"env_id: {env_id!r} is a MuJoCo task and {', '.join(missing)} is not installed; "
            "install it with pip install 'ppo-lab[mujoco]' (gymnasium[mujoco])")
    vector_kwargs = {}
    if vectorization_mode in ("sync", "async") or (
        vectorization_mode == "auto" and spec.vector_entry_point is None
    ):
        vector_kwargs = {"autoreset_mode": AutoresetMode.NEXT_STEP}
    envs = gym.make_vec(
        env_id,
        num_envs,
        vectorization_mode=None if vectorization_mode == "auto" else vectorization_mode,
        vector_kwargs=vector_kwargs,
        **env_kwargs,
    )
    mode = envs.metadata.get("autoreset_mode")
    if mode != AutoresetMode.NEXT_STEP:
        envs.close()
        raise ValueError(f"env_id: {env_id!r} autoresets in mode {mode}; only NEXT_STEP is handled")
    envs = RecordEpisodeStatistics(envs)
    if normalize_obs:
        envs = NormalizeObservation(envs)
    if clip_obs is not None:
        envs = TransformObservation(envs, lambda obs: np.clip(obs, -clip_obs, clip_obs))
    if normalize_reward:
        envs = NormalizeReward(envs, gamma=gamma)
    if clip_reward is not None:
        envs = ClipReward(envs, -clip_reward, clip_reward)
    return envs


MUJOCO_MODULES = ("mujoco", "imageio")
"""What gymnasium's MuJoCo environments import (the simulator, and imageio for their renderer)."""


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or sys.modules[module] is None
        return False


@dataclass
class RolloutState:
    """Where the vector env stands between two rollouts (part of every checkpoint)."""

    obs: torch.Tensor
    """``[N, obs_dim]`` the observation each sub-env will act on next."""
    ghost: torch.Tensor
    """``[N]`` bool: the sub-env ended its episode on the previous step, so its next step is a
    ghost (autoreset) transition."""
    global_step: int = 0
    """Env steps taken so far, ``N`` per vector step (ghost steps included)."""


def reset_rollout_state(envs: VectorEnv, seed: int, device: torch.device | str) -> RolloutState:
    """Reset every sub-env (sub-env ``i`` is seeded with ``seed + i``) and start counting."""
    obs, _ = envs.reset(seed=seed)
    return RolloutState(
        obs=torch.as_tensor(obs, dtype=torch.float32, device=device),
        ghost=torch.zeros(envs.num_envs, dtype=torch.bool, device=device),
    )


@dataclass
class RolloutBatch:
    """T steps of N sub-envs, collected with the old policy π_θold. Time-major ``[T, N]``."""

    obs: torch.Tensor  # [T, N, obs_dim]
    actions: torch.Tensor  # [T, N] (discrete) or [T, N, A] (continuous, before clipping)
    logprobs: torch.Tensor  # [T, N] log π_old(a_t|s_t), becomes old_logprobs in the update
    values: torch.Tensor  # [T, N] V_old(s_t), becomes old_values in the update
    next_values: torch.Tensor  # [T, N] V(s_{t+1}); V(final obs) at a truncation
    rewards: torch.Tensor  # [T, N] (normalised if reward normalisation is on)
    terminated: torch.Tensor  # [T, N] bool: the MDP reached a terminal state
    truncated: torch.Tensor  # [T, N] bool: cut by a time limit (bootstrap)
    mask: torch.Tensor  # [T, N] bool: True = real transition, False = ghost (autoreset) step
    episode_returns: list[float] = field(default_factory=list)
    """Raw (un-normalised) returns of the episodes that ended during the rollout."""
    episode_lengths: list[int] = field(default_factory=list)
    episode_steps: list[int] = field(default_factory=list)
    """``global_step`` at the vector step where each episode ended."""

    @property
    def episode_ends(self) -> torch.Tensor:
        """``terminated | truncated`` — where GAE must stop accumulating."""
        return self.terminated | self.truncated


def collect_rollout(envs: VectorEnv, agent: ActorCritic, state: RolloutState,
                    num_steps: int) -> RolloutBatch:
    """Step ``envs`` ``num_steps`` times with actions sampled from ``agent``; advance ``state``.

    Gaussian actions are stored as sampled (their log-probability is what the ratio needs) and
    clipped to the action bounds only on the way to the env (continuous detail 5 in Huang et al.
    2022). What the env returns stays in numpy buffers until the rollout ends: one conversion
    to torch per rollout instead of several per step.
    """
    device = state.obs.device
    T, N = num_steps, envs.num_envs
    obs = torch.zeros((T, *state.obs.shape), device=device)  # [T, N, obs_dim]
    rewards = np.zeros((T, N), dtype=np.float32)
    terminated, truncated = np.zeros((T, N), dtype=bool), np.zeros((T, N), dtype=bool)
    actions, logprobs, values = [], [], []
    bounds = None
    if isinstance(envs.single_action_space, gym.spaces.Box):
        bounds = (envs.single_action_space.low, envs.single_action_space.high)
    episode_returns, episode_lengths, episode_steps = [], [], []
    with torch.inference_mode():
        for t in range(T):
            obs[t] = state.obs
            action, logprob, value = agent.act(state.obs)
            env_action = action.cpu().numpy()
            if bounds is not None:
                env_action = np.clip(env_action, *bounds)
            next_obs, rewards[t], terminated[t], truncated[t], info = envs.step(env_action)
            state.global_step += N
            actions.append(action)
            logprobs.append(logprob)
            values.append(value)
            state.obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
            if "_episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    episode_returns.append(float(info["episode"]["r"][i]))
                    episode_lengths.append(int(info["episode"]["l"][i]))
                    episode_steps.append(state.global_step)
        # values[t + 1] is V(s_{t+1}) — V(final obs) after an episode end, see the module doc;
        # after the last step, bootstrap from the observation the next rollout starts with.
        values.append(agent.get_value(state.obs))
    values = torch.stack(values)  # [T + 1, N]
    # Step t + 1 is a ghost exactly when step t ended an episode (step 0: the previous rollout's
    # last step, carried in ``state.ghost``).
    ends = torch.from_numpy(terminated | truncated).to(device)  # [T, N]
    mask = ~torch.cat([state.ghost.unsqueeze(0), ends[:-1]])  # [T, N]
    state.ghost = ends[-1].clone()
    return RolloutBatch(
        obs=obs,
        actions=torch.stack(actions),
        logprobs=torch.stack(logprobs),
        values=values[:-1],
        next_values=values[1:],
        rewards=torch.from_numpy(rewards).to(device),
        terminated=torch.from_numpy(terminated).to(device),
        truncated=torch.from_numpy(truncated).to(device),
        mask=mask,
        episode_returns=episode_returns,
        episode_lengths=episode_lengths,
        episode_steps=episode_steps,
    )


# --- env state for checkpoints ---------------------------------------------------------------
# A resumed run must continue each sub-env mid-episode exactly where it stood, with the same
# random generator. Gymnasium envs have no state_dict, so we record the plain state every env
# and wrapper keeps in its attributes (numpy arrays and scalars, random generators, running
# mean/std), walking the wrapper chain (``.env``) and a sync vector env's sub-envs (``.envs``).
# Everything is stored as tensors and Python scalars, loadable with ``weights_only=True``.


def _node_state(obj: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"__class__": type(obj).__qualname__}
    for name, value in vars(obj).items():
        if name == "env" and isinstance(value, (gym.Env, VectorEnv)):
            state[name] = ("node", _node_state(value))
        elif name == "envs" and isinstance(value, list):
            state[name] = ("nodes", [_node_state(env) for env in value])
        elif isinstance(value, RunningMeanStd):
            state[name] = ("node", _node_state(value))
        elif isinstance(value, np.random.Generator):
            state[name] = ("generator", value.bit_generator.state)
        elif isinstance(value, np.ndarray) and value.dtype != object:
            state[name] = ("array", torch.from_numpy(value.copy()))
        elif isinstance(value, np.generic):
            state[name] = ("scalar", torch.from_numpy(np.asarray(value).copy()))
        elif value is None or isinstance(value, (bool, int, float)):
            state[name] = ("python", value)
    return state


def _load_node_state(obj: Any, state: dict[str, Any]) -> None:
    if state["__class__"] != type(obj).__qualname__:
        raise ValueError(
            f"env_state: checkpoint holds a {state['__class__']}, env is a {type(obj).__qualname__}"
        )
    for name, (kind, value) in ((k, v) for k, v in state.items() if k != "__class__"):
        if kind == "node":
            _load_node_state(getattr(obj, name), value)
        elif kind == "nodes":
            for env, env_state in zip(getattr(obj, name), value, strict=True):
                _load_node_state(env, env_state)
        elif kind == "generator":
            getattr(obj, name).bit_generator.state = value
        elif kind == "array":
            setattr(obj, name, value.numpy().copy())
        elif kind == "scalar":
            setattr(obj, name, value.numpy()[()])
        else:
            setattr(obj, name, value)


def vector_env_state(envs: VectorEnv) -> dict[str, Any]:
    """Everything needed to continue ``envs`` exactly (sync or numpy-vectorised envs)."""
    inner = envs.unwrapped
    if isinstance(inner, gym.vector.AsyncVectorEnv):
        raise ValueError("vectorization_mode: 'async' sub-envs live in other processes; their "
                         "state cannot be checkpointed (use 'sync')")
    return _node_state(envs)


def load_vector_env_state(envs: VectorEnv, state: dict[str, Any]) -> None:
    """Restore what :func:`vector_env_state` recorded into a freshly built, identical ``envs``."""
    _load_node_state(envs, state)
