"""Loading, tiny configs, the sampling spec, and the reward / value models (§6): scores are read
at the last real response token — the EOS even when EOS == pad — and padding changes nothing."""

import logging

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

from llm_helpers import ARCHS, random_batch, tiny_model_dir, tiny_tokenizer
from ppo_lab.llm import (
    SamplingSpec,
    SequenceBatch,
    build_model,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    response_values,
    sampling_spec,
    scalar_model_from_causal_lm,
    sequence_scores,
    tiny_config,
    token_scalars,
)
from ppo_lab.llm.models import ensure_pad_token, quiet_transformers

TOL = dict(rtol=0, atol=1e-5)


def reward_model(arch: str, pad_is_eos: bool):
    """A reward model whose trunk is the tiny causal LM and whose head is seeded."""
    torch.manual_seed(11)
    model = scalar_model_from_causal_lm(tiny_model_dir(arch, pad_is_eos),
                                        pad_token_id=tiny_tokenizer(pad_is_eos).pad_token_id)
    torch.nn.init.normal_(model.score.weight, std=0.3)
    return model


def test_a_tokenizer_without_pad_gets_pad_eq_eos_with_a_message(caplog):
    directory = tiny_model_dir("gpt2", pad_is_eos=True)  # saved with pad = eos already
    with caplog.at_level(logging.WARNING, logger="ppo_lab.llm.models"):
        tokenizer = load_tokenizer(directory)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id and tokenizer.padding_side == "left"
    raw = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<eos>": 0, "a": 1}, unk_token="a")),
                                  eos_token="<eos>")
    assert raw.pad_token_id is None
    with caplog.at_level(logging.WARNING, logger="ppo_lab.llm.models"):
        ensure_pad_token(raw)
    assert raw.pad_token_id == 0 and "no pad token" in caplog.text
    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))
    with pytest.raises(ValueError, match="tokenizer"):
        ensure_pad_token(bare)


def test_a_scalar_model_with_more_than_one_label_is_refused(tmp_path):
    with quiet_transformers():
        AutoModelForSequenceClassification.from_pretrained(tiny_model_dir("gpt2"), num_labels=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=2"):
        load_scalar_model(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_config_round_trips_through_save_pretrained(arch, tmp_path):
    config = tiny_config(arch, 50, n_layer=1, d_model=16, n_head=2, max_positions=32, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = build_model(config)
    assert not model.training
    with quiet_transformers():
        model.save_pretrained(tmp_path)
    loaded = load_causal_lm(tmp_path)
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    assert type(loaded).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[arch]
    assert load_causal_lm(tmp_path, dtype="bf16").dtype == torch.bfloat16


def test_sampling_spec_of_a_tokenizer():
    own_pad = tiny_tokenizer(False)
    assert sampling_spec(own_pad, 0.5) == SamplingSpec(0.5, (own_pad.pad_token_id, own_pad.bos_token_id))
    pad_eq_eos = tiny_tokenizer(True)
    assert sampling_spec(pad_eq_eos).excluded_token_ids == (pad_eq_eos.bos_token_id,)  # never the EOS
    z = torch.tensor([[1.0, 2.0, 3.0]])
    out = SamplingSpec(2.0, (1,)).apply(z)
    assert out.tolist() == [[0.5, float("-inf"), 1.5]]
    assert SamplingSpec().apply(z.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_scores_sit_on_the_last_real_token_and_ignore_padding(arch, pad_is_eos):
    tokenizer = tiny_tokenizer(pad_is_eos)
    model = reward_model(arch, pad_is_eos)
    batch = random_batch(tokenizer, batch=5, seed=8, eos_rows=(0, 1, 3))
    with torch.no_grad():
        scores = sequence_scores(model, batch)
        scalars = token_scalars(model, batch)
        values = response_values(scalars, batch)
        for b in range(len(batch)):
            length = int(batch.response_lengths[b])
            prompt = batch.prompt_ids[b][batch.prompt_mask[b].bool()].tolist()
            response = batch.response_ids[b, :length].tolist()
            alone = SequenceBatch.from_token_lists([prompt], [response], tokenizer.pad_token_id)
            torch.testing.assert_close(scores[b], sequence_scores(model, alone)[0], **TOL)
            torch.testing.assert_close(values[b, :length], response_values(token_scalars(model, alone), alone)[0], **TOL)
            # the score is the scalar at the last response token: the EOS where there is one
            last = batch.prompt_width + length - 1
            assert batch.input_ids[b, last] == response[-1]
            torch.testing.assert_close(scores[b], scalars[b, last], rtol=0, atol=0)
    assert scores.dtype == torch.float32 and scores.shape == (5,)
    assert (values[~batch.response_mask] == 0).all()


def test_pad_eq_eos_hf_pooling_reads_the_token_before_eos_ours_reads_the_eos():
    tokenizer = tiny_tokenizer(True)
    model = reward_model("gpt2", True)
    batch = random_batch(tokenizer, batch=4, seed=9, eos_rows=(0, 1, 2))
    with torch.no_grad():
        ours = sequence_scores(model, batch)
        scalars = token_scalars(model, batch)
        hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits.squeeze(-1)
    index = batch.prompt_width + batch.response_lengths - 1
    before_eos = scalars.gather(1, (index - 1)[:, None]).squeeze(1)
    for b in range(3):  # rows that end with EOS == pad: HF pools at the token before it
        assert batch.response_ids[b, batch.response_lengths[b] - 1] == tokenizer.eos_token_id
        torch.testing.assert_close(hf[b], before_eos[b], **TOL)
        assert (hf[b] - ours[b]).abs() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_scalar_model_saves_and_loads(arch, tmp_path):
    model = reward_model(arch, False)
    with quiet_transformers():
        model.save_pretrained(tmp_path)
    loaded = load_scalar_model(tmp_path)
    assert isinstance(loaded, AutoModelForSequenceClassification._model_mapping[type(loaded.config)])
    batch = random_batch(tiny_tokenizer(False), batch=3, seed=10)
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(loaded, batch), sequence_scores(model, batch), **TOL)
    trunk_lm = load_causal_lm(tiny_model_dir(arch))
    trunk = getattr(trunk_lm, trunk_lm.base_model_prefix)
    ours = getattr(model, model.base_model_prefix)
    for (name, p), (_, q) in zip(trunk.named_parameters(), ours.named_parameters()):
        assert torch.equal(p, q), name  # the trunk came from the causal LM


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: load_causal_lm("/nonexistent/model_dir"), "path_or_id"),
        (lambda: load_tokenizer("./no_such_tokenizer"), "path_or_id"),
        (lambda: load_causal_lm("no-such-org/no-such-model"), "path_or_id"),
        (lambda: load_scalar_model("/nonexistent/rm"), "path_or_id"),
        (lambda: scalar_model_from_causal_lm("/nonexistent/sft"), "causal_lm_path"),
        (lambda: load_causal_lm(tiny_model_dir("gpt2"), dtype="fp8"), "dtype"),
        (lambda: tiny_config("bert", 10), "arch"),
        (lambda: tiny_config("gpt2", 0), "vocab_size"),
        (lambda: tiny_config("llama", 10, d_model=10, n_head=4), "d_model"),
        (lambda: SamplingSpec(0.0), "temperature"),
        (lambda: SamplingSpec(float("nan")), "temperature"),
        (lambda: SamplingSpec(1.0, (-1,)), "excluded_token_ids"),
        (lambda: SamplingSpec(1.0, (99,)).apply(torch.zeros(2, 5)), "excluded_token_ids"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
