"""PPO for gymnasium tasks, §5: the algorithm box as one readable loop.

    for update = 1, 2, …:
      1. roll out π_θold for T steps in N parallel envs           (rollout.collect_rollout)
      2. compute advantages Â_t with GAE(γ, λ) and returns        (core.gae_advantages)
      3. for K epochs, for each minibatch of the T·N transitions:
           minimise L^{CLIP+VF+S} = policy_loss + c₁·value_loss − c₂·entropy  (core.ppo_loss)
           with normalised advantages, clipped gradients, and an early stop on KL
      4. anneal the learning rate (and ε); log; checkpoint

Every switch the chapter and the implementation-details appendix ablate is a field of
:class:`PPOConfig`. Implementation details are numbered as in that appendix, after Huang et al.
2022, "The 37 Implementation Details of Proximal Policy Optimization" (ICLR blog track); the
loss itself is shared with the LLM trainer.
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ppo_lab import metrics
from ppo_lab.checkpoint import (get_rng_state, load_checkpoint, save_checkpoint, seed_everything,
                                set_rng_state)
from ppo_lab.config import ConfigBase, check_field, derive_batch_sizes
from ppo_lab.core import explained_variance, gae_advantages, kl_estimate, masked_whiten, ppo_loss
from ppo_lab.scale.flat import FlatParameters
from ppo_lab.toy.networks import ActorCritic
from ppo_lab.toy.rollout import (RolloutBatch, VectorizationMode, collect_rollout,
                                 load_vector_env_state, make_vector_env, reset_rollout_state,
                                 vector_env_state)

__all__ = ["PRESETS", "PPOConfig", "TrainResult", "adapt_kl_coef", "train"]

# clip(ρ, 1 − ε, 1 + ε) = ρ for every ratio a run can reach, so L^CLIP becomes L^CPI (Eq. (2.8)).
NO_CLIP = 1e9
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class PPOConfig(ConfigBase):
    """PPO on a gymnasium task. Every field is a flag of ``ppo-lab train``."""

    env_id: str = "CartPole-v1"
    """Gymnasium environment id."""
    seed: int = 1
    """Seeds torch, numpy, Python and the vector env."""
    total_timesteps: int = 100_000
    """Env steps to train for (N per vector step, autoreset steps included)."""
    num_envs: int = 8
    """N: parallel sub-environments."""
    num_steps: int = 128
    """T: steps per sub-env per rollout; batch_size = num_envs * num_steps."""
    num_minibatches: int = 4
    """Minibatches per epoch; must divide batch_size."""
    ppo_epochs: int = 4
    """K: passes over each rollout."""
    learning_rate: float = 2.5e-4
    """Adam step size (the start value when annealed)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over training (detail 4)."""
    adam_eps: float = 1e-5
    """Adam epsilon (detail 3: 1e-5 as in the original PPO code, not torch's 1e-8)."""
    gamma: float = 0.99
    """γ: discount factor."""
    gae_lambda: float = 0.95
    """λ: GAE bias–variance trade-off (0 = one-step TD, 1 = Monte-Carlo return)."""
    clip_eps: float | None = 0.2
    """ε: policy ratio clip range; None turns clipping off (plain L^CPI)."""
    anneal_clip: bool = False
    """Decay clip_eps linearly to 0 along with the learning rate (SB3's ``lin_`` clip ranges)."""
    vf_clip_eps: float | None = None
    """ε_v: value clipping around the old values (detail 9); None turns it off."""
    norm_adv: bool = True
    """Normalise advantages per minibatch over real transitions (detail 7)."""
    norm_adv_per_minibatch: bool = True
    """With norm_adv: whiten each minibatch (CleanRL) — or, False, the whole batch once (SB3)."""
    ent_coef: float = 0.0
    """c₂: entropy bonus coefficient (detail 10)."""
    vf_coef: float = 0.5
    """c₁: value loss coefficient; the value loss is ½·mean((V − R)²)."""
    max_grad_norm: float | None = 0.5
    """Clip the global gradient norm to this (detail 11); None turns it off."""
    target_kl: float | None = None
    """Stop the epochs early once a minibatch's approx KL(π_old‖π_θ) exceeds this; None = never."""
    kl_penalty: bool = False
    """Add β·KL(π_old‖π_θ) to the loss: L^KLPEN (Schulman et al. 2017, §4); with clip_eps None,
    the paper's KL-penalty PPO."""
    kl_coef: float = 1.0
    """β: the KL coefficient of kl_penalty (its start value when kl_target is set; the paper's 1)."""
    kl_target: float | None = 0.01
    """d_targ: after each update, β × 2 if KL > 1.5·d_targ, β / 2 if KL < d_targ / 1.5 (§4 of
    the PPO paper); None keeps β fixed. Not target_kl, which stops the epochs early."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Widths of the tanh hidden layers of each MLP."""
    shared_trunk: bool = False
    """One trunk for policy and value instead of two separate MLPs."""
    init_log_std: float = 0.0
    """Initial log σ of the Gaussian policy (continuous actions only)."""
    ortho_init: bool = True
    """Orthogonal initialisation with gains √2 / 0.01 / 1 (detail 2); False = torch's default."""
    normalize_obs: bool = False
    """Normalise observations by their running mean and std (continuous detail 6)."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return (continuous detail 8)."""
    clip_obs: float | None = None
    """Clip (normalised) observations to [−c, c] (continuous detail 7; CleanRL: 10); None = off."""
    clip_reward: float | None = None
    """Clip (scaled) rewards to [−c, c] (continuous detail 9; CleanRL: 10); None = off."""
    vectorization_mode: VectorizationMode = "auto"
    """How sub-envs are stepped: auto (the env's numpy-vectorised version if any, else sync)."""
    device: str = "cpu"
    """torch device for the networks and the update, e.g. cpu or cuda."""
    torch_threads: int = 1
    """torch intra-op threads (1 is fastest for these small MLPs); 0 leaves torch's default."""
    run_dir: str | None = None
    """Directory for checkpoints (and, from the CLI, metrics and plots)."""
    checkpoint_every: int = 0
    """Write run_dir/checkpoint.pt every this many updates and at the end; 0 = never."""
    resume: bool = False
    """Continue from run_dir/checkpoint.pt if it exists (bit-exact on CPU)."""

    def validate(self) -> None:
        self._positive_int("total_timesteps", "num_envs", "num_steps", "num_minibatches",
                           "ppo_epochs")
        self._non_negative_int("seed", "torch_threads", "checkpoint_every")
        self._number("learning_rate", low=0.0, low_open=True)
        self._number("adam_eps", low=0.0, low_open=True)
        self._number("gamma", low=0.0, high=1.0)
        self._number("gae_lambda", low=0.0, high=1.0)
        for name in ("clip_eps", "vf_clip_eps", "max_grad_norm", "target_kl", "kl_target",
                     "clip_obs", "clip_reward"):
            self._number(name, low=0.0, low_open=True, optional=True)
        self._number("ent_coef", low=0.0)
        self._number("vf_coef", low=0.0)
        self._number("kl_coef", low=0.0, low_open=True)
        self._number("init_log_std")
        check_field(len(self.hidden_sizes) > 0 and all(h > 0 for h in self.hidden_sizes),
                    "hidden_sizes", f"needs positive widths, got {self.hidden_sizes}")
        check_field(self.run_dir is not None or not (self.checkpoint_every or self.resume),
                    "run_dir", "is needed for checkpoint_every > 0 or resume")
        check_field(self.vectorization_mode != "async" or not (self.checkpoint_every or self.resume),
                    "vectorization_mode", "'async' sub-envs live in other processes, so their "
                    "state cannot be checkpointed; use 'sync' or 'auto'")
        derive_batch_sizes(num_envs=self.num_envs, num_steps=self.num_steps,
                           num_minibatches=self.num_minibatches,
                           total_timesteps=self.total_timesteps)


# Fields a resumed run may change without changing the result (on CPU).
_RESUMABLE = {"run_dir", "checkpoint_every", "resume", "device", "torch_threads"}

PRESETS: dict[str, tuple[str, PPOConfig]] = {
    "cartpole": ("CartPole-v1, tuned for wall-clock time on one CPU thread", PPOConfig(
        # Tuned from the zoo set below for seconds, not samples: 16 envs x 32 steps (the
        # numpy-vectorised env makes more envs nearly free), 2 minibatches x 6 epochs (12
        # gradient steps per 512 transitions instead of 20 per 256: the update, not the env,
        # is what costs time) and a 7x larger learning rate to make up for the fewer steps.
        env_id="CartPole-v1", total_timesteps=100_000, num_envs=16, num_steps=32,
        num_minibatches=2, ppo_epochs=6, learning_rate=7e-3, gamma=0.98, gae_lambda=0.8)),
    "cartpole-zoo": ("CartPole-v1 with the rl-baselines3-zoo hyperparameters of SB3's PPO",
                     PPOConfig(
        # rl-zoo hyperparams/ppo.yml: n_envs 8, n_steps 32, batch_size 256, n_epochs 20,
        # gamma 0.98, gae_lambda 0.8, lin_1e-3, lin_0.2, ent_coef 0; SB3 defaults otherwise.
        # SB3's value loss is mean((V − R)²) with vf_coef 0.5; ours carries ½, hence 1.0.
        env_id="CartPole-v1", total_timesteps=200_000, num_envs=8, num_steps=32,
        num_minibatches=1, ppo_epochs=20, learning_rate=1e-3, gamma=0.98, gae_lambda=0.8,
        clip_eps=0.2, anneal_clip=True, ent_coef=0.0, vf_coef=1.0, max_grad_norm=0.5)),
    "pendulum": ("Pendulum-v1 (continuous torque), normalised observations and rewards",
                 PPOConfig(
        # The zoo's Pendulum set without gSDE: γ = 0.9 (the swing-up pays off within a few
        # dozen steps; a longer horizon only adds variance), 4 envs x 512 steps, 10 epochs of
        # 64-transition minibatches, and normalised observations and rewards (the raw reward
        # reaches −16 per step). Reaches a mean return of −400 in ~3×10⁴ steps.
        env_id="Pendulum-v1", total_timesteps=300_000, num_envs=4, num_steps=512,
        num_minibatches=32, ppo_epochs=10, learning_rate=1e-3, gamma=0.9, gae_lambda=0.95,
        normalize_obs=True, normalize_reward=True)),
    "cartpole-klpen": ("CartPole-v1, the tuned preset with PPO's KL penalty instead of clipping",
                       PPOConfig(
        # L^KLPEN (PPO paper §4) in place of L^CLIP: no ratio clipping, β·KL(π_old‖π_θ) in the
        # loss, β adapted towards d_targ = 0.01 after each update (the paper's best target;
        # initial β = 1). Everything else as in "cartpole".
        env_id="CartPole-v1", total_timesteps=100_000, num_envs=16, num_steps=32,
        num_minibatches=2, ppo_epochs=6, learning_rate=7e-3, gamma=0.98, gae_lambda=0.8,
        clip_eps=None, kl_penalty=True, kl_coef=1.0, kl_target=0.01)),
    "hopper": ("Hopper-v4 (MuJoCo: pip install 'ppo-lab[mujoco]') with CleanRL's "
               "ppo_continuous_action.py settings", PPOConfig(
        # CleanRL ppo_continuous_action.py: 1 env x 2048 steps, 32 minibatches x 10 epochs,
        # learning rate 3e-4 annealed, γ 0.99, λ 0.95, ε 0.2, value clipping 0.2 (clip_vloss),
        # no entropy bonus, value coefficient 0.5 on a ½-squared error (as here), gradient norm
        # 0.5, Adam eps 1e-5; observations normalised and clipped to ±10, rewards scaled by the
        # discounted return's std and clipped to ±10. One difference remains: CleanRL treats a
        # time-limit truncation as a termination; ppo_lab bootstraps it (§4.5).
        env_id="Hopper-v4", total_timesteps=1_000_000, num_envs=1, num_steps=2048,
        num_minibatches=32, ppo_epochs=10, learning_rate=3e-4, gamma=0.99, gae_lambda=0.95,
        clip_eps=0.2, vf_clip_eps=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
        normalize_obs=True, clip_obs=10.0, normalize_reward=True, clip_reward=10.0)),
}


def adapt_kl_coef(kl_coef: float, kl: float, kl_target: float) -> float:
    """The adaptive KL coefficient of the PPO paper (Schulman et al. 2017, §4): β ↔ ``kl_coef``,
    d ↔ ``kl`` (the KL(π_old‖π_θ) an update reached), d_targ ↔ ``kl_target``.

        d < d_targ / 1.5  →  β ← β / 2;    d > 1.5 · d_targ  →  β ← 2β;    otherwise β stays.

    The paper's 1.5 and 2 are heuristics it found the algorithm insensitive to. (The language
    model trainer of §7 uses Ziegler et al.'s proportional controller,
    ``ppo_lab.core.AdaptiveKLController``, instead.)
    """
    if kl < kl_target / 1.5:
        return kl_coef / 2.0
    if kl > 1.5 * kl_target:
        return kl_coef * 2.0
    return kl_coef


@dataclass
class TrainResult:
    """What :func:`train` returns (and the CLI writes to the run directory)."""

    agent: ActorCritic
    config: PPOConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    """One row of metrics per update (keys from ``ppo_lab.metrics``)."""
    episodes: list[dict[str, float]] = field(default_factory=list)
    """Every finished episode: global_step, time (s since start), return, length."""


def train(config: PPOConfig, *, progress: bool = False) -> TrainResult:
    """Train PPO as configured; ``progress`` shows a tqdm bar (stderr). Deterministic on CPU."""
    start_time = time.perf_counter()
    sizes = derive_batch_sizes(num_envs=config.num_envs, num_steps=config.num_steps,
                               num_minibatches=config.num_minibatches,
                               total_timesteps=config.total_timesteps)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    seed_everything(config.seed)
    device = torch.device(config.device)

    # 0. The vector env, the actor-critic, Adam and the linear LR schedule (detail 4).
    envs = make_vector_env(config.env_id, config.num_envs,
                           vectorization_mode=config.vectorization_mode,
                           normalize_obs=config.normalize_obs,
                           normalize_reward=config.normalize_reward, gamma=config.gamma,
                           clip_obs=config.clip_obs, clip_reward=config.clip_reward)
    agent = ActorCritic.for_spaces(envs.single_observation_space, envs.single_action_space,
                                   hidden_sizes=config.hidden_sizes,
                                   shared_trunk=config.shared_trunk,
                                   init_log_std=config.init_log_std,
                                   ortho_init=config.ortho_init).to(device)
    # All parameters and gradients as views of one buffer each: Adam, clipping and zeroing are
    # then one kernel each, not a Python loop over tensors (ppo_lab.scale.flat).
    flat = FlatParameters(agent)
    optimizer = torch.optim.Adam([flat.param], lr=config.learning_rate, eps=config.adam_eps,
                                 fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: 1.0 - k / sizes.num_updates if config.anneal_lr else 1.0)
    state = reset_rollout_state(envs, config.seed, device)
    result = TrainResult(agent, config)
    first_update = 0
    kl_coef = config.kl_coef  # β of the KL penalty (kl_penalty), adapted after each update
    checkpoint_path = Path(config.run_dir or ".") / CHECKPOINT_NAME
    if config.resume and checkpoint_path.exists():
        first_update, elapsed, kl_coef = _restore(checkpoint_path, config, agent, optimizer,
                                                  scheduler, envs, state, result)
        start_time -= elapsed
    bar = tqdm(total=sizes.num_updates * sizes.batch_size, initial=state.global_step,
               unit="step", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    for update in range(first_update, sizes.num_updates):
        update_start, step_start = time.perf_counter(), state.global_step
        frac = 1.0 - update / sizes.num_updates  # 1 → 1/num_updates
        clip_eps = NO_CLIP if config.clip_eps is None else config.clip_eps
        if config.anneal_clip and config.clip_eps is not None:
            clip_eps *= frac

        # 1. Roll out π_θold: T steps in each of the N envs. Ghost (autoreset) steps get mask False.
        batch = collect_rollout(envs, agent, state, config.num_steps)

        # 2. GAE(γ, λ) and returns, Eq. (4.9): bootstrap through truncations, not
        #    through terminations, and never across an episode end (detail 5).
        advantages, returns = gae_advantages(
            rewards=batch.rewards, values=batch.values, next_values=batch.next_values,
            terminated=batch.terminated, episode_ends=batch.episode_ends,
            gamma=config.gamma, gae_lambda=config.gae_lambda)  # [T, N] each

        # 3. K epochs of minibatch SGD on L^{CLIP+VF+S}, Eqs. (3.11)–(3.12).
        lr = optimizer.param_groups[0]["lr"]
        stats, epochs_done = _optimise(agent, flat, optimizer, batch, advantages, returns,
                                       config, clip_eps, kl_coef=kl_coef)
        kl_stats = {"objective/kl_coef": kl_coef} if config.kl_penalty else {}

        # 4. Adapt β of the KL penalty (PPO paper §4), anneal the learning rate, log, checkpoint.
        if config.kl_penalty and config.kl_target is not None:
            kl_coef = adapt_kl_coef(kl_coef, _kl_after_update(agent, batch), config.kl_target)
        scheduler.step()
        now = time.perf_counter()
        for step, ret, length in zip(batch.episode_steps, batch.episode_returns,
                                     batch.episode_lengths):
            result.episodes.append({"global_step": step, "time": now - start_time,
                                    "return": ret, "length": length})
        result.history.append({
            "update": update + 1, "global_step": state.global_step, "time": now - start_time,
            "sps": (state.global_step - step_start) / (now - update_start),
            "clip_eps": config.clip_eps and clip_eps, "epochs": epochs_done,
            **metrics.check_keys({
                "env/episodic_return": _mean_or_none(batch.episode_returns),
                "env/episode_length": _mean_or_none(batch.episode_lengths),
                "value/explained_variance": _mean_or_none(
                    [float(explained_variance(batch.values, returns, mask=batch.mask))]),
                "optim/learning_rate": lr,
                **stats,
                **kl_stats,
            }),
        })
        bar.update(state.global_step - bar.n)
        if result.episodes:
            bar.set_postfix(ret=f"{result.episodes[-1]['return']:.1f}", refresh=False)
        if config.checkpoint_every and ((update + 1) % config.checkpoint_every == 0
                                        or update + 1 == sizes.num_updates):
            _save(checkpoint_path, update + 1, now - start_time, config, agent, optimizer,
                  scheduler, envs, state, result, kl_coef)
    bar.close()
    envs.close()
    return result


def _optimise(agent: ActorCritic, flat: FlatParameters, optimizer: torch.optim.Optimizer,
              batch: RolloutBatch, advantages: torch.Tensor, returns: torch.Tensor,
              config: PPOConfig, clip_eps: float,
              kl_coef: float | None = None) -> tuple[dict[str, float], int]:
    """Stage 3: ``ppo_epochs`` passes of ``num_minibatches`` shuffled minibatches of the real
    transitions (Eq. (5.1)); ``optimizer`` steps ``flat.param``. With ``config.kl_penalty`` the
    loss carries β·KL(π_old‖π_θ), β ↔ ``kl_coef`` (default ``config.kl_coef``).

    Returns the mean loss statistics and the number of epochs completed (fewer than
    ``ppo_epochs`` after an early stop on KL).
    """
    # Flatten [T, N] → [T·N] (after GAE, transitions are independent samples) and keep only real
    # transitions: ghost (autoreset) steps are dropped from every minibatch, hence every mean.
    real = batch.mask.flatten().nonzero().squeeze(1)  # [M], M ≤ T·N
    obs, actions = batch.obs.flatten(0, 1)[real], batch.actions.flatten(0, 1)[real]
    old_logprobs, old_values = batch.logprobs.flatten()[real], batch.values.flatten()[real]
    advantages, returns = advantages.flatten()[real], returns.flatten()[real]
    # detail 7: per-minibatch advantage normalisation (Andrychowicz et al. 2021). When one
    # minibatch is the whole batch (the zoo's CartPole set), it is the same every epoch: do it
    # once — as for whole-batch normalisation (norm_adv_per_minibatch=False, SB3's RolloutBuffer).
    whiten = config.norm_adv
    if whiten and (config.num_minibatches == 1 or not config.norm_adv_per_minibatch):
        advantages, whiten = masked_whiten(advantages, None), False
    kl_coef = config.kl_coef if kl_coef is None else kl_coef
    totals: dict[str, float] = defaultdict(float)
    num_minibatches, epochs_done, stop = 0, 0, False
    columns = (obs, actions, old_logprobs, old_values, advantages, returns)
    for _epoch in range(config.ppo_epochs):
        for idx in _minibatches(len(real), config.num_minibatches, real.device):
            mb_obs, mb_actions, mb_old_logprobs, mb_old_values, mb_advantages, mb_returns = (
                columns if idx is None else (column[idx] for column in columns))
            # The entropy term is only built when it is in the loss; it is logged below.
            logprobs, entropy, values = agent.evaluate(mb_obs, mb_actions,
                                                       entropy=config.ent_coef > 0)
            if whiten:
                mb_advantages = masked_whiten(mb_advantages, None)
            # L^KLPEN's KL(π_old‖π_θ): k3 of Eq. (2.11) on the samples a ~ π_old, the
            # per-sample (ρ − 1) − log ρ; zero at the first step, where π_θ = π_old.
            kl = kl_estimate(mb_old_logprobs, logprobs, kind="k3") if config.kl_penalty else None
            loss, stats = ppo_loss(
                logprobs=logprobs, old_logprobs=mb_old_logprobs, advantages=mb_advantages,
                values=values, old_values=mb_old_values, returns=mb_returns, entropy=entropy,
                clip_eps=clip_eps, vf_clip_eps=config.vf_clip_eps, vf_coef=config.vf_coef,
                ent_coef=config.ent_coef, kl=kl, kl_coef=kl_coef)
            # Early stop (SB3's target_kl): the policy already moved too far from π_old, so
            # this step — and the rest of the update — is skipped.
            if config.target_kl is not None and stats["approx_kl"] > config.target_kl:
                stop = True
                break
            flat.zero_grad()
            loss.backward()
            grad_norm = flat.clip_grad_norm_(config.max_grad_norm)  # detail 11 (None: measure)
            optimizer.step()
            for key, value in stats.items():
                totals[key] += value
            totals["grad_norm"] += float(grad_norm)
            num_minibatches += 1
        if stop:
            break
        epochs_done += 1
    if "entropy" not in totals:  # not in the loss (ent_coef = 0): measure it once, for the log
        with torch.no_grad():
            totals["entropy"] = float(agent.evaluate(obs, actions)[1].mean()) * num_minibatches
    return _mean_stats(totals, num_minibatches), epochs_done


def _kl_after_update(agent: ActorCritic, batch: RolloutBatch) -> float:
    """d of the PPO paper's β rule (§4): the k3 estimate of KL(π_old‖π_θ) over the rollout's
    real transitions, with θ after the update."""
    with torch.no_grad():
        logprobs = agent.evaluate(batch.obs[batch.mask], batch.actions[batch.mask],
                                  entropy=False)[0]  # [M]
    return float(kl_estimate(batch.logprobs[batch.mask], logprobs, kind="k3").mean())


def _minibatches(num: int, num_minibatches: int, device: torch.device) -> list:
    """One epoch's minibatches of ``range(num)``, the indices of a rollout's real transitions.

    Ghost steps leave ``num ≤ B`` real transitions, which ``num_minibatches`` (M) need not
    divide: a fresh shuffle is split into M index sets whose sizes differ by at most one
    (``torch.tensor_split``), so every real transition is used once per epoch and each epoch
    takes M gradient steps, as Eq. (5.1) counts them. With M = 1 a shuffle would only reorder
    sums: the whole batch is taken as it is (``None``: the batch tensors themselves, not an
    indexed copy). Fewer than 2 transitions per minibatch (too few to whiten) is a ValueError.
    """
    if num < 2 * num_minibatches:
        raise ValueError(f"num_minibatches: {num} real transitions in this rollout cannot fill "
                         f"{num_minibatches} minibatches of at least 2; use fewer minibatches "
                         "or a larger num_envs * num_steps")
    if num_minibatches == 1:
        return [None]
    return list(torch.randperm(num, device=device).tensor_split(num_minibatches))


def _mean_stats(totals: dict[str, float], num_minibatches: int) -> dict[str, float]:
    """Means over the minibatches that took a step, under their log keys."""
    means = {k: v / max(num_minibatches, 1) for k, v in totals.items()}
    return {"optim/grad_norm": means.pop("grad_norm", 0.0), **metrics.loss_metrics(means)}


def _mean_or_none(xs: list[float]) -> float | None:
    """Mean, or None (empty in the CSV, null in the JSON) where there is nothing to average."""
    mean = sum(xs) / len(xs) if xs else math.nan
    return mean if math.isfinite(mean) else None


def _save(path, update, elapsed, config, agent, optimizer, scheduler, envs, state, result, kl_coef):
    save_checkpoint(path, {
        "update": update, "elapsed": elapsed, "config": config.to_dict(), "kl_coef": kl_coef,
        "agent": agent.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": get_rng_state(),
        "env": vector_env_state(envs),
        "rollout": {"obs": state.obs, "ghost": state.ghost, "global_step": state.global_step},
        "history": result.history, "episodes": result.episodes,
    })


def _restore(path, config, agent, optimizer, scheduler, envs, state, result) -> tuple[int, float, float]:
    ckpt = load_checkpoint(path)  # on the CPU: RNG and env states are CPU/numpy objects
    saved, current = ckpt["config"], config.to_dict()
    for f in fields(config):
        if f.name not in _RESUMABLE and saved.get(f.name) != current[f.name]:
            raise ValueError(f"{f.name}: checkpoint {path} was written with "
                             f"{saved.get(f.name)!r}, this run has {current[f.name]!r}")
    agent.load_state_dict(ckpt["agent"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    load_vector_env_state(envs, ckpt["env"])
    set_rng_state(ckpt["rng"])
    device = state.obs.device
    state.obs, state.ghost = ckpt["rollout"]["obs"].to(device), ckpt["rollout"]["ghost"].to(device)
    state.global_step = ckpt["rollout"]["global_step"]
    result.history[:], result.episodes[:] = ckpt["history"], ckpt["episodes"]
    return ckpt["update"], ckpt["elapsed"], ckpt["kl_coef"]
