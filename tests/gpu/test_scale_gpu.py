"""ppo_lab.scale on CUDA (§8): bf16 autocast, fp16 + GradScaler, FSDP2 on one GPU, NCCL DDP on two,
and the memory calculator against ``torch.cuda.max_memory_allocated``.

Runs wherever ``torch.cuda.is_available()`` (the DDP test where ``device_count() >= 2``); skipped
cleanly elsewhere. The multi-process tests launch the CPU tests' worker with ``SCALE_DEVICE=cuda``.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HELPERS = Path(__file__).resolve().parents[1] / "distributed"
sys.path.insert(0, str(HELPERS))
from scale_helpers import PolicyValue, minibatch_loss, ppo_minibatch, tiny_policy  # noqa: E402

from ppo_lab.scale.memory import estimate_memory  # noqa: E402
from ppo_lab.scale.precision import Precision  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = torch.device("cuda")
TOL = dict(rtol=1e-3, atol=1e-5)  # GPU reductions are not bit-reproducible across launch shapes


def _to(mb: dict, device) -> dict:
    return {k: v.to(device) for k, v in mb.items()}


def _torchrun(nproc: int, tmp: Path, *scenarios: str) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SCALE_DEVICE": "cuda", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(port), str(HELPERS / "scale_worker.py"), str(tmp), *scenarios]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(tmp / f"results_rank{r}.pt", weights_only=False) for r in range(nproc)]


def _close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and got
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bf16_autocast_on_cuda_logprobs_float32_and_close_to_fp32(arch):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = PolicyValue(tiny_policy(arch)).to(CUDA)
    mb = _to(ppo_minibatch(), CUDA)
    with torch.no_grad():
        ref, _, _ = model(mb["batch"])
        with Precision("bf16", CUDA).autocast():
            lp, entropy, values = model(mb["batch"])
    assert lp.dtype == entropy.dtype == values.dtype == torch.float32
    err = (lp - ref)[mb["response_mask"]].abs()
    assert 0 < err.max().item() < 0.1 and err.mean().item() < 0.02
    precision = Precision("bf16", CUDA)
    with precision.autocast():
        loss, _ = minibatch_loss(model, mb)
    precision.backward(loss)
    assert precision.step(torch.optim.Adam(model.parameters(), lr=1e-4))[0]
    assert all(p.grad.dtype == torch.float32 and p.grad.isfinite().all() for p in model.parameters()
               if p.grad is not None)


def test_fp16_grad_scaler_on_cuda_skips_an_inf_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1).to(CUDA)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    precision = Precision("fp16", CUDA)
    with precision.autocast():
        out = model(torch.randn(4, 8, device=CUDA))
    assert out.dtype == torch.float16
    before = copy.deepcopy(model.state_dict())
    precision.backward(out.float().mean() * float("inf"))
    assert precision.step(optimizer, model.parameters(), max_grad_norm=1.0)[0] is False
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fsdp2_on_one_gpu_equals_single_process_and_resumes(tmp_path):
    (res,) = _torchrun(1, tmp_path, "fsdp")
    assert res["fsdp_stats"]["loss"] == pytest.approx(res["fsdp_single_loss"], rel=1e-4)
    _close(res["fsdp"], res["fsdp_single"])
    _close(res["resumed"], res["uninterrupted"])
    assert res["fsdp_sharded_after_generation"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 GPUs")
def test_nccl_ddp_on_two_gpus_equals_single_process(tmp_path):
    r0, r1 = _torchrun(2, tmp_path, "ddp")
    for res in (r0, r1):
        _close(res["ddp"], res["single"])
        _close(res["ddp_accum2"], res["single"])
    assert r0["stopped_at"] == r1["stopped_at"]
    for name, w in r0["weights_after_steps"].items():
        assert torch.equal(w, r1["weights_after_steps"][name]), name


B, P, T = 8, 128, 128  # the calculator checks: a 4-layer, d = 512 model, blocks dominate


def _mid_config_and_minibatch(arch: str, vocab: int):
    """A 4-layer, d = 512 config and a PPO minibatch of B sequences of P + T random tokens, on CUDA."""
    from ppo_lab.llm.models import tiny_config
    from ppo_lab.llm.sequences import SequenceBatch

    config = tiny_config(arch, vocab, n_layer=4, d_model=512, n_head=8, max_positions=P + T)
    g = torch.Generator().manual_seed(0)
    batch = SequenceBatch.from_parts(torch.randint(1, vocab, (B, P), generator=g), torch.ones(B, P, dtype=torch.long),
                                     torch.randint(1, vocab, (B, T), generator=g), torch.full((B,), T)).to(CUDA)
    mb = {"batch": batch, "response_mask": batch.response_mask, "old_logprobs": torch.full((B, T), -9.0, device=CUDA),
          "advantages": torch.randn(B, T, device=CUDA), "returns": torch.randn(B, T, device=CUDA),
          "old_values": torch.zeros(B, T, device=CUDA)}
    return config, mb


def _policy_value(config) -> PolicyValue:
    from ppo_lab.llm.models import build_model, quiet_transformers

    torch.manual_seed(0)
    with quiet_transformers():
        return PolicyValue(build_model(config)).to(CUDA)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_memory_estimate_within_15_percent_of_max_memory_allocated(dtype):
    config, mb = _mid_config_and_minibatch("gpt2", 8192)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model = _policy_value(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    precision = Precision(dtype, CUDA)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss, _ = minibatch_loss(model, mb)
        loss.backward()
        optimizer.step()
    measured = torch.cuda.max_memory_allocated() - before
    est = estimate_memory(config, micro_batch_size=B, prompt_len=P, response_len=T, value_model="head",
                          dtype=dtype, device="cuda")
    assert est.policy.static + est.value.static + est.policy.activations == pytest.approx(measured, rel=0.15)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bf16_saved_activations_on_cuda_match_the_calculator(arch):
    """CUDA's autocast keeps GPT-2's GELU in float32 from ``pow`` on (the calculator's
    ``"16-cuda"`` coefficients); blocks dominate at these sizes, so a wrong coefficient shows."""
    from ppo_lab.scale.memory import saved_activation_bytes

    config, mb = _mid_config_and_minibatch(arch, 4096)
    model = _policy_value(config)
    precision = Precision("bf16", CUDA)

    def forward():
        with precision.autocast():
            return minibatch_loss(model, mb)

    _, measured = saved_activation_bytes(forward, exclude=model)
    est = estimate_memory(config, micro_batch_size=B, prompt_len=P, response_len=T, value_model="head",
                          dtype="bf16", device="cuda")
    assert est.policy.activations == pytest.approx(measured, rel=0.1)
