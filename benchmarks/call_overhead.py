"""What a few microseconds per call are worth: four savings in ppo_lab's CartPole loop, measured.

    python benchmarks/call_overhead.py    # writes ppo_lab/results/call_overhead.json

Chapter 5 (§5.7) finds that a CartPole gradient step costs mostly a fixed amount per operator and
per Python call, not arithmetic. Four changes to ppo_lab remove calls and leave every number the
same, bit for bit:

- ``tanh``: the hidden activation −1 + 2σ(2x) as ``torch.add(-1.0, s, alpha=2)``, one operator
  (and one autograd node) where ``s * 2 - 1`` takes two;
- ``layer calls``: ``ActorCritic`` applies its layers through ``forward`` instead of calling the
  modules (``nn.Module.__call__`` dispatches hooks first);
- ``sampling``: one categorical draw per row by the exponential race, the algorithm
  ``torch.multinomial(probs, 1)`` runs, without its checks of the input;
- ``adam``: ``FlatParameters.adam_step`` (one call of ``torch.optim.adam.adam``) instead of
  ``Optimizer.step``.

This script rebuilds the earlier form of each and, in one process on one thread, times the two
stages of a ``cartpole-zoo`` update: the rollout (``collect_rollout``, 8 envs × 32 steps) and the
update (``_optimise``, 20 gradient steps on that batch). Variants: all four earlier forms
(``before``), all four current ones (``after``), and ``after`` with one change undone, for each
change. Every variant trains its own copy of the same agent on its own env; one round times one
update of each variant in turn, so drifts in machine load hit all variants alike; medians over
the rounds are compared. Before timing, the script checks that ``before`` and ``after`` produce
identical actions and weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

CHANGES = ("tanh", "layer calls", "sampling", "adam")
ROUNDS = 60  # timed rounds (--rounds); 5 more are run first and not timed


def _build(old: frozenset[str], seed: int = 0):
    """A ``cartpole-zoo`` agent, its flat buffers, Adam and env, with the changes in ``old``
    reverted to their earlier form."""
    import torch
    from torch import nn

    from ppo_lab.core import logprobs_from_logits
    from ppo_lab.scale.flat import FlatParameters
    from ppo_lab.toy.networks import ActorCritic, Tanh
    from ppo_lab.toy.ppo import PRESETS
    from ppo_lab.toy.rollout import make_vector_env, reset_rollout_state

    class TwoOpTanh(nn.Module):
        def forward(self, x):
            return torch.sigmoid(2 * x) * 2 - 1

    def called_layers(self, obs):
        hidden = self.trunk(obs)  # nn.Sequential → nn.Module.__call__ for every layer
        policy_hidden, value_hidden = hidden
        return self.policy_head(policy_hidden), self.value_head(value_hidden).squeeze(-1)

    def multinomial_act(self, obs):
        out, values = self._policy_and_value(obs)
        actions = torch.multinomial(torch.softmax(out, dim=-1), 1).squeeze(-1)
        return actions, logprobs_from_logits(out, actions), values

    class OptimizerStep(FlatParameters):
        def adam_step(self, optimizer):
            optimizer.step()

    config = PRESETS["cartpole-zoo"][1]
    torch.manual_seed(seed)
    envs = make_vector_env(config.env_id, config.num_envs)
    agent = ActorCritic.for_spaces(envs.single_observation_space, envs.single_action_space)
    if "tanh" in old:
        for i, layer in enumerate(agent.trunk):
            if isinstance(layer, Tanh):
                agent.trunk[i] = TwoOpTanh()
    if "layer calls" in old:
        agent._policy_and_value = types.MethodType(called_layers, agent)
    if "sampling" in old:
        agent.act = types.MethodType(multinomial_act, agent)
    flat = (OptimizerStep if "adam" in old else FlatParameters)(agent)
    optimizer = torch.optim.Adam([flat.param], lr=config.learning_rate, eps=config.adam_eps,
                                 fused=True)
    state = reset_rollout_state(envs, seed, "cpu")
    return config, envs, agent, flat, optimizer, state


def _update(config, envs, agent, flat, optimizer, state):
    """One rollout and one update: (rollout seconds, update seconds, gradient steps, actions)."""
    from ppo_lab.core import gae_advantages
    from ppo_lab.toy.ppo import _optimise
    from ppo_lab.toy.rollout import collect_rollout

    start = time.perf_counter()
    batch = collect_rollout(envs, agent, state, config.num_steps)
    rollout = time.perf_counter() - start
    advantages, returns = gae_advantages(
        rewards=batch.rewards, values=batch.values, next_values=batch.next_values,
        terminated=batch.terminated, episode_ends=batch.episode_ends, gamma=config.gamma,
        gae_lambda=config.gae_lambda)
    start = time.perf_counter()
    _, epochs = _optimise(agent, flat, optimizer, batch, advantages, returns, config,
                          config.num_envs * config.num_steps, clip_eps=config.clip_eps)
    return rollout, time.perf_counter() - start, epochs, batch.actions


def check_identical(updates: int = 5) -> dict:
    """``before`` and ``after`` from the same seed: the same actions and the same weights."""
    import torch

    runs = {}
    for name, old in (("before", frozenset(CHANGES)), ("after", frozenset())):
        config, envs, agent, flat, optimizer, state = _build(old)
        torch.manual_seed(1)
        actions = [_update(config, envs, agent, flat, optimizer, state)[3] for _ in range(updates)]
        runs[name] = (torch.stack(actions), flat.param.detach().clone())
        envs.close()
    same_actions = torch.equal(runs["before"][0], runs["after"][0])
    same_weights = torch.equal(runs["before"][1], runs["after"][1])
    if not (same_actions and same_weights):
        raise AssertionError(f"before and after differ: actions equal {same_actions}, "
                             f"weights equal {same_weights}")
    return {"updates": updates, "identical_actions": same_actions,
            "identical_weights": same_weights}


def summarise(rows: list[dict], vector_steps: int, gradient_steps: int) -> dict:
    """Per variant, the time of one update (``vector_steps`` rollout steps and ``gradient_steps``
    gradient steps); per change, what undoing it costs; and ``before`` against ``after``."""
    per = {r["variant"]: (r["us_per_vector_step"], r["us_per_gradient_step"],
                          (vector_steps * r["us_per_vector_step"]
                           + gradient_steps * r["us_per_gradient_step"]) / 1e3) for r in rows}
    after, before = per["after"], per["before"]
    savings = {}
    for change in CHANGES:
        undone = per[f"after, {change} as before"]
        savings[change] = {
            "us_per_vector_step": round(undone[0] - after[0], 1),
            "us_per_gradient_step": round(undone[1] - after[1], 1),
            "ms_per_update": round(undone[2] - after[2], 3),
            "share_of_before_update": round((undone[2] - after[2]) / before[2], 4),
        }
    return {
        "ms_per_update": {name: round(p[2], 3) for name, p in per.items()},
        "savings": savings,
        "before/after per update": round(before[2] / after[2], 3),
        "before/after per vector step": round(before[0] / after[0], 3),
        "before/after per gradient step": round(before[1] / after[1], 3),
        "sum of the four savings / (before - after)": round(
            sum(s["ms_per_update"] for s in savings.values()) / (before[2] - after[2]), 3),
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default ppo_lab/results/call_overhead.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wall_start = time.perf_counter()
    identical = check_identical()
    print(f"before and after: identical actions and weights over {identical['updates']} updates")

    variants = {"before": frozenset(CHANGES), "after": frozenset()}
    variants.update({f"after, {change} as before": frozenset({change}) for change in CHANGES})
    setups = {name: _build(old) for name, old in variants.items()}
    times: dict[str, dict[str, list[float]]] = {
        name: {"rollout": [], "update": []} for name in variants}
    for round_ in range(args.rounds + 5):
        for name, setup in setups.items():
            rollout, update, steps, _ = _update(*setup)
            if round_ >= 5:
                times[name]["rollout"].append(rollout / setup[0].num_steps)
                times[name]["update"].append(update / steps)
    for setup in setups.values():
        setup[1].close()

    zoo = setups["after"][0]
    rows = []
    for name, t in times.items():
        vector_us = 1e6 * statistics.median(t["rollout"])
        gradient_us = 1e6 * statistics.median(t["update"])
        rows.append({"variant": name, "us_per_vector_step": round(vector_us, 1),
                     "us_per_gradient_step": round(gradient_us, 1), "rounds": len(t["rollout"])})
        print(f"{name:34s} {vector_us:7.1f} us/vector step {gradient_us:7.1f} us/gradient step")
    summary = {**summarise(rows, zoo.num_steps, zoo.ppo_epochs), "identical": identical}
    for change, saved in summary["savings"].items():
        print(f"saved by {change:12s}: {saved}")
    print(f"before/after per update: {summary['before/after per update']}")
    path = write("call_overhead",
                 {"preset": "cartpole-zoo", "rounds": args.rounds, "warm-up rounds": 5,
                  "torch_threads": 1, "changes": list(CHANGES),
                  "vector_steps_per_update": zoo.num_steps, "gradient_steps_per_update": zoo.ppo_epochs,
                  "benchmark_wall_seconds": round(time.perf_counter() - wall_start, 1)},
                 rows, out=args.out, summary=summary)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
