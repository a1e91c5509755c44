"""What a few microseconds per call are worth: per-call savings in a CartPole PPO loop, measured.

    python benchmarks/call_overhead.py    # writes ppo_lab/results/call_overhead.json

A CartPole gradient step costs mostly a fixed amount per operator and per Python call, not
arithmetic (``benchmarks/cartpole_stages.py``). ppo_lab's training loop is written as a textbook
writes it; this script measures what five tricks that remove calls would save on top of it, and
what one design choice the loop does make saves:

tricks (not in ppo_lab; defined below as teaching material for the engineering appendix)
- ``sigmoid tanh``: the hidden activation as −1 + 2σ(2x) in two operators
  (``torch.add(-1.0, s, alpha=2)``) instead of ``nn.Tanh`` (this CPU's tanh kernel is slower
  than its sigmoid kernel); the same function up to float32 rounding;
- ``forward calls``: the layers applied through ``layer.forward`` instead of calling the
  modules (``nn.Module.__call__`` dispatches hooks first);
- ``exponential race``: one categorical draw per row as argmax_i p_i / E_i, E_i ~ Exp(1), the
  algorithm ``torch.multinomial(probs, 1)`` runs, without ``Categorical``'s and multinomial's
  checks of their input;
- ``functional adam``: ``torch.optim.adam.adam`` called directly (:func:`functional_adam_step`)
  instead of ``optimizer.step()``, without ``Optimizer.step``'s per-call machinery;
- ``twin layers``: the policy and value MLPs' hidden layers fused pairwise (:class:`TwinLinear`),
  one batched matmul for both networks' layer instead of two ``nn.Linear`` calls; the same
  function up to float32 rounding.

design (in ppo_lab, undone here to measure it)
- ``flat buffers``: ``FlatParameters``, Adam, clipping and zeroing over one tensor, undone as
  Adam over the 10 parameter tensors and ``torch.nn.utils.clip_grad_norm_``.

In one process on one thread, it times the two stages of a ``cartpole-zoo`` update: the rollout
(``collect_rollout``, 8 envs × 32 steps) and the update (``_optimise``, 20 gradient steps on that
batch). Variants: ``textbook`` (ppo_lab as it is), ``all five tricks``, ``textbook + <trick>``
for each trick and ``textbook without <design>`` for each design choice. Every variant trains its
own copy of the same agent on its own env; one round times one update of each variant in turn,
in a new random order each round, so drifts in machine load hit all variants alike; medians over
the rounds are compared. Before
timing, the script checks that three of the tricks leave every number the same: ``textbook``
and ``textbook + forward calls, exponential race, functional adam`` give identical actions and
weights; the sigmoid tanh is checked against ``torch.tanh`` and the twin layers against the two
networks they fuse, to float32 rounding.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

TRICKS = ("sigmoid tanh", "forward calls", "exponential race", "functional adam", "twin layers")
INEXACT = ("sigmoid tanh", "twin layers")  # the same function up to float32 rounding
DESIGN = ("flat buffers",)
ROUNDS = 60  # timed rounds (--rounds); 5 more are run first and not timed


class SigmoidTanh(nn.Module):
    """tanh(x) = 2σ(2x) − 1; −1 + 2s as one operator (doubling is exact, so it rounds as s·2 − 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(-1.0, torch.sigmoid(2 * x), alpha=2)


def forward_calls(self, obs: torch.Tensor):
    """``ActorCritic._policy_and_value`` (separate networks) with every layer applied through
    ``forward``; with twin layers, the fused stack instead of the two networks."""
    if hasattr(self, "twin"):
        hidden = obs
        for layer in self.twin:
            hidden = layer.forward(hidden)
        policy_hidden, value_hidden = hidden
    else:
        policy_hidden = value_hidden = obs
        for layer in self.policy_net:
            policy_hidden = layer.forward(policy_hidden)
        for layer in self.value_net:
            value_hidden = layer.forward(value_hidden)
    return self.policy_head.forward(policy_hidden), self.value_head.forward(value_hidden).squeeze(-1)


class TwinLinear(nn.Module):
    """Two independent ``Linear(in_dim, out_dim)`` layers — slice 0 for the policy, slice 1 for
    the value function — applied by one batched matmul.

    Separate policy and value MLPs see the same input, so their layers can run side by side:
    ``[2, B, in] @ [2, in, out] + [2, 1, out] → [2, B, out]``, half as many operators as two
    ``nn.Linear`` calls. :meth:`fuse` copies two ``nn.Linear`` layers into one.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(2, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(2, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    @classmethod
    def fuse(cls, policy: nn.Linear, value: nn.Linear) -> TwinLinear:
        twin = cls(policy.in_features, policy.out_features)
        with torch.no_grad():
            for i, layer in enumerate((policy, value)):
                twin.weight[i].copy_(layer.weight.T)  # nn.Linear holds [out, in]
                twin.bias[i, 0].copy_(layer.bias)
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # [B, in]: the same input for both
            x = x.expand(2, *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)  # [2, B, out]


def twin_layers(agent: nn.Module) -> nn.Sequential:
    """The agent's policy and value networks fused layer by layer, with their current weights."""
    layers = [TwinLinear.fuse(p, v) if isinstance(p, nn.Linear) else p
              for p, v in zip(agent.policy_net, agent.value_net)]
    return nn.Sequential(*layers)


def twin_policy_and_value(self, obs: torch.Tensor):
    """``ActorCritic._policy_and_value`` through the fused stack."""
    policy_hidden, value_hidden = self.twin(obs)  # [2, B, H]
    return self.policy_head(policy_hidden), self.value_head(value_hidden).squeeze(-1)


def exponential_race_act(self, obs: torch.Tensor):
    """``ActorCritic.act`` (discrete) drawing a = argmax_i p_i / E_i with E_i ~ Exp(1)."""
    from ppo_lab.core import logprobs_from_logits

    out, values = self._policy_and_value(obs)
    probs = torch.softmax(out, dim=-1)  # [B, num_actions]
    actions = torch.argmax(probs / torch.empty_like(probs).exponential_(), dim=-1)  # [B]
    return actions, logprobs_from_logits(out, actions), values


def functional_adam_step(optimizer: torch.optim.Adam) -> None:
    """``optimizer.step()`` for an Adam over one tensor, bit for bit, minus ``Optimizer.step``'s
    hooks, profiler record, grad-mode switch and walk over param groups: the same call of
    ``torch.optim.adam.adam`` with the same state. The first call creates the state."""
    from torch.optim.adam import adam

    group = optimizer.param_groups[0]
    (param,) = group["params"]
    state = optimizer.state.get(param)
    if not state:
        return torch.optim.Adam.step(optimizer)
    beta1, beta2 = group["betas"]
    with torch.no_grad():
        adam([param], [param.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
             foreach=group["foreach"], capturable=group["capturable"], differentiable=False,
             fused=group["fused"], grad_scale=None, found_inf=None, has_complex=False,
             decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=False,
             beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
             eps=group["eps"], maximize=group["maximize"])


class PerTensor:
    """What ``_optimise`` asks of ``FlatParameters``, over the module's own parameter tensors."""

    def __init__(self, module: nn.Module):
        self.params = list(module.parameters())

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def clip_grad_norm_(self, max_norm):
        return torch.nn.utils.clip_grad_norm_(self.params, max_norm if max_norm else float("inf"))


def _build(changes: frozenset[str], seed: int = 0):
    """A ``cartpole-zoo`` agent, its parameter buffers, Adam and env, with ``changes`` applied:
    tricks added, design choices undone."""
    from ppo_lab.scale.flat import FlatParameters
    from ppo_lab.toy.networks import ActorCritic
    from ppo_lab.toy.ppo import PRESETS
    from ppo_lab.toy.rollout import make_vector_env, reset_rollout_state

    config = PRESETS["cartpole-zoo"][1]
    torch.manual_seed(seed)
    envs = make_vector_env(config.env_id, config.num_envs)
    agent = ActorCritic.for_spaces(envs.single_observation_space, envs.single_action_space)
    if "twin layers" in changes:
        agent.twin = twin_layers(agent)
        del agent.policy_net, agent.value_net
        agent._policy_and_value = types.MethodType(twin_policy_and_value, agent)
    if "sigmoid tanh" in changes:
        for name, module in list(agent.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Tanh):
                    setattr(module, child_name, SigmoidTanh())
    if "forward calls" in changes:
        agent._policy_and_value = types.MethodType(forward_calls, agent)
    if "exponential race" in changes:
        agent.act = types.MethodType(exponential_race_act, agent)
    if "flat buffers" in changes:
        buffers = PerTensor(agent)
        params = buffers.params
    else:
        buffers = FlatParameters(agent)
        params = [buffers.param]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, eps=config.adam_eps, fused=True)
    if "functional adam" in changes:
        optimizer.step = types.MethodType(functional_adam_step, optimizer)
    state = reset_rollout_state(envs, seed, "cpu")
    return config, envs, agent, buffers, optimizer, state


def _update(config, envs, agent, buffers, optimizer, state):
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
    _, epochs = _optimise(agent, buffers, optimizer, batch, advantages, returns, config,
                          clip_eps=config.clip_eps)
    return rollout, time.perf_counter() - start, epochs, batch.actions


def check_identical(updates: int = 5) -> dict:
    """``textbook`` and ``textbook`` + the three exact tricks, from the same seed: the same actions
    and the same weights; the sigmoid tanh against ``torch.tanh``, the twin layers against the two
    networks they fuse."""
    runs = {}
    exact = frozenset(TRICKS) - set(INEXACT)
    for name, changes in (("textbook", frozenset()), ("exact tricks", exact)):
        config, envs, agent, buffers, optimizer, state = _build(changes)
        torch.manual_seed(1)
        actions = [_update(config, envs, agent, buffers, optimizer, state)[3] for _ in range(updates)]
        runs[name] = (torch.stack(actions), buffers.param.detach().clone())
        envs.close()
    same_actions = torch.equal(runs["textbook"][0], runs["exact tricks"][0])
    same_weights = torch.equal(runs["textbook"][1], runs["exact tricks"][1])
    if not (same_actions and same_weights):
        raise AssertionError(f"the exact tricks change the run: actions equal {same_actions}, "
                             f"weights equal {same_weights}")
    x = torch.linspace(-20, 20, 400_001)
    tanh_error = (SigmoidTanh()(x) - torch.tanh(x)).abs().max().item()
    if not tanh_error < 1e-6:
        raise AssertionError(f"sigmoid tanh differs from torch.tanh by {tanh_error}")
    _, envs, agent, *_ = _build(frozenset())
    envs.close()
    obs = torch.randn(1000, agent.policy_net[0].in_features)
    with torch.no_grad():
        want = agent._policy_and_value(obs)
        agent.twin = twin_layers(agent)
        got = twin_policy_and_value(agent, obs)
    twin_error = max((g - w).abs().max().item() for g, w in zip(got, want))
    if not twin_error < 1e-5:
        raise AssertionError(f"twin layers differ from the two networks by {twin_error}")
    return {"updates": updates, "tricks": sorted(exact), "identical_actions": same_actions,
            "identical_weights": same_weights, "sigmoid_tanh_max_abs_error": tanh_error,
            "twin_layers_max_abs_error": twin_error}


def variants() -> dict[str, frozenset[str]]:
    """Variant name -> the changes it applies to ppo_lab's loop."""
    out = {"textbook": frozenset(), "all five tricks": frozenset(TRICKS)}
    out.update({f"textbook + {trick}": frozenset({trick}) for trick in TRICKS})
    out.update({f"textbook without {design}": frozenset({design}) for design in DESIGN})
    return out


def summarise(rows: list[dict], vector_steps: int, gradient_steps: int) -> dict:
    """Per variant, the time of one update (``vector_steps`` rollout steps and ``gradient_steps``
    gradient steps); per change, how much it changes that time against ``textbook`` (positive:
    the variant is slower), also as a share of the textbook update."""
    per = {r["variant"]: (r["us_per_vector_step"], r["us_per_gradient_step"],
                          (vector_steps * r["us_per_vector_step"]
                           + gradient_steps * r["us_per_gradient_step"]) / 1e3) for r in rows}
    base = per["textbook"]

    def change(name):
        v = per[name]
        return {"us_per_vector_step": round(v[0] - base[0], 1),
                "us_per_gradient_step": round(v[1] - base[1], 1),
                "ms_per_update": round(v[2] - base[2], 3),
                "share_of_textbook_update": round((v[2] - base[2]) / base[2], 4)}

    tricks = {trick: change(f"textbook + {trick}") for trick in TRICKS}
    design = {d: change(f"textbook without {d}") for d in DESIGN}
    return {
        "ms_per_update": {name: round(p[2], 3) for name, p in per.items()},
        "tricks (negative: saved)": tricks,
        "design undone (positive: what it saves)": design,
        "all five tricks / textbook per update": round(per["all five tricks"][2] / base[2], 3),
        "sum of the five tricks / (all five tricks - textbook)": round(
            sum(t["ms_per_update"] for t in tricks.values())
            / (per["all five tricks"][2] - base[2]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default ppo_lab/results/call_overhead.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wall_start = time.perf_counter()
    identical = check_identical()
    print(f"textbook and textbook + {identical['tricks']}: identical actions and weights over "
          f"{identical['updates']} updates; sigmoid tanh within "
          f"{identical['sigmoid_tanh_max_abs_error']:.1e} of torch.tanh, twin layers within "
          f"{identical['twin_layers_max_abs_error']:.1e} of the two networks")

    setups = {name: _build(changes) for name, changes in variants().items()}
    times: dict[str, dict[str, list[float]]] = {
        name: {"rollout": [], "update": []} for name in setups}
    order = random.Random(0)  # each round runs the variants in a new order: no variant always follows another
    for round_ in range(args.rounds + 5):
        for name in order.sample(list(setups), len(setups)):
            setup = setups[name]
            rollout, update, steps, _ = _update(*setup)
            if round_ >= 5:
                times[name]["rollout"].append(rollout / setup[0].num_steps)
                times[name]["update"].append(update / steps)
    for setup in setups.values():
        setup[1].close()

    zoo = setups["textbook"][0]
    rows = []
    for name, t in times.items():
        vector_us = 1e6 * statistics.median(t["rollout"])
        gradient_us = 1e6 * statistics.median(t["update"])
        rows.append({"variant": name, "us_per_vector_step": round(vector_us, 1),
                     "us_per_gradient_step": round(gradient_us, 1), "rounds": len(t["rollout"])})
        print(f"{name:34s} {vector_us:7.1f} us/vector step {gradient_us:7.1f} us/gradient step")
    summary = {**summarise(rows, zoo.num_steps, zoo.ppo_epochs), "identical": identical}
    for key in ("tricks (negative: saved)", "design undone (positive: what it saves)"):
        for name, delta in summary[key].items():
            print(f"{name:18s}: {delta}")
    print(f"all five tricks / textbook per update: {summary['all five tricks / textbook per update']}")
    path = write("call_overhead",
                 {"preset": "cartpole-zoo", "rounds": args.rounds, "warm-up rounds": 5,
                  "torch_threads": 1, "tricks": list(TRICKS), "design": list(DESIGN),
                  "vector_steps_per_update": zoo.num_steps, "gradient_steps_per_update": zoo.ppo_epochs,
                  "benchmark_wall_seconds": round(time.perf_counter() - wall_start, 1)},
                 rows, out=args.out, summary=summary)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
