"""The core functions on CUDA: same results as on the CPU, and 16-bit inputs handled as specified.

Runs wherever ``torch.cuda.is_available()``; skipped cleanly elsewhere.
"""

from __future__ import annotations

import pytest
import torch

import ppo_lab

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _rollout(T=64, N=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g)
    values = torch.randn(T, N, generator=g)
    next_values = torch.randn(T, N, generator=g)
    terminated = torch.rand(T, N, generator=g) < 0.05
    truncated = (torch.rand(T, N, generator=g) < 0.05) & ~terminated
    return rewards, values, next_values, terminated, terminated | truncated


def test_gae_on_cuda_matches_cpu():
    r, v, nv, term, ends = _rollout()
    kw = dict(gamma=0.99, gae_lambda=0.95)
    adv_cpu, ret_cpu = ppo_lab.gae_advantages(rewards=r, values=v, next_values=nv, terminated=term, episode_ends=ends, **kw)
    cuda = [x.cuda() for x in (r, v, nv, term, ends)]
    adv, ret = ppo_lab.gae_advantages(rewards=cuda[0], values=cuda[1], next_values=cuda[2], terminated=cuda[3],
                                      episode_ends=cuda[4], **kw)
    assert adv.is_cuda and ret.is_cuda
    torch.testing.assert_close(adv.cpu(), adv_cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret.cpu(), ret_cpu, rtol=1e-5, atol=1e-5)


def test_clipped_surrogate_loss_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(1)
    lp, old, adv = (torch.randn(32, 16, generator=g) * 0.1 for _ in range(3))
    mask = torch.rand(32, 16, generator=g) > 0.3
    loss_cpu, stats_cpu = ppo_lab.clipped_surrogate_loss(logprobs=lp, old_logprobs=old, advantages=adv, clip_eps=0.2, mask=mask)
    loss, stats = ppo_lab.clipped_surrogate_loss(logprobs=lp.cuda(), old_logprobs=old.cuda(), advantages=adv.cuda(),
                                                 clip_eps=0.2, mask=mask.cuda())
    torch.testing.assert_close(loss.cpu(), loss_cpu, rtol=1e-5, atol=1e-6)
    assert stats.keys() == stats_cpu.keys()
    for k in stats:
        assert isinstance(stats[k], float)
        assert abs(stats[k] - stats_cpu[k]) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_logprobs_from_16bit_logits_are_float32(dtype):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 10, 50, generator=g)
    tokens = torch.randint(50, (4, 10), generator=g)
    got = ppo_lab.logprobs_from_logits(logits=logits.to("cuda", dtype), tokens=tokens.cuda())
    assert got.dtype == torch.float32 and got.is_cuda
    want = torch.log_softmax(logits.to(dtype).float(), -1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3)


def test_masked_whiten_bf16_statistics_in_float32():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(8, 128, generator=g) * 3 + 1).to("cuda", torch.bfloat16)
    mask = torch.ones(8, 128, dtype=torch.bool, device="cuda")
    mask[:, 100:] = False
    mean = ppo_lab.masked_mean(x, mask)
    assert mean.dtype == torch.float32
    white = ppo_lab.masked_whiten(x, mask)
    kept = white[mask].float()
    assert abs(kept.mean().item()) < 2e-2 and abs(kept.std().item() - 1) < 2e-2
