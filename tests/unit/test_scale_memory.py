"""§8 memory: LoRA with the reference as the adapters-off base, activation checkpointing, the
memory calculator against measured saved-activation bytes and peak resident memory, and
gradient accumulation in one process."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HELPERS = Path(__file__).resolve().parents[1] / "distributed"
sys.path.insert(0, str(HELPERS))
from scale_helpers import SPEC, VOCAB, PolicyValue, grads, minibatch_loss, ppo_minibatch, tiny_policy  # noqa: E402

from ppo_lab.llm.models import tiny_config  # noqa: E402
from ppo_lab.scale.accumulation import accumulate_gradients, micro_batches  # noqa: E402
from ppo_lab.scale.memory import (_dims, add_lora, count_parameters, enable_activation_checkpointing,  # noqa: E402
                                  estimate_memory, reference_model, saved_activation_bytes)
from ppo_lab.scale.precision import Precision  # noqa: E402

# --- gradient accumulation, one process --------------------------------------------------------


def test_accumulated_micro_batches_equal_one_batch_with_uneven_lengths():
    mb = ppo_minibatch(8)
    lengths = mb["batch"].response_lengths
    assert len(set(lengths.tolist())) > 2  # uneven responses: per-micro-batch means would differ
    whole = PolicyValue(tiny_policy())
    accumulated = copy.deepcopy(whole)
    minibatch_loss(whole, mb)[0].backward()
    stats = accumulate_gradients(accumulated, micro_batches(mb, 4),
                                 lambda part: minibatch_loss(accumulated, part))
    want, got = grads(whole), grads(accumulated)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)
    assert stats["loss"] == pytest.approx(minibatch_loss(copy.deepcopy(whole), mb)[1]["loss"], rel=1e-5)
    # Negative control: the mean of the four micro-batch means is another gradient.
    naive = copy.deepcopy(whole)
    naive.zero_grad()
    for part in micro_batches(mb, 4):
        (minibatch_loss(naive, part)[0] / 4).backward()
    diff = max((grads(naive)[k] - want[k]).abs().max().item() for k in want)
    assert diff > 1e-3


def test_micro_batches_must_divide():
    with pytest.raises(ValueError, match="grad_accum_steps"):
        micro_batches(ppo_minibatch(8), 3)


# --- LoRA ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_trains_only_adapters_and_adapters_off_is_the_reference(arch):
    reference = PolicyValue(tiny_policy(arch))
    model = add_lora(copy.deepcopy(reference), r=4)
    mb = ppo_minibatch()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        minibatch_loss(model, mb)[0].backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad and all("lora_" in n or "value_head" in n for n in with_grad), with_grad
        assert {n for n, p in model.named_parameters() if p.requires_grad} == with_grad
        optimizer.step()
    batch = mb["batch"]
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    with torch.no_grad():
        want = reference.policy(**kwargs).logits
        with reference_model(model) as ref:
            off = ref(**kwargs).logits
        on = model.policy(**kwargs).logits
    assert torch.equal(off, want)  # the base weights, bit for bit: no second copy needed
    assert (on - want).abs().max().item() > 1e-3  # the adapters did train


def test_reference_model_needs_adapters_or_a_model():
    with pytest.raises(ValueError, match="ref_model"):
        with reference_model(tiny_policy()):
            pass
    with pytest.raises(ValueError, match="lora_r"):
        add_lora(tiny_policy(), r=0)


# --- activation checkpointing ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_activation_checkpointing_same_gradients_fewer_saved_bytes(arch):
    plain = PolicyValue(tiny_policy(arch))
    plain.policy.config.resid_pdrop = 0.1  # dropout modules exist (GPT-2) and must stay off
    checkpointed = enable_activation_checkpointing(copy.deepcopy(plain))
    mb = ppo_minibatch()
    _, plain_bytes = saved_activation_bytes(lambda: minibatch_loss(plain, mb)[0].backward(), exclude=plain)
    _, ckpt_bytes = saved_activation_bytes(lambda: minibatch_loss(checkpointed, mb)[0].backward(),
                                           exclude=checkpointed)
    want, got = grads(plain), grads(checkpointed)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    assert ckpt_bytes < 0.8 * plain_bytes
    assert not any(m.training for m in checkpointed.modules() if isinstance(m, torch.nn.Dropout))


# --- the calculator ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_estimated_activations_match_saved_tensor_bytes(arch, dtype):
    model = PolicyValue(tiny_policy(arch))
    mb = ppo_minibatch(8)
    precision = Precision(dtype)

    def forward():
        with precision.autocast():
            return minibatch_loss(model, mb)

    _, measured = saved_activation_bytes(forward, exclude=model)
    B, T = mb["response_mask"].shape
    estimate = estimate_memory(model.policy.config, micro_batch_size=B, prompt_len=mb["batch"].prompt_width,
                               response_len=T, dtype=dtype, value_model="head")
    assert estimate.policy.activations == pytest.approx(measured, rel=0.15)


def test_cuda_autocast_adds_gpt2_gelu_float32_bytes_only():
    """On CUDA, autocast runs ``pow`` in float32: GPT-2's GELU(tanh) saves 6 more bytes per MLP
    element per token under 16-bit autocast (measured on the GPU in tests/gpu); Llama, fp32 and
    the rest of the estimate are the same as on CPU."""
    shape = dict(micro_batch_size=2, prompt_len=16, response_len=16)
    for arch in ("gpt2", "llama"):
        config = tiny_config(arch, VOCAB)
        dims = _dims(config)
        for dtype in ("fp32", "bf16", "fp16"):
            cpu = estimate_memory(config, dtype=dtype, **shape)
            cuda = estimate_memory(config, dtype=dtype, device="cuda", **shape)
            extra = 6 * dims["ffn"] * 2 * 32 * dims["layers"] if arch == "gpt2" and dtype != "fp32" else 0
            assert cuda.policy.activations - cpu.policy.activations == extra, (arch, dtype)
            assert cuda.value.activations - cpu.value.activations == extra, (arch, dtype)
            assert cuda.policy.static == cpu.policy.static and cuda.kv_cache == cpu.kv_cache
    with pytest.raises(ValueError, match="device"):
        estimate_memory(tiny_config("gpt2", VOCAB), device="mps", **shape)


def test_parameter_counts_of_a_7b_config_on_the_meta_device():
    from transformers import LlamaConfig

    llama2_7b = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)
    total, trainable, block = count_parameters(llama2_7b)
    assert total == 6_738_415_616 and trainable == total  # the published Llama-2-7B count
    assert block == 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    est = estimate_memory(llama2_7b, micro_batch_size=1, prompt_len=128, response_len=128, dtype="bf16",
                          lora_r=16, value_model="head")
    assert est.reference.weights == 0 and est.policy.grads < 0.01 * est.policy.weights


PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from ppo_lab.llm.models import tiny_config, build_model, quiet_transformers
from ppo_lab.llm.sequences import SequenceBatch
from ppo_lab.scale.memory import enable_activation_checkpointing, estimate_memory, peak_rss_bytes
from ppo_lab.scale.precision import Precision
from scale_helpers import PolicyValue, minibatch_loss
arch, dtype, ckpt = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
V, B, P, T = 2048, 4, 48, 48
config = tiny_config(arch, V, n_layer=2, d_model=128, n_head=4, max_positions=P + T)
g = torch.Generator().manual_seed(0)
batch = SequenceBatch.from_parts(torch.randint(1, V, (B, P), generator=g), torch.ones(B, P, dtype=torch.long),
                                 torch.randint(1, V, (B, T), generator=g), torch.full((B,), T))
mb = {"batch": batch, "response_mask": batch.response_mask, "old_logprobs": torch.full((B, T), -8.0),
      "advantages": torch.randn(B, T, generator=g), "returns": torch.randn(B, T, generator=g),
      "old_values": torch.zeros(B, T)}
precision = Precision(dtype)
def run():
    torch.manual_seed(0)
    with quiet_transformers():
        model = PolicyValue(build_model(config))
    if ckpt:
        enable_activation_checkpointing(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss, _ = minibatch_loss(model, mb)
        precision.backward(loss)
        precision.step(optimizer)
run()  # once, so lazily allocated library buffers are not counted
_, peak, before = peak_rss_bytes(run)
est = estimate_memory(config, micro_batch_size=B, prompt_len=P, response_len=T, dtype=dtype,
                      grad_checkpointing=ckpt, value_model="head")
print(json.dumps({"measured": peak - before, "estimated": est.policy.static + est.value.static + est.policy.activations}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("arch, dtype, ckpt", [("gpt2", "fp32", "0"), ("llama", "bf16", "1")])
def test_estimated_peak_within_15_percent_of_measured_resident_peak(arch, dtype, ckpt):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(HELPERS), arch, dtype, ckpt], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["estimated"] == pytest.approx(result["measured"], rel=0.15), result


def test_activation_checkpointing_keeps_the_kv_cache_sampler_exact():
    from ppo_lab.llm.rollout import generate

    plain = tiny_policy("gpt2")
    checkpointed = enable_activation_checkpointing(copy.deepcopy(plain))
    mb = ppo_minibatch(4)
    kwargs = dict(max_new_tokens=6, eos_token_id=VOCAB - 1, pad_token_id=0)
    runs = []
    for model in (plain, checkpointed):
        with torch.no_grad():
            runs.append(generate(model, mb["batch"].prompt_ids, mb["batch"].prompt_mask, SPEC,
                                 generator=torch.Generator().manual_seed(3), **kwargs))
    assert torch.equal(runs[0][0].input_ids, runs[1][0].input_ids)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=1e-6)
    assert not checkpointed.transformer.training  # only the blocks are marked, never the trunk


def test_rank0_checkpoint_of_a_hugging_face_model_resumes_exactly(tmp_path):
    """The DDP / one-process path of save_distributed_checkpoint: save_pretrained (tied
    embeddings dropped and restored) + optimiser state + RNG; resumed training equals uninterrupted."""
    from ppo_lab.scale.distributed import DistInfo, load_distributed_checkpoint, save_distributed_checkpoint

    info = DistInfo()
    data = [ppo_minibatch(4, seed=s) for s in range(4)]

    def run(model, optimizer, steps):
        for mb in steps:
            optimizer.zero_grad()
            logits = model(input_ids=mb["batch"].input_ids, attention_mask=mb["batch"].attention_mask).logits
            (logits.float().logsumexp(-1).mean() + 1e-3 * torch.randn(()).abs()).backward()  # uses the RNG
            optimizer.step()

    model = tiny_policy("llama")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    run(model, optimizer, data[:2])
    save_distributed_checkpoint(tmp_path / "ckpt", model, optimizer, info, extra={"step": 2})
    run(model, optimizer, data[2:])
    resumed = tiny_policy("llama", seed=9)  # other weights: all must come from the checkpoint
    optimizer2 = torch.optim.Adam(resumed.parameters(), lr=1e-3)
    assert load_distributed_checkpoint(tmp_path / "ckpt", resumed, optimizer2, info) == {"step": 2}
    run(resumed, optimizer2, data[2:])
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="directory"):
        load_distributed_checkpoint(tmp_path / "nothing", resumed, optimizer2, info)
