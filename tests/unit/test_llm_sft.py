"""ppo_lab.llm.sft: the loss counts response tokens only (checked against transformers' own
shifted cross-entropy), training lowers the held-out loss, runs are seeded, outputs reload, and
bad input fails naming the field."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ppo_lab.llm import sft as sft_module
from ppo_lab.llm.sequences import SequenceBatch
from ppo_lab.llm.sft import SFTConfig, encode_examples, sft_loss, train_sft
from ppo_lab.llm.task import ReviewTask, train_tokenizer

# a model small enough for a unit test: one block, width 32
SMALL = dict(n_layer=1, d_model=32, n_head=2, num_demonstrations=256, num_eval=32,
             batch_size=16, eval_every=10, learning_rate=1e-2, torch_threads=1)


def _batch(tokenizer, demos) -> SequenceBatch:
    prompts, responses = encode_examples(tokenizer, [d.prompt for d in demos],
                                         [d.response for d in demos])
    return SequenceBatch.from_token_lists(prompts, responses, tokenizer.pad_token_id,
                                          tokenizer.eos_token_id)


def _hf_loss(model, batch: SequenceBatch, *, prompt_too: bool = False) -> torch.Tensor:
    """transformers' own loss: labels = input ids, −100 where not counted; it shifts inside."""
    labels = batch.input_ids.clone()
    counted = batch.attention_mask.bool()
    if not prompt_too:
        counted[:, : batch.prompt_width] = False
    labels[~counted] = -100
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 position_ids=batch.position_ids, labels=labels).loss


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    result = train_sft(SFTConfig(max_steps=40, out_dir=str(out), **SMALL))
    return result, out


@pytest.mark.parametrize("pad_equals_eos", [False, True])
def test_loss_is_on_response_tokens_only(trained, pad_equals_eos):
    result, _ = trained
    tokenizer = train_tokenizer(pad_equals_eos=pad_equals_eos)
    batch = _batch(tokenizer, ReviewTask().demonstrations(6, seed=2))
    # every response ends with EOS, inside the mask, also when EOS is the pad token
    last = batch.response_ids.gather(1, (batch.response_lengths - 1)[:, None]).squeeze(1)
    assert (last == tokenizer.eos_token_id).all() and batch.eos.all()
    with torch.no_grad():
        ours = sft_loss(result.model, batch)
        torch.testing.assert_close(ours, _hf_loss(result.model, batch), rtol=1e-5, atol=1e-6)
        # counting the prompt too is a different number: the check above can fail
        assert abs(float(ours - _hf_loss(result.model, batch, prompt_too=True))) > 1e-3
        # what sits in padding positions changes nothing
        noisy = batch.input_ids.clone()
        noisy[batch.attention_mask == 0] = 7
        padded = SequenceBatch(noisy, batch.attention_mask, batch.prompt_width, batch.response_mask,
                               batch.response_lengths, batch.eos)
        torch.testing.assert_close(sft_loss(result.model, padded), ours)


def test_gradient_only_through_response_targets(trained):
    """Changing a prompt token's *target role* is impossible: only response positions' logits
    get a gradient from the loss."""
    result, _ = trained
    model = result.model
    batch = _batch(result.tokenizer, ReviewTask().demonstrations(4, seed=3))
    logits = {}

    def keep(_module, _inputs, output):
        output.logits.retain_grad()
        logits["out"] = output.logits

    handle = model.register_forward_hook(keep)
    try:
        sft_loss(model, batch).backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    grad = logits["out"].grad.abs().sum(-1)  # (B, P + T)
    P = batch.prompt_width
    assert (grad[:, : P - 1] == 0).all()  # prompt positions predict prompt tokens: not counted
    scored = torch.zeros_like(grad, dtype=torch.bool)
    scored[:, P - 1 : -1] = batch.response_mask
    assert (grad[scored] > 0).all() and (grad[~scored] == 0).all()


def test_training_lowers_the_held_out_loss(trained):
    result, _ = trained
    evals = [row["sft/eval_loss"] for row in result.history if "sft/eval_loss" in row]
    assert len(evals) == 4
    assert evals[-1] < evals[0] < math.log(len(result.tokenizer))
    assert result.history[-1]["sft/loss"] < 0.6 * result.history[0]["sft/loss"]
    assert result.summary["num_train"] == 256 and result.summary["num_eval"] == 32
    assert not result.model.training


def test_seeded_runs_are_identical():
    config = SFTConfig(max_steps=3, **SMALL)
    a, b = train_sft(config).model.state_dict(), train_sft(config).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train_sft(config.replace(seed=2)).model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_outputs_reload_with_from_pretrained(trained):
    result, out = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.csv",
                 "metrics.json", "learning_curve.png"):
        assert (out / "sft" / name).is_file(), name
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out / "sft")
    tokenizer = AutoTokenizer.from_pretrained(out / "sft")
    assert tokenizer.get_vocab() == result.tokenizer.get_vocab()
    batch = _batch(tokenizer, ReviewTask().demonstrations(3, seed=4))
    with torch.no_grad():
        torch.testing.assert_close(sft_loss(model, batch), sft_loss(result.model, batch))


def test_user_data_and_model_path(trained, tmp_path):
    _, out = trained
    data = tmp_path / "demos.jsonl"
    data.write_text("".join(f'{{"prompt": "review : the lamp from acme .", "response": "the '
                            f'bulb is {w} ."}}\n' for w in ("good", "nice", "great", "fine") * 10))
    result = train_sft(SFTConfig(model=str(out / "sft"), data=str(data), max_steps=2,
                                 batch_size=8, num_eval=100, torch_threads=1))
    assert result.summary["num_train"] == 36 and result.summary["num_eval"] == 4


def test_llama_architecture_trains():
    result = train_sft(SFTConfig(arch="llama", max_steps=3, **SMALL))
    assert type(result.model).__name__ == "LlamaForCausalLM"
    assert result.history[-1]["sft/loss"] < result.history[0]["sft/loss"]


def test_bad_input_names_the_field(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="n_head: 3 does not divide d_model"):
        SFTConfig(n_head=3)
    with pytest.raises(ValueError, match="learning_rate"):
        SFTConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="model: no such model directory"):
        SFTConfig(model=str(tmp_path / "missing"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="data: .* has no records"):
        train_sft(SFTConfig(data=str(empty), **SMALL))
    with pytest.raises(ValueError, match="batch_size: 64 is more than"):
        train_sft(SFTConfig(**{**SMALL, "batch_size": 64, "num_demonstrations": 32}))
    monkeypatch.setattr(sft_module, "sft_loss", lambda model, batch: torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="learning_rate: the SFT loss is nan at step 1"):
        train_sft(SFTConfig(max_steps=2, **SMALL))
