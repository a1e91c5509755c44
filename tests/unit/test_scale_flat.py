"""ppo_lab.scale.flat: flat parameter/gradient buffers change storage, never the maths."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ppo_lab.scale.flat import FlatParameters
from ppo_lab.toy.networks import ActorCritic


def _loss(model: ActorCritic, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    logprobs, entropy, values = model.evaluate(obs, actions)
    return -(logprobs * values.detach()).mean() + values.square().mean() - 0.01 * entropy.mean()


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_norm", [None, 0.05, 100.0])
def test_steps_match_per_tensor_adam_and_clipping(max_norm, device):
    torch.manual_seed(0)
    reference = ActorCritic(4, 3, continuous=False).to(device)
    model = copy.deepcopy(reference)
    flat = FlatParameters(model)
    # The same Adam kernel on both sides (the trainer's fused one), so only the storage differs:
    # fused and foreach Adam round differently in the last bit, which 5 steps can amplify on CUDA.
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-5, fused=True)
    opt = torch.optim.Adam([flat.param], lr=1e-2, eps=1e-5, fused=True)
    for step in range(5):
        obs = torch.randn(32, 4).to(device)
        actions = torch.randint(0, 3, (32,)).to(device)
        ref_opt.zero_grad()
        _loss(reference, obs, actions).backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(),
                                                  max_norm if max_norm else float("inf"))
        ref_opt.step()
        flat.zero_grad()
        _loss(model, obs, actions).backward()
        norm = flat.clip_grad_norm_(max_norm)
        opt.step()
        torch.testing.assert_close(norm, ref_norm, rtol=1e-5, atol=0)
        for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    if max_norm == 0.05:  # the clip did bind, so the test covers the scaling
        assert ref_norm > max_norm


def test_parameters_and_gradients_are_views_of_the_buffers():
    model = ActorCritic(3, 1, continuous=True, hidden_sizes=(8,))
    names = {k: v.shape for k, v in model.state_dict().items()}
    flat = FlatParameters(model)
    assert {k: v.shape for k, v in model.state_dict().items()} == names  # state_dict unchanged
    assert flat.param.numel() == sum(p.numel() for p in model.parameters())
    model.evaluate(torch.randn(5, 3), torch.randn(5, 1))[2].sum().backward()
    model.evaluate(torch.randn(5, 3), torch.randn(5, 1))[0].sum().backward()
    base, grad_base = flat.param.data_ptr(), flat.grad.data_ptr()
    size = flat.param.element_size()
    offset = 0
    for p in model.parameters():  # backward accumulated in place, into the views
        assert p.data_ptr() == base + offset * size
        assert p.grad.data_ptr() == grad_base + offset * size
        offset += p.numel()
    assert flat.grad.abs().sum() > 0
    flat.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())
    # loading a state_dict writes through into the buffer
    other = ActorCritic(3, 1, continuous=True, hidden_sizes=(8,), init_log_std=-0.7)
    model.load_state_dict(other.state_dict())
    assert torch.equal(flat.param[:1], torch.tensor([-0.7]))  # log_std: the module's own, first
    assert torch.equal(flat.param, torch.cat([p.reshape(-1) for p in other.parameters()]))


def test_bad_modules():
    with pytest.raises(ValueError, match="module: has no trainable parameters"):
        FlatParameters(nn.ReLU())
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="module: parameters on several devices/dtypes"):
        FlatParameters(mixed)
