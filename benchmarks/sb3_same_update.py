"""One ppo_lab update equals one Stable-Baselines3 update on the same data and weights.

    python benchmarks/sb3_same_update.py    # writes ppo_lab/results/sb3_same_update.json

The CartPole comparison (``benchmarks/cartpole.py``) claims the ``cartpole-zoo`` preset and SB3
run the same algorithm. This checks the update half of that claim directly, for seeds 0–4:

1. SB3 (zoo CartPole hyperparameters) builds its policy and collects one rollout of
   8 envs × 32 steps, with its own advantages and returns.
2. A ppo_lab ``ActorCritic`` receives SB3's initial weights; its log-probabilities and values on
   the rollout are compared with SB3's stored ones.
3. Both run one update (20 epochs on the 256 transitions, the learning rate and clip range of
   the first update, fresh Adam states): SB3's ``PPO.train`` and ppo_lab's ``_optimise``
   (through ``FlatParameters``) on SB3's rollout buffer. The weights after it are compared.

What it does not check is the other half: the rollouts themselves (ppo_lab's numpy-vectorised
``CartPoleVectorEnv`` with next-step autoreset against SB3's ``DummyVecEnv``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SB3_CARTPOLE_ZOO, write  # noqa: E402

TOTAL = 200_000  # the zoo run's length: sets the learning rate and clip range of update 1


def compare(seed: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from ppo_lab.scale.flat import FlatParameters
    from ppo_lab.toy.networks import ActorCritic
    from ppo_lab.toy.ppo import PRESETS, _optimise
    from ppo_lab.toy.rollout import RolloutBatch

    torch.set_num_threads(1)
    model = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=seed), seed=seed,
                device="cpu", **SB3_CARTPOLE_ZOO)
    _, callback = model._setup_learn(TOTAL, None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=32)
    model._update_current_progress_remaining(model.num_timesteps, TOTAL)
    policy, buffer = model.policy, model.rollout_buffer

    # SB3's initial weights into ppo_lab's network: the same layers (nn.Linear), module for module
    agent = ActorCritic(4, 2, continuous=False)
    modules = [(agent.policy_net, policy.mlp_extractor.policy_net), (agent.value_net, policy.mlp_extractor.value_net),
               (agent.policy_head, policy.action_net), (agent.value_head, policy.value_net)]
    for ours, theirs in modules:
        ours.load_state_dict(theirs.state_dict())

    T, N = 32, 8
    f32 = dict(dtype=torch.float32)
    obs = torch.as_tensor(buffer.observations, **f32)  # [T, N, 4]
    actions = torch.as_tensor(buffer.actions[..., 0]).long()  # [T, N]
    old_logprobs, old_values = torch.as_tensor(buffer.log_probs, **f32), torch.as_tensor(buffer.values, **f32)
    # copies, taken before PPO.train: its first buffer.get() reorders the arrays to env-major
    advantages, returns = (torch.tensor(buffer.advantages, **f32), torch.tensor(buffer.returns, **f32))
    obs, actions, old_logprobs, old_values = (t.clone() for t in (obs, actions, old_logprobs, old_values))
    with torch.no_grad():
        logprobs, _, values = agent.evaluate(obs.flatten(0, 1), actions.flatten())
    forward_diff = max((logprobs - old_logprobs.flatten()).abs().max().item(),
                       (values - old_values.flatten()).abs().max().item())

    def pairs():
        """(ppo_lab tensor, SB3 tensor) for every weight and bias."""
        return [(a, b) for ours, theirs in modules for a, b in zip(ours.parameters(), theirs.parameters(), strict=True)]

    before = [a.detach().clone() for a, _ in pairs()]
    progress = model._current_progress_remaining
    batch = RolloutBatch(obs=obs, actions=actions, logprobs=old_logprobs, values=old_values,
                         next_values=old_values, rewards=torch.zeros(T, N),
                         terminated=torch.zeros(T, N, dtype=torch.bool),
                         truncated=torch.zeros(T, N, dtype=torch.bool),
                         mask=torch.ones(T, N, dtype=torch.bool))
    config = PRESETS["cartpole-zoo"][1]
    flat = FlatParameters(agent)
    optimizer = torch.optim.Adam([flat.param], lr=1e-3 * progress, eps=config.adam_eps)
    model.train()
    stats, epochs = _optimise(agent, flat, optimizer, batch, advantages, returns, config,
                              clip_eps=0.2 * progress)  # one minibatch of all 256, as SB3's
    with torch.no_grad():
        diff = max((a - b).abs().max().item() for a, b in pairs())
        moved = max((a - w).abs().max().item() for (a, _), w in zip(pairs(), before))
    return {"seed": seed, "epochs": epochs, "learning_rate": 1e-3 * progress, "clip_eps": 0.2 * progress,
            "max_abs_forward_diff": forward_diff, "max_abs_weight_diff_after_update": diff,
            "max_abs_weight_change_by_update": moved,
            "ppo_lab_clip_fraction": stats["policy/clip_fraction"],
            "ppo_lab_approx_kl": stats["policy/approx_kl"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default ppo_lab/results/sb3_same_update.json)")
    args = parser.parse_args()
    rows = [compare(seed) for seed in args.seeds]
    for row in rows:
        print(row)
    worst = max(r["max_abs_weight_diff_after_update"] for r in rows)
    path = write("sb3_same_update", {"seeds": args.seeds, "total_timesteps": TOTAL, "epochs": 20,
                                     "batch": 256, "torch_threads": 1}, rows, out=args.out,
                 summary={"max_abs_weight_diff_after_update": worst,
                          "min_weight_change_by_update": min(r["max_abs_weight_change_by_update"] for r in rows)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
