"""ppo_lab.toy.ppo: determinism, ghost steps never reach a loss, switches, resume, devices."""

from __future__ import annotations

import math

import pytest
import torch

from ppo_lab import metrics
from ppo_lab.core import gae_advantages
from ppo_lab.scale.flat import FlatParameters
from ppo_lab.toy.networks import ActorCritic
import ppo_lab.toy.ppo as ppo_module
from ppo_lab.toy.ppo import CHECKPOINT_NAME, PRESETS, PPOConfig, _minibatches, _optimise, train
from ppo_lab.toy.rollout import collect_rollout, make_vector_env, reset_rollout_state

SMALL = PPOConfig(env_id="CartPole-v1", seed=3, total_timesteps=2048, num_envs=4, num_steps=64,
                  num_minibatches=4, ppo_epochs=2, learning_rate=1e-3)


def _weights(agent):
    return {k: v.detach().clone() for k, v in agent.state_dict().items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_same_weights_on_cpu():
    first, second = train(SMALL), train(SMALL)
    _assert_same_weights(_weights(first.agent), _weights(second.agent))
    assert [e["return"] for e in first.episodes] == [e["return"] for e in second.episodes]
    other = train(SMALL.replace(seed=4))
    assert not torch.equal(other.agent.policy_head.weight, first.agent.policy_head.weight)


def test_history_rows():
    result = train(SMALL)
    assert len(result.history) == 8  # 2048 // (4 * 64)
    row = result.history[-1]
    assert row["global_step"] == 2048 and row["update"] == 8 and row["epochs"] == 2
    for key in ("env/episodic_return", "value/explained_variance", "policy/approx_kl",
                "policy/clip_fraction", "policy/entropy", "value/loss", "loss/total",
                "optim/learning_rate", "optim/grad_norm"):
        assert key in row and math.isfinite(row[key]), key
    # detail 4: linear annealing, 1 → 1/num_updates of the initial rate
    assert result.history[0]["optim/learning_rate"] == pytest.approx(1e-3)
    assert row["optim/learning_rate"] == pytest.approx(1e-3 / 8)
    assert all(e["length"] == e["return"] for e in result.episodes)  # CartPole pays 1 per step
    # every column is a defined metric or a bookkeeping column, and a whole row can be checked
    for row in result.history:
        assert row.keys() - metrics.BOOKKEEPING.keys() <= metrics.METRICS.keys()
        # the toy trainer's own bookkeeping columns (BOOKKEEPING also defines the RLHF/SFT ones)
        assert {"update", "global_step", "time", "sps", "clip_eps", "epochs"} <= row.keys()
        assert all(key in metrics.METRICS for key in metrics.unhealthy(row))


def _rollout_and_advantages(seed=0, num_steps=200):
    torch.manual_seed(seed)
    envs = make_vector_env("CartPole-v1", 4)
    agent = ActorCritic.for_spaces(envs.single_observation_space, envs.single_action_space)
    state = reset_rollout_state(envs, seed, "cpu")
    batch = collect_rollout(envs, agent, state, num_steps)
    advantages, returns = gae_advantages(
        rewards=batch.rewards, values=batch.values, next_values=batch.next_values,
        terminated=batch.terminated, episode_ends=batch.episode_ends, gamma=0.99, gae_lambda=0.95)
    return agent, batch, advantages, returns


def test_ghost_steps_never_reach_a_loss_or_statistic():
    """Poison every ghost (autoreset) row with NaN: if any reached a loss, a gradient, a
    normaliser or a logged mean, the weights or the statistics would turn NaN."""
    agent, batch, advantages, returns = _rollout_and_advantages()
    ghosts = ~batch.mask
    assert ghosts.sum() > 10
    for tensor in (batch.obs, batch.logprobs, batch.values, advantages, returns):
        tensor[ghosts] = math.nan
    batch.actions[ghosts] = 10**6  # not even a valid action index
    clean = ActorCritic(4, 2, continuous=False)
    clean.load_state_dict(agent.state_dict())
    flat = FlatParameters(agent)
    optimizer = torch.optim.Adam([flat.param], lr=1e-3)
    config = SMALL.replace(ppo_epochs=3, vf_clip_eps=0.2, ent_coef=0.01)  # 4 minibatches
    stats, epochs = _optimise(agent, flat, optimizer, batch, advantages, returns, config,
                              clip_eps=0.2)
    assert epochs == 3
    assert all(math.isfinite(v) for v in stats.values()), stats
    for name, p in agent.named_parameters():
        assert torch.isfinite(p).all(), name
    assert not torch.equal(agent.policy_head.weight, clean.policy_head.weight)  # it did learn


def test_ghost_steps_are_dropped_not_zeroed():
    """The update on a batch equals the update on the same batch with ghost rows replaced by
    anything else: they are removed, not merely multiplied by 0 inside some mean."""
    agent, batch, advantages, returns = _rollout_and_advantages(seed=1)
    copy = ActorCritic(4, 2, continuous=False)
    copy.load_state_dict(agent.state_dict())
    config = SMALL.replace(ppo_epochs=2, num_minibatches=8)

    def update(model):
        torch.manual_seed(7)
        flat = FlatParameters(model)
        _optimise(model, flat, torch.optim.Adam([flat.param], lr=1e-3), batch, advantages,
                  returns, config, clip_eps=0.2)

    update(agent)
    ghosts = ~batch.mask
    batch.values[ghosts], advantages[ghosts], returns[ghosts] = 1e6, -1e6, 1e6
    update(copy)
    _assert_same_weights(_weights(agent), _weights(copy))


def test_minibatches_cover_every_transition_once():
    # Eq. (5.1) counts M minibatches an epoch; ghost steps leave a count M need not divide,
    # and no transition is left out: the sizes differ by at most one
    torch.manual_seed(0)
    for num, m, sizes in [(10, 4, [3, 3, 2, 2]), (9, 4, [3, 2, 2, 2]), (8, 4, [2, 2, 2, 2]),
                          (509, 2, [255, 254])]:
        batches = _minibatches(num, m, torch.device("cpu"))
        assert [len(b) for b in batches] == sizes
        assert sorted(torch.cat(batches).tolist()) == list(range(num))
    # one minibatch holds the whole batch: taken as it is, no shuffle drawn from the generator
    state = torch.get_rng_state()
    assert _minibatches(10, 1, torch.device("cpu")) == [None]
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("num, m", [(7, 4), (1, 1), (0, 1)])
def test_minibatches_too_small_to_whiten_fail_loudly(num, m):
    with pytest.raises(ValueError, match=f"^num_minibatches: {num} real transitions"):
        _minibatches(num, m, torch.device("cpu"))


def test_an_epoch_takes_num_minibatches_steps_despite_ghosts():
    """A rollout with ghost steps has fewer real transitions than B; each epoch still takes
    exactly num_minibatches gradient steps."""
    agent, batch, advantages, returns = _rollout_and_advantages(seed=3)
    real = int(batch.mask.sum())
    assert real < batch.mask.numel() and real % 8 != 0  # not divisible by M = 8
    flat = FlatParameters(agent)
    optimizer = torch.optim.Adam([flat.param], lr=1e-3)
    steps = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    config = SMALL.replace(ppo_epochs=3, num_minibatches=8)
    _optimise(agent, flat, optimizer, batch, advantages, returns, config, clip_eps=0.2)
    assert len(steps) == 3 * 8


def test_early_stop_on_kl():
    result = train(SMALL.replace(ppo_epochs=10, target_kl=1e-6, total_timesteps=512))
    assert all(row["epochs"] < 10 for row in result.history)
    result = train(SMALL.replace(ppo_epochs=3, target_kl=10.0, total_timesteps=512))
    assert all(row["epochs"] == 3 for row in result.history)


def test_switches_for_the_ablations_run():
    for changes in (dict(clip_eps=None), dict(norm_adv=False), dict(gae_lambda=1.0),
                    dict(vf_clip_eps=0.2), dict(max_grad_norm=None), dict(anneal_lr=False),
                    dict(anneal_clip=True), dict(shared_trunk=True), dict(ent_coef=0.01),
                    dict(normalize_obs=True, normalize_reward=True),
                    dict(vectorization_mode="sync")):
        result = train(SMALL.replace(total_timesteps=512, **changes))
        row = result.history[-1]
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), changes
    no_clip = train(SMALL.replace(total_timesteps=512, clip_eps=None, ppo_epochs=8))
    assert all(r["policy/clip_fraction"] == 0.0 and r["clip_eps"] is None for r in no_clip.history)
    annealed = train(SMALL.replace(total_timesteps=1024, anneal_clip=True))
    assert [r["clip_eps"] for r in annealed.history] == pytest.approx([0.2, 0.15, 0.1, 0.05])


def test_pendulum_short_run():
    config = PRESETS["pendulum"][1].replace(total_timesteps=4096, num_steps=256, num_minibatches=4)
    result = train(config)
    assert result.agent.continuous and len(result.history) == 4
    assert len(result.episodes) == 20  # 4 envs x (1024 // 201): 200 steps, then a ghost step
    assert all(-2000 < e["return"] < 0 and e["length"] == 200 for e in result.episodes)


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("base", [SMALL, SMALL.replace(clip_eps=None, kl_penalty=True)],
                         ids=["clipped", "kl-penalty"])  # the KL penalty's β is checkpointed too
def test_resume_in_process_matches(tmp_path, monkeypatch, base):
    """Stop a run right after its checkpoint at update 4 of 8, resume it: same final weights."""
    full = train(base)
    config = base.replace(run_dir=str(tmp_path), checkpoint_every=2)
    real_save = ppo_module._save

    def save_then_stop(path, update, *args):
        real_save(path, update, *args)
        if update == 4:
            raise _Interrupted

    monkeypatch.setattr(ppo_module, "_save", save_then_stop)
    with pytest.raises(_Interrupted):
        train(config)
    monkeypatch.setattr(ppo_module, "_save", real_save)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["update"] == 4
    with pytest.raises(ValueError, match="^gamma: "):  # a different run cannot resume it
        train(config.replace(gamma=0.5, resume=True))
    torch.manual_seed(12345)  # the checkpoint, not the caller's state, decides what comes next
    resumed = train(config.replace(resume=True))
    _assert_same_weights(_weights(resumed.agent), _weights(full.agent))
    assert [r["update"] for r in resumed.history] == list(range(1, 9))
    without_time = lambda rows: [{k: v for k, v in e.items() if k != "time"} for e in rows]  # noqa: E731
    assert without_time(resumed.episodes) == without_time(full.episodes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_and_resumes_on_cuda(tmp_path):
    config = SMALL.replace(device="cuda", run_dir=str(tmp_path), checkpoint_every=4)
    result = train(config)
    assert all(p.is_cuda for p in result.agent.parameters())
    assert all(torch.isfinite(p).all() for p in result.agent.parameters())
    assert len(result.history) == 8
    reloaded = train(config.replace(resume=True))  # a finished run: loads onto CUDA, no steps
    for key, value in reloaded.agent.state_dict().items():
        assert value.is_cuda and torch.equal(value, result.agent.state_dict()[key]), key
    pendulum = train(PRESETS["pendulum"][1].replace(total_timesteps=2048, num_steps=256,
                                                    num_minibatches=4, device="cuda"))
    assert pendulum.agent.log_std.is_cuda
