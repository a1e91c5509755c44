"""2-rank gloo DDP: gradients equal the single-process gradients of the same global batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ppo_lab.core.losses import ppo_loss
from ppo_lab.scale.distributed import global_masked_mean, init_distributed, unwrap, wrap_ddp

pytestmark = pytest.mark.distributed

OBS, ACTIONS, BATCH = 4, 3, 16


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(OBS, 16), nn.Tanh(), nn.Linear(16, ACTIONS + 1)).double()


def make_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    batch = {
        "obs": torch.randn(BATCH, OBS, generator=g, dtype=torch.float64),
        "actions": torch.randint(ACTIONS, (BATCH,), generator=g),
        "old_logprobs": -torch.rand(BATCH, generator=g, dtype=torch.float64) - 0.5,
        "advantages": torch.randn(BATCH, generator=g, dtype=torch.float64),
        "returns": torch.randn(BATCH, generator=g, dtype=torch.float64),
        "old_values": torch.randn(BATCH, generator=g, dtype=torch.float64),
    }
    # Unequal kept counts per half: rank 0 keeps 7 of 8, rank 1 keeps 3 of 8.
    batch["mask"] = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    return batch


def ppo_terms(model: nn.Module, b: dict[str, torch.Tensor]):
    out = model(b["obs"])
    logits, values = out[:, :ACTIONS], out[:, ACTIONS]
    dist_ = torch.distributions.Categorical(logits=logits)
    return dist_.log_prob(b["actions"]), values, dist_.entropy()


def full_loss(model, b, mask):
    logprobs, values, entropy = ppo_terms(model, b)
    loss, _ = ppo_loss(
        logprobs=logprobs, old_logprobs=b["old_logprobs"], advantages=b["advantages"], values=values,
        old_values=b["old_values"], returns=b["returns"], entropy=entropy, clip_eps=0.2,
        vf_clip_eps=0.2, vf_coef=0.5, ent_coef=0.01, mask=mask,
    )
    return loss


def token_sum_loss(model, b, mask, world_size):
    """A policy-gradient loss normalised by the global kept count (what chapter 8 teaches)."""
    logprobs, values, _ = ppo_terms(model, b)
    per_elem = -(logprobs - b["old_logprobs"]).exp() * b["advantages"] + 0.5 * (values - b["returns"]) ** 2
    return global_masked_mean(per_elem, mask, world_size)


def single_process_grads(loss_fn) -> list[torch.Tensor]:
    model = make_model()
    loss_fn(model).backward()
    return [p.grad.clone() for p in model.parameters()]


def _worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = init_distributed(device="cpu")
    try:
        b = make_batch()
        half = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
        shard = {k: v[half] for k, v in b.items()}
        results = {}
        # (a) every element kept: plain per-rank means, averaged by DDP.
        model = wrap_ddp(make_model(), info)
        full_loss(model, shard, None).backward()
        results["all_kept"] = [p.grad.clone() for p in unwrap(model).parameters()]
        # (b) unequal kept counts: the global-count mean makes DDP exact.
        model = wrap_ddp(make_model(), info)
        token_sum_loss(model, shard, shard["mask"], info.world_size).backward()
        results["global_mean"] = [p.grad.clone() for p in unwrap(model).parameters()]
        # (c) the same masked loss with naive per-rank means: not the global gradient.
        model = wrap_ddp(make_model(), info)
        full_loss(model, shard, shard["mask"]).backward()
        results["naive_masked"] = [p.grad.clone() for p in unwrap(model).parameters()]
        # numpy arrays pickle by value (torch tensors would be shared through file descriptors
        # that vanish when this process exits).
        queue.put((rank, {k: [g.numpy() for g in v] for k, v in results.items()}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    out = dict(queue.get(timeout=120) for _ in procs)
    out = {rank: {k: [torch.from_numpy(g) for g in v] for k, v in res.items()} for rank, res in out.items()}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def test_ddp_gradients_equal_single_process_all_kept(ddp_results):
    b = make_batch()
    expected = single_process_grads(lambda m: full_loss(m, b, None))
    for rank in (0, 1):
        for got, want in zip(ddp_results[rank]["all_kept"], expected):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_global_count_mean_makes_masked_ddp_exact(ddp_results):
    b = make_batch()
    expected = single_process_grads(lambda m: token_sum_loss(m, b, b["mask"], 1))
    for rank in (0, 1):
        for got, want in zip(ddp_results[rank]["global_mean"], expected):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_naive_per_rank_masked_mean_is_not_the_global_gradient(ddp_results):
    b = make_batch()
    expected = single_process_grads(lambda m: full_loss(m, b, b["mask"]))
    diffs = [(got - want).abs().max().item() for got, want in zip(ddp_results[0]["naive_masked"], expected)]
    assert max(diffs) > 1e-4, "unequal per-rank counts should bias the naive DDP average"


def test_unwrap_reaches_the_module_behind_ddp():
    class WithGenerate(nn.Linear):
        def generate(self):
            return "ok"

    inner = WithGenerate(2, 2)
    wrapper = nn.Module()
    wrapper.module = inner  # what DDP exposes
    assert unwrap(wrapper) is inner and unwrap(inner) is inner
    assert unwrap(wrapper).generate() == "ok"
