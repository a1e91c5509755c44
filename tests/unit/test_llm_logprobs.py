"""Response log-probabilities (§6) on real Hugging Face models, GPT-2 (learned positions) and
Llama (rotary positions): one batched pass equals the per-token loop and the model's own
cross-entropy, is blind to left padding, and stays float32 under bf16 weights."""

import pytest
import torch

from llm_helpers import ARCHS, random_batch, tiny_model, tiny_tokenizer
from ppo_lab.core import entropy_from_logits
from ppo_lab.llm import (
    PolicyWithValueHead,
    SamplingSpec,
    SequenceBatch,
    reference_loop_logprobs,
    response_logprobs,
    sampling_spec,
)
from ppo_lab.llm.logprobs import response_logits

TOL = dict(rtol=0, atol=1e-5)


@pytest.fixture(params=[(arch, pad_is_eos) for arch in ARCHS for pad_is_eos in (False, True)],
                ids=lambda p: f"{p[0]}-{'pad_eq_eos' if p[1] else 'own_pad'}")
def setup(request):
    arch, pad_is_eos = request.param
    tokenizer = tiny_tokenizer(pad_is_eos)
    return tiny_model(arch, pad_is_eos), tokenizer, random_batch(tokenizer, batch=5, seed=3, eos_rows=(0, 2))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_one_pass_equals_the_per_token_loop(setup, temperature):
    model, tokenizer, batch = setup
    spec = sampling_spec(tokenizer, temperature)
    with torch.no_grad():
        fast = response_logprobs(model, batch, spec).logprobs
    slow = reference_loop_logprobs(model, batch, spec)
    assert fast.dtype == torch.float32 and fast.shape == batch.response_mask.shape
    torch.testing.assert_close(fast, slow, **TOL)
    assert (fast[~batch.response_mask] == 0).all() and (fast[batch.response_mask] < 0).all()


def test_seed_off_by_one_disagrees(setup):
    """The seed scored y_t with the logits that had already seen y_t (errata 1): clearly different."""
    model, tokenizer, batch = setup
    spec = SamplingSpec()
    logits, _ = response_logits(model, batch)  # (B, T, V): positions P-1 ... P+T-2
    with torch.no_grad():
        shifted = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids).logits[:, batch.prompt_width:]  # positions P ... P+T-1
        right = response_logprobs(model, batch, spec).logprobs
    wrong = torch.log_softmax(shifted, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    keep = batch.response_mask
    assert (right[keep] - wrong[keep]).abs().max() > 0.1
    torch.testing.assert_close(right[keep], torch.log_softmax(logits.detach(), -1).gather(
        -1, batch.response_ids[..., None]).squeeze(-1)[keep], **TOL)


def test_equals_the_models_own_cross_entropy(setup):
    model, _, batch = setup
    labels = torch.where(batch.attention_mask.bool(), batch.input_ids, -100)
    labels[:, : batch.prompt_width] = -100  # score response tokens only
    with torch.no_grad():
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids, labels=labels).loss
        logprobs = response_logprobs(model, batch, SamplingSpec()).logprobs
    mean_nll = -logprobs.sum() / batch.response_mask.sum()
    torch.testing.assert_close(mean_nll, loss, **TOL)


def test_left_padding_changes_nothing(setup):
    """Each sequence alone (no padding) and inside the padded batch: same logprobs, entropy and
    value-head values."""
    model, tokenizer, batch = setup
    spec = sampling_spec(tokenizer, 0.9)
    policy = PolicyWithValueHead(model)
    torch.nn.init.normal_(policy.value_head.linear.weight, std=0.5)  # a value head that reads h
    with torch.no_grad():
        together = response_logprobs(model, batch, spec, with_entropy=True, with_hidden=True)
        values = policy.value_head(together.hidden)
        for b in range(len(batch)):
            length = int(batch.response_lengths[b])
            prompt = batch.prompt_ids[b][batch.prompt_mask[b].bool()].tolist()
            alone_batch = SequenceBatch.from_token_lists([prompt], [batch.response_ids[b, :length].tolist()],
                                                         tokenizer.pad_token_id)
            alone = response_logprobs(model, alone_batch, spec, with_entropy=True, with_hidden=True)
            torch.testing.assert_close(together.logprobs[b, :length], alone.logprobs[0], **TOL)
            torch.testing.assert_close(together.entropy[b, :length], alone.entropy[0], **TOL)
            torch.testing.assert_close(values[b, :length], policy.value_head(alone.hidden)[0], **TOL)


def test_entropy_and_hidden_come_from_the_same_pass(setup):
    model, tokenizer, batch = setup
    spec = sampling_spec(tokenizer, 0.8)
    with torch.no_grad():
        out = response_logprobs(model, batch, spec, with_entropy=True, with_hidden=True)
        logits, full = response_logits(model, batch, output_hidden_states=True)
        policy_logits, policy_values = PolicyWithValueHead(model)(batch.input_ids, batch.attention_mask)
    keep = batch.response_mask
    torch.testing.assert_close(out.entropy[keep], entropy_from_logits(spec.apply(logits))[keep], **TOL)
    P, T = batch.prompt_width, keep.shape[1]
    torch.testing.assert_close(out.hidden[keep], full.hidden_states[-1][:, P - 1 : P + T - 1][keep], **TOL)
    torch.testing.assert_close(policy_logits[:, P - 1 : P + T - 1], logits, **TOL)
    assert policy_values.shape == batch.input_ids.shape and (policy_values == 0).all()  # zero-initialised head
    assert (out.entropy[~keep] == 0).all() and (out.hidden[~keep] == 0).all()


def test_gradient_flows_and_padding_gets_none(setup):
    model, tokenizer, batch = setup
    model.zero_grad()
    out = response_logprobs(model, batch, sampling_spec(tokenizer, 1.0))
    out.logprobs.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    model.zero_grad()


@pytest.mark.parametrize("arch", ARCHS)
def test_float32_logprobs_under_bf16_weights(arch):
    """A bf16 model gives float32 logprobs: exactly the float32 log-softmax of its own bf16
    logits (no bf16 rounding after the model), and close to the fp32 model: mean |Δ| < 0.1 nat,
    max |Δ| < 0.5 nat (bf16 keeps 8 bits of mantissa, ~0.4% per weight and activation; these
    logits reach |z| ≈ 6, and we measured mean 0.03–0.04, max 0.07–0.24 over three batches)."""
    tokenizer = tiny_tokenizer(False)
    batch = random_batch(tokenizer, batch=5, seed=4)
    spec = sampling_spec(tokenizer, 0.7)
    model16 = tiny_model(arch, dtype="bf16")
    assert next(model16.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        lp16 = response_logprobs(model16, batch, spec, with_entropy=True)
        lp32 = response_logprobs(tiny_model(arch), batch, spec).logprobs
        logits16, _ = response_logits(model16, batch)
    assert logits16.dtype == torch.bfloat16
    assert lp16.logprobs.dtype == torch.float32 and lp16.entropy.dtype == torch.float32
    z = spec.apply(logits16)  # float32, then / temperature, as the sampler does
    exact = torch.log_softmax(z, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    keep = batch.response_mask
    torch.testing.assert_close(lp16.logprobs[keep], exact[keep], rtol=0, atol=1e-6)
    gap = (lp16.logprobs - lp32)[keep].abs()
    assert 0 < gap.mean() < 0.1 and gap.max() < 0.5


def test_chunks_give_the_same_numbers(monkeypatch):
    """The float32 chunks (one sequence at a time here) change nothing."""
    import ppo_lab.llm.logprobs as lp

    tokenizer = tiny_tokenizer(False)
    batch = random_batch(tokenizer, batch=4, seed=5)
    model, spec = tiny_model("llama"), sampling_spec(tokenizer, 0.8)
    with torch.no_grad():
        whole = response_logprobs(model, batch, spec, with_entropy=True)
        monkeypatch.setattr(lp, "CHUNK_ELEMENTS", 1)
        chunked = response_logprobs(model, batch, spec, with_entropy=True)
    torch.testing.assert_close(chunked.logprobs, whole.logprobs, rtol=0, atol=0)
    torch.testing.assert_close(chunked.entropy, whole.entropy, rtol=0, atol=0)


def test_excluded_tokens_and_temperature_change_the_distribution():
    tokenizer = tiny_tokenizer(False)
    batch = random_batch(tokenizer, batch=4, seed=6)
    model = tiny_model("gpt2")
    with torch.no_grad():
        plain = response_logprobs(model, batch, SamplingSpec(), with_entropy=True)
        excluded = response_logprobs(model, batch, sampling_spec(tokenizer, 1.0), with_entropy=True)
        cold = response_logprobs(model, batch, SamplingSpec(0.5), with_entropy=True)
    keep = batch.response_mask
    assert (excluded.logprobs[keep] > plain.logprobs[keep]).all()  # mass moved off pad and bos
    assert (cold.entropy[keep] < plain.entropy[keep]).all()


def test_an_excluded_token_in_a_response_is_a_value_error():
    tokenizer = tiny_tokenizer(False)
    batch = SequenceBatch.from_token_lists([[5, 6]], [[7, tokenizer.bos_token_id]], tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="batch"):
        response_logprobs(tiny_model("gpt2"), batch, sampling_spec(tokenizer, 1.0))


@pytest.mark.parametrize("wrapper", ["lora", "ddp"])
@pytest.mark.parametrize("arch", ARCHS)
def test_wrappers_keep_logits_to_keep_and_the_cache_name(arch, wrapper):
    """A LoRA (peft) or DDP wrapper's forward(**kwargs) hides the model's signature: the model
    inside is still asked for the last T + 1 positions' logits only (the LM head sees T + 1
    positions, not P + T), with the same numbers as the bare model, and the sampler passes the
    KV cache by the model's own keyword (no deprecation warning)."""
    import warnings

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ppo_lab.llm import generate
    from ppo_lab.llm.logprobs import forward_takes, forward_type
    from ppo_lab.scale.memory import add_lora

    tokenizer = tiny_tokenizer(False)
    model = tiny_model(arch)
    batch = random_batch(tokenizer, batch=4, seed=1)
    spec = sampling_spec(tokenizer, 0.7)
    bare = response_logprobs(model, batch, spec).logprobs
    if wrapper == "lora":
        wrapped = add_lora(model, 4)  # B = 0 at initialisation: the same function
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        wrapped = DistributedDataParallel(model)
    try:
        assert forward_type(wrapped) is type(model) and forward_takes(wrapped, "logits_to_keep")
        head_positions = []
        hook = model.get_output_embeddings().register_forward_hook(
            lambda module, args, out: head_positions.append(args[0].shape[1]))
        out = response_logprobs(wrapped, batch, spec).logprobs
        assert head_positions == [batch.response_mask.shape[1] + 1]
        torch.testing.assert_close(out, bare, **TOL)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            sampled, logprobs = generate(wrapped, batch.prompt_ids, batch.prompt_mask, spec, max_new_tokens=5,
                                         eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id,
                                         generator=torch.Generator().manual_seed(0))
        assert head_positions[1:] == [1] * sampled.response_mask.shape[1]  # prefill: the last position only
        torch.testing.assert_close(logprobs, response_logprobs(model, sampled, spec).logprobs, **TOL)
        hook.remove()
    finally:
        if wrapper == "ddp":
            dist.destroy_process_group()
