"""Log keys, defined once: what each metric means and the range a healthy run stays in.

Both trainers (§5 CartPole, §7 RLHF) log only keys defined here, and the appendix's metrics
glossary is generated from ``METRICS`` (``markdown_table``). Healthy ranges are rules of
thumb from the cited sources, not guarantees: a value outside one is a reason to look, and
``unhealthy`` says what it usually means. ``None`` bounds are open; a metric whose scale is
task-dependent (returns, losses, entropy) has no range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str  # the log key, "<group>/<name>"
    name_zh: str  # the book's term (GLOSSARY.md)
    description: str  # what is measured, in one English sentence
    low: float | None = None  # healthy range [low, high]; None = open
    high: float | None = None
    outside: str = ""  # what a value outside [low, high] usually means
    source: str = ""  # where the range comes from

    @property
    def has_range(self) -> bool:
        return self.low is not None or self.high is not None

    def is_healthy(self, value: float) -> bool | None:
        """True inside [low, high], False outside or non-finite, None where there is no range."""
        if not self.has_range:
            return None
        if not math.isfinite(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


_ALL = (
    Metric("loss/total", "总损失", "The minimised PPO loss: policy_loss + vf_coef·value_loss − ent_coef·entropy (Eq. (3.12))."),
    Metric("policy/loss", "策略损失", "−L^CLIP, the clipped surrogate loss of the minibatch (Eq. (3.2))."),
    Metric(
        "policy/entropy", "熵", "Mean entropy of the policy's action (token) distribution, in nats (Eq. (3.9)).",
        outside="A fast fall to ~0 early in training means premature collapse to a deterministic policy.",
    ),
    Metric(
        "policy/clip_fraction", "裁剪比例", "Fraction of kept samples with |ratio − 1| > clip_eps (CleanRL's definition).",
        low=0.0, high=0.3,
        outside="Above ~0.3 each update moves the policy too far: lower the learning rate or ppo_epochs.",
        source="CleanRL PPO docs (clipfrac); Engstrom et al. 2020",
    ),
    Metric(
        "policy/approx_kl", "近似 KL", "Masked mean of (ratio − 1) − log ratio: k3 estimate of KL(π_old‖π_θ).",
        low=0.0, high=0.05,
        outside="Above ~0.05 the update leaves the trust region (CleanRL/SB3 early-stop at target_kl ≈ 0.01–0.05); < 0 is impossible for k3 and means a bug.",
        source="CleanRL target_kl; SB3 target_kl",
    ),
    Metric(
        "policy/kl", "KL 惩罚项", "Masked mean of the per-element KL estimate in the loss's KL term, "
        "β·KL (L^KLPEN, Schulman et al. 2017 §4); logged only when the loss has that term.",
        low=0.0,
        outside="Negative means a k1 estimate on samples not drawn from the policy (use k3 in a loss).",
    ),
    Metric("value/loss", "价值损失", "½·mean of the (clipped) squared error of the value function (Eqs. (3.7)–(3.8))."),
    Metric(
        "value/clip_fraction", "价值裁剪比例", "Fraction of kept samples with |v − v_old| > vf_clip_eps.",
        outside="Depends on the return scale; near 1 the value clip blocks learning (raise vf_clip_eps or normalise returns).",
    ),
    Metric(
        "value/explained_variance", "解释方差", "1 − Var[returns − values] / Var[returns] over the rollout.",
        low=0.0, high=1.0,
        outside="Below 0 the value function predicts worse than a constant: GAE then adds noise, not signal.",
        source="SB3 explained_variance; CleanRL PPO docs",
    ),
    Metric(
        "objective/kl", "KL 散度", "Batch mean of each response's KL(π‖π_ref) summed over its tokens, in nats.",
        low=0.0,
        outside="A negative k1 batch mean means the sampled tokens do not come from π (sampling/logprob mismatch).",
        source="TRL PPO trainer (warns on negative KL)",
    ),
    Metric("objective/kl_coef", "KL 惩罚系数", "The KL coefficient β in use (adaptive or fixed controller)."),
    Metric("objective/scores", "奖励模型得分", "Mean reward-model score r_φ of the batch's responses (before the KL penalty)."),
    Metric("objective/rlhf_reward", "RLHF 奖励", "Mean of score − β·KL per response: the quantity PPO-RLHF maximises."),
    Metric(
        "objective/gold_reward", "金标准奖励", "Mean gold reward r* of the batch's responses (synthetic task only).",
        outside="Falling while objective/scores rises is reward over-optimisation.",
        source="Gao et al. 2023, Scaling Laws for Reward Model Overoptimization",
    ),
    Metric(
        "policy/ratio_error", "初始比率误差", "Max |ratio − 1| over the response tokens of an "
        "iteration's first minibatch, before any gradient step (§7).",
        low=0.0, high=1e-4,
        outside="Above rounding error the rollout and the trainer score tokens differently "
        "(temperature, excluded tokens, padding, position_ids or dropout): PPO is then off-policy from step one.",
    ),
    Metric("response/length", "回复长度", "Mean number of real tokens per sampled response (EOS included)."),
    Metric(
        "response/eos_fraction", "EOS 比例", "Fraction of sampled responses that ended with EOS "
        "rather than at the length limit.",
        outside="A fall towards 0 means the policy learned to ramble to the limit (a reward-model loophole).",
    ),
    Metric("env/episodic_return", "回合回报", "Undiscounted return of the episodes that finished in the rollout."),
    Metric("env/episode_length", "回合长度", "Length in steps of the episodes that finished in the rollout."),
    Metric("optim/grad_norm", "梯度范数", "Global L2 norm of the gradient before clipping."),
    Metric("optim/learning_rate", "学习率", "The optimizer's learning rate at this update."),
    Metric("sft/loss", "SFT 损失", "Mean negative log-likelihood per real response token of the SFT minibatch, in nats."),
    Metric(
        "sft/eval_loss", "SFT 验证损失", "The SFT loss on held-out demonstrations.",
        outside="Rising while sft/loss falls means the model memorises the demonstrations (overfitting).",
    ),
    Metric("reward/loss", "奖励模型损失", "Bradley–Terry loss −mean log σ(r_w − r_l) of the reward model's minibatch of preference pairs."),
    Metric("reward/accuracy", "奖励模型准确率", "Fraction of the minibatch's pairs with r_w > r_l (against the pairs' labels, noise included)."),
    Metric("reward/margin", "奖励差", "Mean r_w − r_l over the minibatch's preference pairs."),
    Metric(
        "reward/eval_accuracy", "奖励模型验证准确率",
        "Fraction of held-out pairs the reward model orders as the noise-free gold reward does (review task), or as labelled (a user's data).",
        low=0.5, outside="At or below 0.5 the reward model is no better than a coin: PPO against it optimises noise.",
    ),
)

METRICS: dict[str, Metric] = {m.key: m for m in _ALL}

# ppo_lab.core.ppo_loss stats → log keys
_LOSS_KEYS = {
    "loss": "loss/total",
    "policy_loss": "policy/loss",
    "entropy": "policy/entropy",
    "clip_fraction": "policy/clip_fraction",
    "approx_kl": "policy/approx_kl",
    "kl": "policy/kl",
    "value_loss": "value/loss",
    "value_clip_fraction": "value/clip_fraction",
}


# The columns a trainer's log row carries besides the metrics: counters and schedule values that
# describe *when* a row was logged, not how healthy the run is (no range, no glossary entry).
BOOKKEEPING: dict[str, str] = {
    "update": "1-based index of the PPO update (one rollout, then K epochs) the row reports.",
    "global_step": "Env steps taken so far: N per vector step, autoreset (ghost) steps included.",
    "time": "Seconds since training started (a resumed run counts the time before its checkpoint).",
    "sps": "Env steps per second during this update (rollout and optimisation).",
    "clip_eps": "The policy clip range ε in use at this update (annealed or not; None = no clipping).",
    "epochs": "Epochs completed in this update (fewer than ppo_epochs after an early stop on KL).",
    "iteration": "1-based index of the PPO-RLHF iteration (one batch of rollouts, then K epochs) the row reports.",
    "episodes": "Responses sampled so far (batch_size per iteration).",
    "tokens_per_second": "Real response tokens of the iteration per second of its generate, score and train stages.",
    "time/generate": "Seconds of the iteration spent sampling responses (stage 1).",
    "time/score": "Seconds spent scoring and on reference log-probs, values, rewards and GAE (stages 2–5).",
    "time/train": "Seconds spent in the PPO epochs (stage 6).",
    "time/iteration": "Seconds of stages 1–6 of the iteration.",
    "step": "1-based optimizer step of SFT or reward-model training the row reports.",
}


def check_keys(record: dict[str, float]) -> dict[str, float]:
    """Return ``record`` unchanged if every key is defined in ``METRICS``; else ``KeyError``."""
    unknown = sorted(set(record) - METRICS.keys())
    if unknown:
        raise KeyError(f"undefined log keys {unknown}: define them in ppo_lab/metrics.py first")
    return record


def loss_metrics(stats: dict[str, float]) -> dict[str, float]:
    """The stats of ``ppo_lab.core.ppo_loss`` under their log keys."""
    unknown = sorted(set(stats) - _LOSS_KEYS.keys())
    if unknown:
        raise KeyError(f"stats: no log key for {unknown}")
    return {_LOSS_KEYS[name]: value for name, value in stats.items()}


def unhealthy(record: dict[str, float | None]) -> dict[str, str]:
    """``{key: reason}`` for each logged value outside its healthy range.

    ``record`` may be a whole trainer log row: :data:`BOOKKEEPING` columns and ``None`` values
    (nothing measured in that update, e.g. no episode ended) are skipped; any other key must be
    defined in :data:`METRICS` (``KeyError`` otherwise).
    """
    out = {}
    metrics = {k: v for k, v in record.items() if k not in BOOKKEEPING}
    for key, value in check_keys(metrics).items():
        metric = METRICS[key]
        if value is not None and metric.is_healthy(value) is False:
            out[key] = f"{value:.4g} outside [{metric.low}, {metric.high}]: {metric.outside}"
    return out


def markdown_table() -> str:
    """The appendix's metrics glossary: one row per metric, in definition order."""

    def bound(x):
        return "" if x is None else f"{x:g}"

    rows = ["| key | 术语 | meaning | healthy | outside the range | source |", "|---|---|---|---|---|---|"]
    for m in _ALL:
        healthy = f"[{bound(m.low) or '−∞'}, {bound(m.high) or '∞'}]" if m.has_range else "task-dependent"
        rows.append(f"| `{m.key}` | {m.name_zh} | {m.description} | {healthy} | {m.outside} | {m.source} |")
    return "\n".join(rows)


# --- episode statistics: the "solved" criterion and the smoothed learning curve --------------


def running_mean(values: Sequence[float], window: int = 20) -> list[float]:
    """Mean of the last ``window`` values at each position (fewer at the start): the learning
    curve the CLI, the benchmarks and chapter 5 draw."""
    out = []
    for i in range(len(values)):
        lo = max(0, i + 1 - window)
        out.append(float(sum(values[lo:i + 1])) / (i + 1 - lo))
    return out


def first_reach(episodes: Sequence[dict], threshold: float, window: int = 20) -> dict | None:
    """The first episode at which the mean return of the last ``window`` episodes is
    ``>= threshold`` (a dict with ``global_step`` and ``time``), or None if it never is."""
    total = 0.0
    for i, episode in enumerate(episodes):
        total += episode["return"]
        if i >= window:
            total -= episodes[i - window]["return"]
        if i + 1 >= window and total / window >= threshold:
            return episode
    return None
