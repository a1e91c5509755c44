"""§8 mixed precision: bf16 autocast log-probs near float32, float32 losses, fp16 + GradScaler
skips a step whose gradients are not finite; plus the batch-size and single-process statistics
helpers of ``scale.distributed``."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
from scale_helpers import PolicyValue, minibatch_loss, ppo_minibatch, tiny_policy  # noqa: E402

from ppo_lab.core import masked_whiten  # noqa: E402
from ppo_lab.scale.distributed import (DistInfo, derive_micro_batch_sizes, global_early_stop,  # noqa: E402
                                       global_masked_whiten, global_mean, rank_seed, shard, token_mean_scale)
from ppo_lab.scale.precision import Precision  # noqa: E402

BF16_LOGPROB_ATOL = 0.1
"""Max |log π_bf16 − log π_fp32| in nats on the tiny models, and 0.02 on average (bf16 keeps 8
significant bits: relative error ~2⁻⁸ ≈ 0.004 per rounding, several roundings on logits of
size ~5). Measured: max 0.054–0.056, so a ratio from bf16 log-probs would be off by ~5%."""
BF16_LOGPROB_MEAN_ATOL = 0.02


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bf16_autocast_logprobs_within_tolerance_of_fp32_and_float32(arch):
    model = PolicyValue(tiny_policy(arch))
    mb = ppo_minibatch()
    with torch.no_grad():
        ref, _, ref_values = model(mb["batch"])
        with Precision("bf16").autocast():
            lp, entropy, values = model(mb["batch"])
    assert lp.dtype == entropy.dtype == values.dtype == torch.float32
    keep = mb["response_mask"]
    err = (lp - ref)[keep].abs().max().item()
    assert 0 < err < BF16_LOGPROB_ATOL  # > 0: the forward really ran in bf16
    assert (lp - ref)[keep].abs().mean().item() < BF16_LOGPROB_MEAN_ATOL
    scale = ref_values[keep].abs().max().item()  # values are O(10) here: a relative bound
    assert (values - ref_values)[keep].abs().max().item() < 0.02 * scale


def test_losses_assembled_from_autocast_outputs_are_float32():
    model = PolicyValue(tiny_policy())
    precision = Precision("bf16")
    with precision.autocast():
        loss, _ = minibatch_loss(model, ppo_minibatch())
    assert loss.dtype == torch.float32
    precision.backward(loss)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="loss"):
        precision.backward(loss.detach().bfloat16().requires_grad_())
    precision.backward(loss.detach().double().requires_grad_())  # float64 models are fine


def _fp16_setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2), torch.randn(4, 8)


def test_fp16_grad_scaler_skips_the_step_on_an_inf_gradient():
    model, optimizer, x = _fp16_setup()
    precision = Precision("fp16")
    scale = precision.scaler.get_scale()
    with precision.autocast():
        out = model(x)
    assert out.dtype == torch.float16
    precision.backward(out.float().mean() * torch.tensor(float("inf")))  # every gradient inf/NaN
    before = copy.deepcopy(model.state_dict())
    assert precision.step(optimizer, model.parameters(), max_grad_norm=1.0)[0] is False
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert precision.scaler.get_scale() == scale / 2 and not optimizer.state  # Adam never stepped
    # A finite step goes through and changes the weights.
    optimizer.zero_grad()
    with precision.autocast():
        loss = model(x).float().mean()
    precision.backward(loss)
    stepped, grad_norm = precision.step(optimizer, model.parameters(), max_grad_norm=1.0)
    assert stepped is True and 0 < grad_norm < float("inf")
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fp16_unscales_before_clipping():
    model, optimizer, x = _fp16_setup()
    precision = Precision("fp16")
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)  # no overflow at this scale
    with precision.autocast():
        loss = model(x).float().mean()
    precision.backward(loss)
    precision.scaler.unscale_(optimizer)
    unscaled = [p.grad.clone() for p in model.parameters()]
    model2, _, _ = _fp16_setup()
    model2(x).mean().backward()
    for a, b in zip(unscaled, (p.grad for p in model2.parameters())):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)  # the true gradient, not S times it


def test_precision_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="dtype"):
        Precision("fp8")


# --- batch sizes and single-process statistics ----------------------------------------------------


def test_micro_batch_sizes_from_global_sizes():
    sizes = derive_micro_batch_sizes(batch_size=64, minibatch_size=16, world_size=2, grad_accum_steps=4)
    assert (sizes.local_batch_size, sizes.local_minibatch_size, sizes.micro_batch_size, sizes.num_minibatches) \
        == (32, 8, 2, 4)


@pytest.mark.parametrize("kwargs, flag", [
    (dict(batch_size=64, minibatch_size=24, world_size=2, grad_accum_steps=1), "--minibatch-size 24"),
    (dict(batch_size=64, minibatch_size=16, world_size=2, grad_accum_steps=3), "--grad-accum-steps 3"),
    (dict(batch_size=64, minibatch_size=16, world_size=0, grad_accum_steps=1), "world_size"),
])
def test_micro_batch_sizes_errors_name_the_flags(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        derive_micro_batch_sizes(**kwargs)


def test_rank_seed_and_shard():
    assert rank_seed(7, 0) == 7 and len({rank_seed(7, r) for r in range(8)}) == 8
    items = list(range(12))
    parts = [shard(items, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert sum(parts, []) == items
    with pytest.raises(ValueError, match="batch_size"):
        shard(items, DistInfo(rank=0, world_size=5))


def test_single_process_global_statistics_are_the_plain_ones():
    mb = ppo_minibatch()
    x, keep = mb["advantages"], mb["response_mask"]
    assert torch.equal(global_masked_whiten(x, keep), masked_whiten(x, keep))
    assert global_mean(x, keep).item() == pytest.approx(x[keep].double().mean().item(), rel=1e-6)
    assert token_mean_scale(5, 5, 1) == 1.0
    assert global_early_stop(0.02, 0.01) and not global_early_stop(0.005, 0.01) and not global_early_stop(9.0, None)
