"""Generation (§6): batched, left-padded, KV-cached sampling from exactly the distribution the
scoring pass computes — temperature and excluded tokens included, whatever the model's own
``generation_config`` says."""

import pytest
import torch

from llm_helpers import ARCHS, random_batch, tiny_model, tiny_tokenizer
from ppo_lab.llm import (SamplingSpec, SequenceBatch, build_model, generate, hf_generate, response_logprobs,
                         sampling_spec, tiny_config)

TOL = dict(rtol=0, atol=1e-5)


def prompts(tokenizer, batch=6, seed=1):
    b = random_batch(tokenizer, batch=batch, seed=seed)
    return b.prompt_ids, b.prompt_mask


def run(fn, model, tokenizer, spec, seed=0, max_new_tokens=10, **kw):
    ids, mask = kw.pop("prompts", None) or prompts(tokenizer)
    if fn is generate:
        kw["generator"] = torch.Generator().manual_seed(seed)
    else:
        torch.manual_seed(seed)  # model.generate draws from the global generator
    eos = kw.pop("eos_token_id", tokenizer.eos_token_id)
    return fn(model, ids, mask, spec, max_new_tokens=max_new_tokens, eos_token_id=eos,
              pad_token_id=tokenizer.pad_token_id, **kw)


def scored(model, batch, spec):
    with torch.no_grad():
        return response_logprobs(model, batch, spec).logprobs


@pytest.mark.parametrize("fn", [generate, hf_generate], ids=["own_loop", "model.generate"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pad_is_eos", [False, True], ids=["own_pad", "pad_eq_eos"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_the_scoring_pass(fn, arch, pad_is_eos, temperature):
    tokenizer = tiny_tokenizer(pad_is_eos)
    model = tiny_model(arch, pad_is_eos)
    spec = sampling_spec(tokenizer, temperature)
    assert spec.excluded_token_ids  # bos (and pad where it differs from eos)
    batch, logprobs = run(fn, model, tokenizer, spec)
    assert logprobs.dtype == torch.float32 and logprobs.shape == batch.response_mask.shape
    torch.testing.assert_close(logprobs, scored(model, batch, spec), **TOL)
    assert (logprobs[~batch.response_mask] == 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_own_loop_and_model_generate_draw_the_same_tokens(arch):
    """Same distribution, same random numbers: the two samplers agree token for token."""
    tokenizer = tiny_tokenizer(False)
    model = tiny_model(arch)
    spec = sampling_spec(tokenizer, 0.8)
    ours, lp_ours = run(generate, model, tokenizer, spec, seed=5)
    theirs, lp_theirs = run(hf_generate, model, tokenizer, spec, seed=5)
    assert torch.equal(ours.input_ids, theirs.input_ids)
    assert torch.equal(ours.response_lengths, theirs.response_lengths) and torch.equal(ours.eos, theirs.eos)
    torch.testing.assert_close(lp_ours, lp_theirs, **TOL)


@pytest.mark.parametrize("top_k", [20, 3])
def test_the_models_generation_config_is_overridden(top_k):
    """A model whose generation_config sets top_k and repetition_penalty=1.1 still samples plain
    temperature sampling: same tokens as without those settings, logprobs equal the scoring
    pass — while the model's own generate with its config does not match the scoring pass."""
    tokenizer = tiny_tokenizer(False)
    plain = tiny_model("llama")
    model = tiny_model("llama")
    model.generation_config.top_k = top_k
    model.generation_config.repetition_penalty = 1.1
    spec = sampling_spec(tokenizer, 1.0)
    for fn in (generate, hf_generate):
        batch, logprobs = run(fn, model, tokenizer, spec, seed=2, max_new_tokens=12)
        reference, _ = run(fn, plain, tokenizer, spec, seed=2, max_new_tokens=12)
        assert torch.equal(batch.input_ids, reference.input_ids)
        torch.testing.assert_close(logprobs, scored(model, batch, spec), **TOL)
    # the trap: model.generate left to the model's generation_config samples another distribution
    ids, mask = prompts(tokenizer)
    torch.manual_seed(2)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=12, min_new_tokens=12,
                         output_scores=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    tokens = out.sequences[:, ids.shape[1]:]
    naive = torch.log_softmax(torch.stack(out.scores, 1), -1).gather(-1, tokens[..., None]).squeeze(-1)
    batch = SequenceBatch.from_parts(ids, mask, tokens, torch.full((len(ids),), 12))
    assert (naive - scored(model, batch, SamplingSpec())).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pad_is_eos", [False, True], ids=["own_pad", "pad_eq_eos"])
def test_rows_stop_at_eos_and_excluded_tokens_never_appear(arch, pad_is_eos):
    tokenizer = tiny_tokenizer(pad_is_eos)
    model = tiny_model(arch, pad_is_eos)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    word = tokenizer.convert_tokens_to_ids("good")
    # allow only EOS, "good" and "bad": responses end early and often, and every other token is excluded
    keep = {eos, word, tokenizer.convert_tokens_to_ids("bad")}
    spec = SamplingSpec(1.3, tuple(i for i in range(len(tokenizer)) if i not in keep))
    batch, logprobs = run(generate, model, tokenizer, spec, seed=3, max_new_tokens=8, prompts=prompts(tokenizer, 16))
    response, mask = batch.response_ids, batch.response_mask
    assert batch.eos.any() and (~batch.eos).any()
    for b in range(len(batch)):
        n = int(batch.response_lengths[b])
        row = response[b].tolist()
        assert set(row[:n]) <= keep
        assert eos not in row[: n - 1]  # the first EOS ends the row ...
        assert (row[n - 1] == eos) == bool(batch.eos[b])  # ... and is counted in its length
        assert row[n:] == [pad] * (len(row) - n)
        assert bool(batch.eos[b]) or n == 8
    assert torch.equal(mask, torch.arange(response.shape[1]) < batch.response_lengths[:, None])
    last = batch.response_lengths - 1  # the EOS of an ended row is in its mask, also when EOS == pad
    ended = batch.eos
    assert (response[ended, last[ended]] == eos).all() and mask[ended, last[ended]].all()
    torch.testing.assert_close(logprobs, scored(model, batch, spec), **TOL)


def test_seeded_sampling_is_reproducible():
    tokenizer = tiny_tokenizer(False)
    model, spec = tiny_model("gpt2"), sampling_spec(tokenizer, 1.0)
    a, lp_a = run(generate, model, tokenizer, spec, seed=7)
    b, lp_b = run(generate, model, tokenizer, spec, seed=7)
    c, _ = run(generate, model, tokenizer, spec, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(lp_a, lp_b)
    assert not torch.equal(a.input_ids, c.input_ids)


def _bad(**overrides):
    tokenizer = tiny_tokenizer(False)
    ids, mask = prompts(tokenizer, 3)
    args = dict(model=tiny_model("gpt2"), prompt_ids=ids, prompt_mask=mask, spec=sampling_spec(tokenizer),
                max_new_tokens=4, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    args.update(overrides)
    return args


@pytest.mark.parametrize("fn", [generate, hf_generate], ids=["own_loop", "model.generate"])
@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(prompt_ids=torch.ones(3)), "prompt_ids"),
        (dict(prompt_mask=torch.ones(2, 2)), "prompt_mask"),
        (dict(prompt_ids=torch.tensor([[5, 6], [7, 3]]), prompt_mask=torch.tensor([[1, 1], [1, 0]])), "prompt_mask"),
        (dict(spec=0.7), "spec"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(eos_token_id=None), "eos_token_id"),
        (dict(pad_token_id=-1), "pad_token_id"),
        (dict(spec=SamplingSpec(1.0, (2,))), "spec"),  # excludes the EOS (id 2)
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(fn, overrides, name):
    args = _bad(**overrides)
    with pytest.raises(ValueError, match=name):
        fn(args.pop("model"), args.pop("prompt_ids"), args.pop("prompt_mask"), args.pop("spec"), **args)


@pytest.mark.parametrize("fn", [generate, hf_generate], ids=["own_loop", "model.generate"])
def test_sampling_with_dropout_on_is_refused(fn):
    args = _bad()
    args.pop("model")
    tokenizer = tiny_tokenizer(False)
    config = tiny_config("gpt2", len(tokenizer), n_layer=1, d_model=16, n_head=2)  # dropout 0 ...
    config.resid_pdrop = 0.1  # ... but this one has some
    model = build_model(config).train()
    with pytest.raises(ValueError, match="model"):
        fn(model, args.pop("prompt_ids"), args.pop("prompt_mask"), args.pop("spec"), **args)
    args = _bad()  # training mode without dropout samples as eval mode does
    model = args.pop("model").train()
    run(generate, model, tokenizer, args["spec"], max_new_tokens=2)
    model.eval()


def test_model_generate_refuses_what_it_cannot_switch_off():
    args = _bad()
    model = args.pop("model")
    model.generation_config.suppress_tokens = [5]
    with pytest.raises(ValueError, match="suppress_tokens"):
        hf_generate(model, args.pop("prompt_ids"), args.pop("prompt_mask"), args.pop("spec"), **args)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_sampler_gives_float32_logprobs_close_to_the_scoring_pass(arch):
    """In bf16 the cached one-token steps round differently from the full pass: close (we measured
    at most 0.03 nat), not equal — the trainer scores 16-bit rollouts once for its old logprobs."""
    tokenizer = tiny_tokenizer(False)
    model, spec = tiny_model(arch, dtype="bf16"), sampling_spec(tokenizer, 1.0)
    batch, logprobs = run(generate, model, tokenizer, spec, seed=4, max_new_tokens=12)
    assert logprobs.dtype == torch.float32
    gap = (logprobs - scored(model, batch, spec))[batch.response_mask].abs()
    assert gap.max() < 0.1


@pytest.mark.parametrize("arch", ARCHS)
def test_several_stop_ids_end_a_response_at_the_first_of_them(arch):
    """eos_token_id as a list (an instruct model's end-of-turn token beside its EOS): a row ends
    at the first token in the list, kept and counted, eos True; until then the draws are the
    single-EOS run's (same seed); both samplers agree and the log-probs equal the scoring pass."""
    tokenizer = tiny_tokenizer(False)
    model = tiny_model(arch)
    spec = sampling_spec(tokenizer, 1.0)
    plain, _ = run(generate, model, tokenizer, spec, seed=3, max_new_tokens=12)
    real = plain.response_ids[plain.response_mask]
    stop = int(torch.mode(real[real != tokenizer.eos_token_id]).values)  # a frequent token
    stops = [tokenizer.eos_token_id, stop]
    ours, lp = run(generate, model, tokenizer, spec, seed=3, max_new_tokens=12, eos_token_id=stops)
    theirs, lp_theirs = run(hf_generate, model, tokenizer, spec, seed=3, max_new_tokens=12, eos_token_id=stops)
    cut = 0
    for b in range(len(ours)):
        n, m = int(ours.response_lengths[b]), int(plain.response_lengths[b])
        row = ours.response_ids[b, :n].tolist()
        assert row == plain.response_ids[b, :n].tolist() and n <= m
        assert not set(row[:-1]) & set(stops) and bool(ours.eos[b]) == (row[-1] in stops)
        cut += n < m
    assert cut > 0  # the second stop ended some rows early
    torch.testing.assert_close(lp, scored(model, ours, spec), **TOL)
    assert torch.equal(ours.input_ids, theirs.input_ids) and torch.equal(ours.eos, theirs.eos)
    torch.testing.assert_close(lp, lp_theirs, **TOL)


def test_a_stop_token_is_never_excluded_from_sampling():
    """pad and bos are excluded from the sampling distribution unless they end a response."""
    tokenizer = tiny_tokenizer(False)
    assert tokenizer.pad_token_id in sampling_spec(tokenizer).excluded_token_ids
    spec = sampling_spec(tokenizer, stop_token_ids=(tokenizer.pad_token_id,))
    assert tokenizer.pad_token_id not in spec.excluded_token_ids
    assert tokenizer.bos_token_id in spec.excluded_token_ids
    with pytest.raises(ValueError, match="^spec: excludes eos_token_id"):
        run(generate, tiny_model("gpt2"), tokenizer, sampling_spec(tokenizer),
            eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id])
