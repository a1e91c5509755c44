"""ppo_lab.toy.networks: heads against torch.distributions, the MLPs' layers, init."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from ppo_lab.toy.networks import ActorCritic, gaussian_entropy, gaussian_logprobs, layer_init, mlp


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_gaussian_logprobs_and_entropy_match_torch_distributions():
    mean, log_std = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    actions = torch.randn(5, 3, dtype=torch.float64)
    normal = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(gaussian_logprobs(mean, log_std, actions),
                               normal.log_prob(actions).sum(-1))
    torch.testing.assert_close(gaussian_entropy(log_std, torch.Size([5])), normal.entropy().sum(-1))


def test_gaussian_logprob_by_hand():
    # one dimension, μ = 0, σ = 1, a = 1: −½ − ½ log 2π
    value = gaussian_logprobs(torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1))
    assert value.item() == pytest.approx(-0.5 - 0.5 * math.log(2 * math.pi))


def test_mlp_is_linear_tanh_blocks():
    net = mlp(4, (64, 32))
    assert [type(m).__name__ for m in net] == ["Linear", "Tanh", "Linear", "Tanh"]
    assert [(m.in_features, m.out_features) for m in net[::2]] == [(4, 64), (64, 32)]
    x = torch.randn(7, 4)
    torch.testing.assert_close(net(x), torch.tanh(net[2](torch.tanh(net[0](x)))))


@pytest.mark.parametrize("in_dim, out_dim", [(4, 64), (64, 64), (64, 8)])
def test_orthogonal_init_with_gain(in_dim, out_dim):
    layer = layer_init(nn.Linear(in_dim, out_dim), gain=math.sqrt(2))
    assert torch.count_nonzero(layer.bias) == 0
    w = layer.weight.detach()  # [out, in]: the smaller side is orthonormal (times the gain)
    gram = w @ w.T if out_dim <= in_dim else w.T @ w
    torch.testing.assert_close(gram, 2 * torch.eye(min(in_dim, out_dim)), atol=1e-5, rtol=0)


def test_separate_policy_and_value_networks_are_initialised_independently():
    agent = ActorCritic(4, 2, continuous=False)
    for p_layer, v_layer in zip(agent.policy_net[::2], agent.value_net[::2]):
        assert not torch.equal(p_layer.weight, v_layer.weight)


@pytest.mark.parametrize("shared", [False, True])
def test_discrete_actor_critic_against_categorical(shared):
    agent = ActorCritic(4, 3, continuous=False, shared_trunk=shared)
    obs = torch.randn(6, 4)
    actions, logprobs, values = agent.act(obs)
    assert actions.shape == (6,) and actions.dtype == torch.int64
    new_logprobs, entropy, new_values = agent.evaluate(obs, actions)
    logits, _ = agent._policy_and_value(obs)
    dist = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(logprobs, dist.log_prob(actions))
    torch.testing.assert_close(new_logprobs, logprobs)
    torch.testing.assert_close(entropy, dist.entropy())
    torch.testing.assert_close(new_values, values)
    assert values.shape == (6,)
    assert agent.evaluate(obs, actions, entropy=False)[1] is None
    # detail 2: the 0.01-gain policy head starts the policy close to uniform
    assert (dist.probs - 1 / 3).abs().max() < 0.05


@pytest.mark.parametrize("batch, num_actions", [(8, 2), (64, 5), (1, 3)])
def test_discrete_sampling_is_categorical_on_the_policy_logits(batch, num_actions):
    # act() draws one action per row from Categorical(logits) with torch's global generator:
    # the same seed gives the same actions as sampling that distribution directly
    agent = ActorCritic(4, num_actions, continuous=False)
    with torch.no_grad():
        agent.policy_head.weight.mul_(300)  # far from uniform, so a wrong sampler shows
    obs = torch.randn(batch, 4)
    logits = agent._policy_and_value(obs)[0]
    torch.manual_seed(7)
    ours = torch.stack([agent.act(obs)[0] for _ in range(50)])
    torch.manual_seed(7)
    theirs = torch.stack([torch.distributions.Categorical(logits=logits).sample() for _ in range(50)])
    assert torch.equal(ours, theirs)
    assert len(ours.unique()) > 1


def test_layers_are_called_as_modules():
    # every layer runs through nn.Module.__call__, so forward hooks (activation probes) see it
    agent = ActorCritic(4, 2, continuous=False)
    seen = []
    for module in (*agent.policy_net, *agent.value_net, agent.policy_head, agent.value_head):
        module.register_forward_hook(lambda m, args, out: seen.append(type(m).__name__))
    agent.act(torch.randn(3, 4))
    assert seen == ["Linear", "Tanh", "Linear", "Tanh"] * 2 + ["Linear", "Linear"]


def test_discrete_sampling_frequencies():
    agent = ActorCritic(4, 3, continuous=False)
    with torch.no_grad():
        agent.policy_head.weight.zero_()
        agent.policy_head.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    counts = torch.bincount(agent.act(torch.zeros(60_000, 4))[0], minlength=3)
    expected = 60_000 * torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert ((counts - expected).abs() < 4 * expected.sqrt()).all(), (counts, expected)


def test_continuous_actor_critic_samples_its_own_gaussian():
    agent = ActorCritic(3, 2, continuous=True, init_log_std=-1.0)
    obs = torch.randn(4000, 3)
    actions, logprobs, _ = agent.act(obs)
    mean, _ = agent._policy_and_value(obs)
    assert actions.shape == (4000, 2)
    assert (actions - mean).std().item() == pytest.approx(math.exp(-1.0), rel=0.05)
    torch.testing.assert_close(agent.evaluate(obs, actions)[0], logprobs)
    assert agent.evaluate(obs, actions)[1].shape == (4000,)


def test_shared_trunk_has_fewer_parameters_and_separate_trunks_are_independent():
    separate = ActorCritic(4, 2, continuous=False)
    shared = ActorCritic(4, 2, continuous=False, shared_trunk=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separate) == count(shared) + (4 * 64 + 64) + (64 * 64 + 64)
    # In the separate networks, the value loss has no gradient on the policy's parameters.
    obs = torch.randn(8, 4)
    separate.get_value(obs).sum().backward()
    assert separate.policy_head.weight.grad is None
    assert all(p.grad is None for p in separate.policy_net.parameters())
    assert all(torch.count_nonzero(p.grad) > 0 for p in separate.value_net.parameters())


def test_for_spaces():
    box = gym.spaces.Box(-1, 1, (5,), np.float32)
    assert not ActorCritic.for_spaces(box, gym.spaces.Discrete(3)).continuous
    assert ActorCritic.for_spaces(box, gym.spaces.Box(-2, 2, (2,), np.float32)).continuous
    with pytest.raises(ValueError, match="^action_space: "):
        ActorCritic.for_spaces(box, gym.spaces.MultiBinary(3))
    with pytest.raises(ValueError, match="^observation_space: "):
        ActorCritic.for_spaces(gym.spaces.Discrete(4), gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="^hidden_sizes: "):
        ActorCritic(4, 2, continuous=False, hidden_sizes=())
