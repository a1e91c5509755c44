"""Teaching problems with closed-form answers: a softmax bandit, a finite MDP, a random-walk chain.

Chapters 1, 2 and 4 check sampled estimators against exact quantities computed here by linear
algebra (no sampling): the return J(θ), its gradient ∇_θ J, the value functions V^π and Q^π,
the discounted state visitation and the surrogate L^CPI. Everything is pure torch; each class
also has a seeded, vectorised sampler (a ``torch.Generator`` in, time-major ``[T, N]`` tensors
out) so that the estimators of the book can be fed exactly what a real rollout would give them.

Policies are tabular softmax policies: ``theta[s, a]`` is the logit of action ``a`` in state
``s`` (for the bandit ``theta[a]``), π_θ(a|s) = softmax(θ[s, ·])_a. Exact computations run in
the dtype of ``theta`` (use float64 for comparisons against finite differences).

Shape letters: S states, A actions, K non-terminal chain states, T time steps, N episodes or
parallel environments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "SoftmaxBandit",
    "BanditSamples",
    "TabularMDP",
    "TabularSolution",
    "EpisodeBatch",
    "RandomWalkChain",
    "ChainRollout",
]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_float_tensor(x, name: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: must be finite")
    return t


def _check_gamma(gamma: float) -> None:
    if not (isinstance(gamma, (int, float)) and 0.0 <= float(gamma) <= 1.0):
        raise ValueError(f"gamma: must be a number in [0, 1], got {gamma!r}")


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")


def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: must be a torch.Generator, got {type(generator).__name__}")


def _check_distribution(p: torch.Tensor, name: str, dim: int = -1) -> None:
    if (p < 0).any():
        raise ValueError(f"{name}: probabilities must be non-negative")
    if not torch.allclose(p.sum(dim), torch.ones((), dtype=p.dtype), atol=1e-6):
        raise ValueError(f"{name}: probabilities must sum to 1 along dim {dim}")


def _check_theta(theta: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        raise ValueError("theta: must be a floating-point torch.Tensor")
    if tuple(theta.shape) != shape:
        raise ValueError(f"theta: expected shape {list(shape)}, got {list(theta.shape)}")
    if not torch.isfinite(theta.detach()).all():
        raise ValueError("theta: must be finite")


# --------------------------------------------------------------------------------------------
# multi-armed bandit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BanditSamples:
    """One pull per sample: ``actions`` [N] (long), ``rewards`` [N] (float)."""

    actions: torch.Tensor
    rewards: torch.Tensor


@dataclass(frozen=True, eq=False)
class SoftmaxBandit:
    """A one-step problem: pick arm a ~ π_θ = softmax(θ), receive r ~ Normal(μ_a, σ²).

    J(θ) = Σ_a π_θ(a) μ_a and ∇_θ J = π_θ ⊙ (μ − J) in closed form (the log-derivative trick with
    ∇_θ log π_θ(a) = e_a − π_θ). The single-sample score-function estimator
    g = ∇_θ log π_θ(a) · (r − b) has an exact variance too (:meth:`gradient_variance`), which
    makes the bandit the smallest place to see what a baseline b does.

    Attributes:
        means: μ, expected reward of each arm, shape [A].
        reward_std: σ ≥ 0, standard deviation of the Gaussian reward noise.
    """

    means: torch.Tensor
    reward_std: float = 1.0

    def __post_init__(self) -> None:
        means = _as_float_tensor(self.means, "means")
        if means.ndim != 1 or means.numel() < 2:
            raise ValueError(f"means: expected shape [A] with A >= 2, got {list(means.shape)}")
        if not (isinstance(self.reward_std, (int, float)) and math.isfinite(self.reward_std) and self.reward_std >= 0):
            raise ValueError(f"reward_std: must be a finite number >= 0, got {self.reward_std!r}")
        object.__setattr__(self, "means", means)

    @property
    def num_actions(self) -> int:
        return self.means.numel()

    def probs(self, theta: torch.Tensor) -> torch.Tensor:
        """π_θ = softmax(θ), shape [A]."""
        _check_theta(theta, (self.num_actions,))
        return torch.softmax(theta, dim=-1)

    def expected_return(self, theta: torch.Tensor) -> torch.Tensor:
        """J(θ) = Σ_a π_θ(a) μ_a, a differentiable scalar; θ ↔ ``theta`` [A]. §1.2."""
        return (self.probs(theta) * self.means.to(theta.dtype)).sum()

    def exact_gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """∇_θ J = π_θ ⊙ (μ − J(θ)), shape [A]: Eq. (1.6), §1.2, for one step (score e_a − π, Eq. (1.3))."""
        pi = self.probs(theta).detach()
        mu = self.means.to(theta.dtype)
        return pi * (mu - (pi * mu).sum())

    def gradient_variance(self, theta: torch.Tensor, baseline: float | torch.Tensor = 0.0) -> torch.Tensor:
        """Total variance E‖g − ∇J‖² of the one-sample estimator g = (e_a − π)(r − b), §1.5.

        E‖g‖² = Σ_a π_a ‖e_a − π‖² ((μ_a − b)² + σ²); the variance is that minus ‖∇J‖².
        ``baseline`` may be a tensor of baselines (any shape); the result has its shape.
        """
        pi = self.probs(theta).detach()
        mu = self.means.to(theta.dtype)
        b = torch.as_tensor(baseline, dtype=theta.dtype)
        score_sq = 1.0 - 2.0 * pi + (pi * pi).sum()  # ‖e_a − π‖², [A]
        second = ((mu - b[..., None]) ** 2 + self.reward_std**2) * (pi * score_sq)  # [..., A]
        grad = self.exact_gradient(theta)
        return second.sum(-1) - (grad * grad).sum()

    def optimal_baseline(self, theta: torch.Tensor) -> torch.Tensor:
        """Eq. (1.15), §1.5: the constant b minimising :meth:`gradient_variance`, E[‖∇log π‖² r] / E[‖∇log π‖²]."""
        pi = self.probs(theta).detach()
        w = pi * (1.0 - 2.0 * pi + (pi * pi).sum())
        return (w * self.means.to(theta.dtype)).sum() / w.sum()

    def sample(self, theta: torch.Tensor, num_samples: int, generator: torch.Generator) -> BanditSamples:
        """Draw ``num_samples`` independent pulls: actions [N] (long) and rewards [N]."""
        _check_positive_int(num_samples, "num_samples")
        _check_generator(generator)
        pi = self.probs(theta).detach()
        actions = torch.multinomial(pi, num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, generator=generator, dtype=theta.dtype)
        rewards = self.means.to(theta.dtype)[actions] + self.reward_std * noise
        return BanditSamples(actions=actions, rewards=rewards)


# --------------------------------------------------------------------------------------------
# finite MDP
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TabularSolution:
    """Exact quantities of a :class:`TabularMDP` under one policy π_θ.

    Attributes:
        expected_return: J(θ) = E[Σ_t γ^t r_t], scalar (differentiable in θ).
        values: V(s) at t = 0, shape [S] (0 at terminal states).
        action_values: Q(s, a) at t = 0, shape [S, A].
        visitation: discounted visitation d(s) = Σ_t γ^t P(s_t = s), shape [S]; not normalised
            (it sums to E[Σ_t γ^t], which is 1/(1 − γ) for an endless discounted problem).
        gradient: the exact ∇_θ J, shape [S, A], from the policy gradient theorem
            ∇J[s, a] = Σ_t γ^t P(s_t = s) π(a|s) (Q_t(s, a) − V_t(s)).
        state_dist_by_time: P(s_t = s, episode still running), shape [H, S] (finite horizon
            only, else None).
        values_by_time: V_t(s), the value with H − t steps to go, shape [H, S] (or None).
        action_values_by_time: Q_t(s, a), shape [H, S, A] (or None).
    """

    expected_return: torch.Tensor
    values: torch.Tensor
    action_values: torch.Tensor
    visitation: torch.Tensor
    gradient: torch.Tensor
    state_dist_by_time: torch.Tensor | None = None
    values_by_time: torch.Tensor | None = None
    action_values_by_time: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class EpisodeBatch:
    """N complete (or cut) episodes sampled side by side, time-major, padded after their end.

    Column n holds one episode from its start; after its last step the column is padding
    (``mask`` False, reward 0, state/action 0). All tensors are [T, N].

    Attributes:
        states, actions, next_states: long.
        rewards: r_t = R(s_t, a_t).
        logprobs: log π_θ(a_t|s_t) of the sampling policy (detached; 0 at padding). To
            differentiate, recompute with :meth:`TabularMDP.logprobs`.
        mask: True where the step is part of an episode.
        terminated: the episode ended at this step (terminal state reached, or the last step of a
            finite horizon, after which nothing counts toward J).
        truncated: the episode was cut here by ``max_steps`` before it ended by itself.
        episode_ends: terminated | truncated.
    """

    states: torch.Tensor
    actions: torch.Tensor
    next_states: torch.Tensor
    rewards: torch.Tensor
    logprobs: torch.Tensor
    mask: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    episode_ends: torch.Tensor


@dataclass(frozen=True, eq=False)
class TabularMDP:
    """A finite MDP with a tabular softmax policy θ[s, a] and exact J, V, Q, ∇J.

    The objective is J(θ) = E[Σ_{t=0}^{H-1} γ^t r_t] with s_0 ~ ``initial_dist``,
    a_t ~ π_θ(· | s_t), r_t = R(s_t, a_t), s_{t+1} ~ P(· | s_t, a_t). An episode ends when it enters
    a terminal state (which is never acted in and has value 0) or after H = ``horizon`` steps.
    ``horizon=None`` is the endless discounted problem (needs γ < 1, or terminal states reached
    with probability 1).

    Attributes:
        transitions: P[s, a, s'], shape [S, A, S], rows sum to 1.
        rewards: R[s, a], expected reward of taking a in s, shape [S, A].
        initial_dist: distribution of s_0, shape [S], no mass on terminal states.
        gamma: discount factor γ in [0, 1].
        horizon: H, number of steps, or None for the endless discounted problem.
        terminal: bool [S], True for absorbing terminal states (default: none).
    """

    transitions: torch.Tensor
    rewards: torch.Tensor
    initial_dist: torch.Tensor
    gamma: float
    horizon: int | None = None
    terminal: torch.Tensor | None = None

    def __post_init__(self) -> None:
        P = _as_float_tensor(self.transitions, "transitions")
        if P.ndim != 3 or P.shape[0] != P.shape[2] or P.shape[0] < 1 or P.shape[1] < 2:
            raise ValueError(f"transitions: expected shape [S, A, S] with A >= 2, got {list(P.shape)}")
        S, A = P.shape[0], P.shape[1]
        _check_distribution(P, "transitions")
        R = _as_float_tensor(self.rewards, "rewards")
        if tuple(R.shape) != (S, A):
            raise ValueError(f"rewards: expected shape [{S}, {A}], got {list(R.shape)}")
        mu0 = _as_float_tensor(self.initial_dist, "initial_dist")
        if tuple(mu0.shape) != (S,):
            raise ValueError(f"initial_dist: expected shape [{S}], got {list(mu0.shape)}")
        _check_distribution(mu0, "initial_dist")
        _check_gamma(self.gamma)
        if self.horizon is not None:
            _check_positive_int(self.horizon, "horizon")
        if self.terminal is None:
            terminal = torch.zeros(S, dtype=torch.bool)
        else:
            terminal = torch.as_tensor(self.terminal, dtype=torch.bool)
            if tuple(terminal.shape) != (S,):
                raise ValueError(f"terminal: expected shape [{S}], got {list(terminal.shape)}")
            if terminal.all():
                raise ValueError("terminal: at least one state must be non-terminal")
        if (mu0[terminal] > 0).any():
            raise ValueError("initial_dist: puts mass on a terminal state")
        object.__setattr__(self, "transitions", P)
        object.__setattr__(self, "rewards", R)
        object.__setattr__(self, "initial_dist", mu0)
        object.__setattr__(self, "gamma", float(self.gamma))
        object.__setattr__(self, "terminal", terminal)
        if self.horizon is None:
            # Fail early if the endless problem has no finite value (γ = 1 without sure termination).
            self.exact(torch.zeros(S, A, dtype=torch.float64))

    # -- construction --------------------------------------------------------------------

    @classmethod
    def random(
        cls,
        num_states: int = 4,
        num_actions: int = 3,
        *,
        gamma: float = 0.9,
        horizon: int | None = 10,
        seed: int = 0,
        peakedness: float = 2.0,
    ) -> "TabularMDP":
        """A random MDP, deterministic in ``seed``; s_0 = 0 and no terminal states.

        P(· | s, a) = softmax(``peakedness`` · z) with z ~ Normal(0, 1) [S] (larger: more
        deterministic transitions, so actions matter more); R(s, a) ~ Uniform[0, 1).
        """
        _check_positive_int(num_states, "num_states")
        _check_positive_int(num_actions, "num_actions")
        if num_actions < 2:
            raise ValueError(f"num_actions: must be >= 2, got {num_actions}")
        if not (isinstance(peakedness, (int, float)) and math.isfinite(peakedness) and peakedness >= 0):
            raise ValueError(f"peakedness: must be a finite number >= 0, got {peakedness!r}")
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(num_states, num_actions, num_states, generator=g, dtype=torch.float64)
        P = torch.softmax(peakedness * z, dim=-1)
        R = torch.rand(num_states, num_actions, generator=g, dtype=torch.float64)
        mu0 = torch.zeros(num_states, dtype=torch.float64)
        mu0[0] = 1.0
        return cls(transitions=P, rewards=R, initial_dist=mu0, gamma=gamma, horizon=horizon)

    # -- policy --------------------------------------------------------------------------

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def num_actions(self) -> int:
        return self.transitions.shape[1]

    def probs(self, theta: torch.Tensor) -> torch.Tensor:
        """π_θ(a|s) = softmax(θ[s, ·])_a, shape [S, A]."""
        _check_theta(theta, (self.num_states, self.num_actions))
        return torch.softmax(theta, dim=-1)

    def logprobs(self, theta: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log π_θ(a|s) gathered at (``states``, ``actions``) (same shape, e.g. [T, N]); differentiable."""
        _check_theta(theta, (self.num_states, self.num_actions))
        if states.shape != actions.shape:
            raise ValueError(f"actions: shape {list(actions.shape)} != states shape {list(states.shape)}")
        return torch.log_softmax(theta, dim=-1)[states, actions]

    # -- exact quantities ----------------------------------------------------------------

    def _tables(self, theta: torch.Tensor):
        dt = theta.dtype
        P = self.transitions.to(dt)
        R = self.rewards.to(dt)
        keep = (~self.terminal).to(dt)  # continuation only into non-terminal states
        P_cont = P * keep  # [S, A, S]
        P_cont = P_cont * keep[:, None, None]  # terminal states are never acted in
        R = R * keep[:, None]
        return P_cont, R, self.initial_dist.to(dt)

    def _exact_by_time(self, theta: torch.Tensor):
        """Per-step tables for a finite horizon: lists over t of d_t [S], Q_t [S, A], V_t [S]."""
        pi = self.probs(theta)
        P_cont, R, mu0 = self._tables(theta)
        H = self.horizon
        V_next = torch.zeros(self.num_states, dtype=theta.dtype)
        Qs, Vs = [None] * H, [None] * H
        for t in reversed(range(H)):  # backward: Q_t = R + γ P V_{t+1}
            Q = R + self.gamma * P_cont @ V_next
            V = (pi * Q).sum(-1)
            Qs[t], Vs[t] = Q, V
            V_next = V
        ds = []
        d = mu0
        for t in range(H):  # forward: d_{t+1}(s') = Σ_s d_t(s) Σ_a π(a|s) P(s'|s, a)
            ds.append(d)
            d = torch.einsum("s,sa,sax->x", d, pi, P_cont)
        return pi, ds, Qs, Vs

    def _exact_endless(self, theta: torch.Tensor):
        pi = self.probs(theta)
        P_cont, R, mu0 = self._tables(theta)
        S = self.num_states
        P_pi = torch.einsum("sa,sax->sx", pi, P_cont)  # [S, S]
        r_pi = (pi * R).sum(-1)  # [S]
        M = torch.eye(S, dtype=theta.dtype) - self.gamma * P_pi
        try:
            V = torch.linalg.solve(M, r_pi)  # (I − γ P_π) V = r_π
            d = torch.linalg.solve(M.T, mu0)  # d^T (I − γ P_π) = μ0^T
        except RuntimeError as err:  # singular: γ = 1 and some state never terminates
            raise ValueError("gamma: the endless problem (horizon=None) has no finite value; use gamma < 1") from err
        if not (torch.isfinite(V).all() and torch.isfinite(d).all()) or (d.detach() < -1e-8).any():
            raise ValueError("gamma: the endless problem (horizon=None) has no finite value; use gamma < 1")
        Q = R + self.gamma * P_cont @ V
        return pi, d, Q, V

    def exact(self, theta: torch.Tensor) -> TabularSolution:
        """J (Eq. (1.1)), V, Q, discounted visitation and ∇_θ J (Eq. (1.11), §1.3) of π_θ, all exact.

        Finite horizon: backward recursion Q_t = R + γ P V_{t+1}, V_t = Σ_a π Q_t, and forward
        state distributions d_t. Endless: (I − γ P_π) V = r_π and d^T (I − γ P_π) = μ0^T.
        ``expected_return`` is differentiable in ``theta``; ``gradient`` is the closed form of the
        policy gradient theorem (it equals ``autograd`` of ``expected_return``, which the tests check).
        """
        if self.horizon is None:
            pi, d, Q, V = self._exact_endless(theta)
            J = (self.initial_dist.to(theta.dtype) * V).sum()
            grad = d[:, None] * pi * (Q - V[:, None])
            return TabularSolution(J, V, Q, d, grad.detach())
        pi, ds, Qs, Vs = self._exact_by_time(theta)
        d, Q, V = torch.stack(ds), torch.stack(Qs), torch.stack(Vs)  # [H, S], [H, S, A], [H, S]
        J = (self.initial_dist.to(theta.dtype) * V[0]).sum()
        discount = self.gamma ** torch.arange(self.horizon, dtype=theta.dtype)  # γ^t, [H]
        visitation = (discount[:, None] * d).sum(0)
        grad = torch.einsum("t,ts,sa,tsa->sa", discount, d, pi, Q - V[..., None])
        return TabularSolution(J, V[0], Q[0], visitation, grad.detach(), d.detach(), V.detach(), Q.detach())

    def expected_return(self, theta: torch.Tensor) -> torch.Tensor:
        """J(θ), a differentiable scalar (autograd through the exact linear algebra)."""
        return self.exact(theta).expected_return

    def exact_gradient(self, theta: torch.Tensor, discount_weighting: bool = True) -> torch.Tensor:
        """∇_θ J in closed form (policy gradient theorem), shape [S, A].

        ``discount_weighting=False`` gives instead Σ_t Σ_s P(s_t = s) π(a|s)(Q_t − V_t), Eq. (1.16),
        §1.6: the expectation of the common estimator that drops the γ^t factor in front of each
        step (finite horizon only). It is not ∇J when γ < 1.
        """
        if discount_weighting:
            return self.exact(theta.detach()).gradient
        if self.horizon is None:
            raise ValueError("discount_weighting: False needs a finite horizon (horizon=None given)")
        sol = self.exact(theta.detach())
        pi = self.probs(theta.detach())
        adv = sol.action_values_by_time - sol.values_by_time[..., None]  # [H, S, A]
        return torch.einsum("ts,sa,tsa->sa", sol.state_dist_by_time, pi, adv)

    def cpi_surrogate(self, theta: torch.Tensor, theta_old: torch.Tensor) -> torch.Tensor:
        """Eq. (2.7), §2.3: the surrogate L^CPI_{θold}(θ), exact and differentiable in θ ↔ ``theta``.

        L(θ) = J(θold) + Σ_t γ^t Σ_s d_t^old(s) Σ_a π_θ(a|s) A_t^old(s, a), with d_t^old and
        A_t^old = Q_t^old − V_t^old of the *old* policy: actions are re-weighted (the per-step
        ratio π_θ/π_θold), states are not. Hence L(θold) = J(θold) and ∇L(θold) = ∇J(θold), but
        L and J drift apart as θ moves (they differ by the change in the state distribution).
        With ``horizon=None`` this is the L of TRPO's bound, Eq. (2.12). Shapes: ``theta``,
        ``theta_old`` [S, A] → scalar.
        """
        theta_old = theta_old.detach()
        pi = self.probs(theta)
        if self.horizon is None:
            _, d, Q, V = self._exact_endless(theta_old)
            J_old = (self.initial_dist.to(theta.dtype) * V).sum()
            return J_old + (d[:, None] * pi * (Q - V[:, None])).sum()
        _, ds, Qs, Vs = self._exact_by_time(theta_old)
        J_old = (self.initial_dist.to(theta.dtype) * Vs[0]).sum()
        gain = sum(self.gamma**t * (ds[t][:, None] * pi * (Qs[t] - Vs[t][:, None])).sum() for t in range(self.horizon))
        return J_old + gain

    # -- sampling ------------------------------------------------------------------------

    def sample_episodes(
        self,
        theta: torch.Tensor,
        num_episodes: int,
        generator: torch.Generator,
        max_steps: int | None = None,
    ) -> EpisodeBatch:
        """Sample ``num_episodes`` episodes of π_θ side by side; tensors are [T, N].

        T = ``max_steps`` if given, else ``horizon``. With a finite horizon ``max_steps`` must be
        ≤ ``horizon``; an episode still running after T steps is marked ``truncated`` unless
        T == horizon (then its last step is ``terminated``: the finite-horizon return is complete).
        """
        _check_positive_int(num_episodes, "num_episodes")
        _check_generator(generator)
        if max_steps is None:
            if self.horizon is None:
                raise ValueError("max_steps: required when horizon is None")
            T = self.horizon
        else:
            _check_positive_int(max_steps, "max_steps")
            if self.horizon is not None and max_steps > self.horizon:
                raise ValueError(f"max_steps: must be <= horizon ({self.horizon}), got {max_steps}")
            T = max_steps
        horizon_end = self.horizon is not None and T == self.horizon
        N = num_episodes
        pi = self.probs(theta).detach()
        logpi = torch.log(pi)
        P = self.transitions.to(theta.dtype)
        R = self.rewards.to(theta.dtype)
        term = self.terminal

        states = torch.empty(T, N, dtype=torch.long)
        actions = torch.empty(T, N, dtype=torch.long)
        next_states = torch.empty(T, N, dtype=torch.long)
        mask = torch.empty(T, N, dtype=torch.bool)
        terminated = torch.zeros(T, N, dtype=torch.bool)
        truncated = torch.zeros(T, N, dtype=torch.bool)

        s = torch.multinomial(self.initial_dist.to(theta.dtype).expand(N, -1), 1, generator=generator)[:, 0]
        alive = torch.ones(N, dtype=torch.bool)
        for t in range(T):  # all N episodes advance together; finished ones keep stepping, masked out
            a = torch.multinomial(pi[s], 1, generator=generator)[:, 0]  # [N]
            s_next = torch.multinomial(P[s, a], 1, generator=generator)[:, 0]  # [N]
            states[t], actions[t], next_states[t], mask[t] = s, a, s_next, alive
            done = alive & term[s_next]
            terminated[t] = done
            alive = alive & ~done
            s = s_next
        if horizon_end:  # the finite-horizon return is complete: its last step is terminal
            terminated[-1] |= alive
        else:
            truncated[-1] = alive
        rewards = torch.where(mask, R[states, actions], 0.0)
        logprobs = torch.where(mask, logpi[states, actions], 0.0)
        states, actions, next_states = (torch.where(mask, x, 0) for x in (states, actions, next_states))
        return EpisodeBatch(
            states=states,
            actions=actions,
            next_states=next_states,
            rewards=rewards,
            logprobs=logprobs,
            mask=mask,
            terminated=terminated,
            truncated=truncated,
            episode_ends=terminated | truncated,
        )


# --------------------------------------------------------------------------------------------
# random-walk chain (Sutton & Barto, Example 6.2)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ChainRollout:
    """A rollout of N parallel random walks for T steps, with auto-reset; all tensors [T, N].

    Positions: non-terminal states are 0 … K−1; the walk terminates on stepping to −1 (left end)
    or K (right end). After an episode ends the environment restarts at ``start`` on the next step.

    Attributes:
        states: s_t (long), always non-terminal.
        actions: 0 = left, 1 = right (long).
        rewards: r_t.
        next_states: the position reached by the step (long; −1 or K when terminated; the real
            last position, not the reset one, when truncated).
        values: V(s_t) from the given value table.
        next_values: V(s_{t+1}) of the position reached (0 where terminated; V of the final
            position where truncated; at the last row of a running episode, the bootstrap V(s_T)).
        terminated: stepped into a terminal end.
        truncated: hit the time limit ``max_episode_steps`` without terminating.
        episode_ends: terminated | truncated.
        episode_steps: number of steps the episode had taken before step t (0 at its start).
    """

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_states: torch.Tensor
    values: torch.Tensor
    next_values: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    episode_ends: torch.Tensor
    episode_steps: torch.Tensor


@dataclass(frozen=True, eq=False)
class RandomWalkChain:
    """A random walk on K non-terminal states with absorbing ends and an exact V^π.

    From state s the walk moves right with probability ``p_right`` (a float, or a tensor [K] with
    one probability per state) and left otherwise. Each step pays ``step_reward``; stepping off the
    left end pays ``reward_left`` and off the right end ``reward_right`` and terminates. With the
    defaults (K = 5, p = 0.5, γ = 1, rewards 0 / 1) this is Sutton & Barto's Example 6.2, where
    V(s) = (s + 1)/(K + 1).

    Attributes:
        num_states: K ≥ 1.
        p_right: probability of stepping right, float or [K], each in [0, 1].
        gamma: discount γ in [0, 1] (termination is certain, so γ = 1 is allowed).
        reward_left, reward_right, step_reward: rewards as described above.
        start: the start state (default: the middle, K // 2).
    """

    num_states: int = 5
    p_right: float | torch.Tensor = 0.5
    gamma: float = 1.0
    reward_left: float = 0.0
    reward_right: float = 1.0
    step_reward: float = 0.0
    start: int | None = None

    def __post_init__(self) -> None:
        _check_positive_int(self.num_states, "num_states")
        K = self.num_states
        p = _as_float_tensor(self.p_right, "p_right")
        if p.ndim == 0:
            p = p.expand(K).clone()
        if tuple(p.shape) != (K,):
            raise ValueError(f"p_right: expected a float or shape [{K}], got {list(p.shape)}")
        if ((p < 0) | (p > 1)).any():
            raise ValueError("p_right: probabilities must lie in [0, 1]")
        _check_gamma(self.gamma)
        for name in ("reward_left", "reward_right", "step_reward"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{name}: must be a finite number, got {v!r}")
        start = K // 2 if self.start is None else self.start
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < K:
            raise ValueError(f"start: must be an integer in [0, {K - 1}], got {self.start!r}")
        object.__setattr__(self, "p_right", p)
        object.__setattr__(self, "gamma", float(self.gamma))
        object.__setattr__(self, "start", start)
        try:  # fail early when some walk never ends (γ = 1 and e.g. p_right = [.., 1, 0, ..])
            V = self.values()
        except RuntimeError as err:
            raise ValueError("p_right: with gamma = 1 some walk never terminates; V is not finite") from err
        if not torch.isfinite(V).all():
            raise ValueError("p_right: with gamma = 1 some walk never terminates; V is not finite")

    def _step_tables(self):
        """Next positions [K, 2] and rewards [K, 2] for actions (left, right)."""
        K = self.num_states
        s = torch.arange(K)
        next_pos = torch.stack([s - 1, s + 1], dim=-1)  # [K, 2]
        rew = torch.full((K, 2), float(self.step_reward), dtype=torch.float64)
        rew[0, 0] += self.reward_left
        rew[K - 1, 1] += self.reward_right
        return next_pos, rew

    def policy_probs(self) -> torch.Tensor:
        """π(a|s) for a ∈ (left, right), shape [K, 2]."""
        return torch.stack([1.0 - self.p_right, self.p_right], dim=-1)

    def transition_matrix(self) -> torch.Tensor:
        """P_π[s, s'] among non-terminal states, shape [K, K] (rows sum to < 1 at the ends)."""
        K = self.num_states
        P = torch.zeros(K, K, dtype=torch.float64)
        idx = torch.arange(K)
        P[idx[1:], idx[1:] - 1] = 1.0 - self.p_right[1:]
        P[idx[:-1], idx[:-1] + 1] = self.p_right[:-1]
        return P

    def expected_rewards(self) -> torch.Tensor:
        """r_π(s) = E[r_t | s_t = s], shape [K]."""
        _, rew = self._step_tables()
        return (self.policy_probs() * rew).sum(-1)

    def values(self) -> torch.Tensor:
        """The exact V^π, shape [K] (float64): solves (I − γ P_π) V = r_π, the Bellman equation."""
        K = self.num_states
        M = torch.eye(K, dtype=torch.float64) - self.gamma * self.transition_matrix()
        return torch.linalg.solve(M, self.expected_rewards())

    def action_values(self) -> torch.Tensor:
        """The exact Q^π(s, a) = r(s, a) + γ V(s'), shape [K, 2] (V = 0 off the ends)."""
        next_pos, rew = self._step_tables()
        V_ext = torch.cat([torch.zeros(1, dtype=torch.float64), self.values(), torch.zeros(1, dtype=torch.float64)])
        return rew + self.gamma * V_ext[next_pos + 1]

    def rollout(
        self,
        num_envs: int,
        num_steps: int,
        generator: torch.Generator,
        value_table: torch.Tensor | None = None,
        max_episode_steps: int | None = None,
    ) -> ChainRollout:
        """Run ``num_envs`` walks for ``num_steps`` steps with auto-reset; tensors are [T, N].

        Args:
            num_envs: N parallel environments, all starting at ``start``.
            num_steps: T steps per environment.
            generator: the only source of randomness.
            value_table: V used for ``values``/``next_values``, shape [K] (default: the exact
                :meth:`values`). Pass a perturbed table to study a wrong critic.
            max_episode_steps: time limit; an episode that reaches it without terminating is
                ``truncated`` (its ``next_values`` is still V of the position reached).
        """
        _check_positive_int(num_envs, "num_envs")
        _check_positive_int(num_steps, "num_steps")
        _check_generator(generator)
        if max_episode_steps is not None:
            _check_positive_int(max_episode_steps, "max_episode_steps")
        K = self.num_states
        if value_table is None:
            value_table = self.values()
        else:
            value_table = torch.as_tensor(value_table)
            if not value_table.is_floating_point():
                value_table = value_table.to(torch.float64)
            if not torch.isfinite(value_table).all():
                raise ValueError("value_table: must be finite")
            if tuple(value_table.shape) != (K,):
                raise ValueError(f"value_table: expected shape [{K}], got {list(value_table.shape)}")
        dt = value_table.dtype
        next_pos, rew = self._step_tables()
        rew = rew.to(dt)
        T, N = num_steps, num_envs

        states = torch.empty(T, N, dtype=torch.long)
        actions = torch.empty(T, N, dtype=torch.long)
        next_states = torch.empty(T, N, dtype=torch.long)
        rewards = torch.empty(T, N, dtype=dt)
        terminated = torch.empty(T, N, dtype=torch.bool)
        truncated = torch.empty(T, N, dtype=torch.bool)
        episode_steps = torch.empty(T, N, dtype=torch.long)

        s = torch.full((N,), self.start, dtype=torch.long)
        steps = torch.zeros(N, dtype=torch.long)
        for t in range(T):
            u = torch.rand(N, generator=generator, dtype=torch.float64)
            a = (u < self.p_right[s]).long()  # 1 = right
            s_next = next_pos[s, a]
            term = (s_next < 0) | (s_next >= K)
            steps_after = steps + 1
            if max_episode_steps is None:
                trunc = torch.zeros(N, dtype=torch.bool)
            else:
                trunc = ~term & (steps_after >= max_episode_steps)
            states[t], actions[t], next_states[t] = s, a, s_next
            rewards[t] = rew[s, a]
            terminated[t], truncated[t] = term, trunc
            episode_steps[t] = steps
            end = term | trunc
            s = torch.where(end, torch.full_like(s, self.start), s_next)
            steps = torch.where(end, torch.zeros_like(steps), steps_after)

        values = value_table[states]
        next_values = torch.where(terminated, torch.zeros((), dtype=dt), value_table[next_states.clamp(0, K - 1)])
        return ChainRollout(
            states=states,
            actions=actions,
            rewards=rewards,
            next_states=next_states,
            values=values,
            next_values=next_values,
            terminated=terminated,
            truncated=truncated,
            episode_ends=terminated | truncated,
            episode_steps=episode_steps,
        )
