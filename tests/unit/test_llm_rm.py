"""ppo_lab.llm.reward_model: the pair layout and loss, training raises held-out accuracy, the
policy-pair agreement against the gold order, seeding, saving, and errors naming the field."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from ppo_lab.llm import reward_model as rm_module
from ppo_lab.llm.models import sequence_scores
from ppo_lab.llm.reward_model import (RMConfig, pair_batch, policy_pair_agreement,
                                      preference_accuracy, rm_loss, train_reward_model)
from ppo_lab.llm.rewards import bradley_terry_loss
from ppo_lab.llm.sft import SFTConfig, train_sft
from ppo_lab.llm.task import ReviewTask

SMALL = dict(num_pairs=512, num_eval=128, batch_size=16, eval_every=20, torch_threads=1,
             num_policy_pairs=16)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    train_sft(SFTConfig(n_layer=1, d_model=32, n_head=2, num_demonstrations=512, num_eval=0,
                        batch_size=32, max_steps=60, learning_rate=1e-2, torch_threads=1,
                        out_dir=str(out)))
    return out / "sft"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A reward model on the committed tiny SFT policy's trunk (model=None)."""
    out = tmp_path_factory.mktemp("reward")
    return train_reward_model(RMConfig(max_steps=60, out_dir=str(out), **SMALL)), out


def test_pair_batch_layout_and_loss(trained):
    result, _ = trained
    pairs = ReviewTask().preference_pairs(3, seed=9)
    batch = pair_batch(result.tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs],
                       [p.rejected for p in pairs])
    assert len(batch) == 6 and batch.eos.all()
    assert torch.equal(batch.prompt_ids[:3], batch.prompt_ids[3:])  # chosen rows, then rejected
    with torch.no_grad():
        loss, stats = rm_loss(result.model, batch)
        one = [sequence_scores(result.model, pair_batch(result.tokenizer, [p.prompt], [p.chosen],
                                                        [p.rejected])) for p in pairs]
    chosen, rejected = torch.stack([s[0] for s in one]), torch.stack([s[1] for s in one])
    expected, _ = bradley_terry_loss(chosen, rejected)  # scores alone = scores padded in a batch
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert stats["accuracy"] == float((chosen > rejected).float().mean())


def test_training_raises_held_out_accuracy(trained):
    result, _ = trained
    untrained = train_reward_model(RMConfig(max_steps=1, learning_rate=1e-9, **SMALL))
    before = untrained.summary["eval_accuracy"]
    after = result.summary["eval_accuracy"]
    assert after > 0.8 and after > before + 0.15
    evals = [row["reward/eval_accuracy"] for row in result.history if "reward/eval_accuracy" in row]
    assert len(evals) == 3 and evals[-1] == after
    pairs = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
             for p in ReviewTask().preference_pairs(128, seed=1, label_noise=0.0)]
    assert preference_accuracy(result.model, result.tokenizer, pairs) == after


def test_policy_pair_agreement_matches_the_gold_order(trained):
    from ppo_lab.llm.assets import tiny_path
    from ppo_lab.llm.models import load_causal_lm

    result, _ = trained
    policy = load_causal_lm(tiny_path("sft"))
    prompts = ReviewTask().prompts(24, seed=3)
    out = policy_pair_agreement(result.model, policy, result.tokenizer, prompts,
                                generator=torch.Generator().manual_seed(0))
    again = policy_pair_agreement(result.model, policy, result.tokenizer, prompts,
                                  generator=torch.Generator().manual_seed(0))
    assert out == again  # seeded
    assert out["num_pairs"] + out["ties"] == 24 and len(out["pairs"]) == 24
    task = ReviewTask()
    agree = 0
    for pair in out["pairs"]:
        gold = [task.gold_reward(pair["prompt"], r, eos=e) for r, e in zip(pair["responses"], pair["eos"])]
        assert gold == [g["gold"] for g in pair["gold"]]
        if not pair["tie"]:
            agree += (pair["scores"][0] > pair["scores"][1]) == (gold[0] > gold[1])
    assert out["agreement"] == agree / out["num_pairs"]
    assert result.summary["policy_pair_num_pairs"] + result.summary["policy_pair_ties"] == 16


def test_saved_reward_model_reloads(trained):
    result, out = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.csv", "metrics.json"):
        assert (out / "reward" / name).is_file(), name
    model = AutoModelForSequenceClassification.from_pretrained(out / "reward").eval()
    assert model.config.num_labels == 1
    pairs = ReviewTask().preference_pairs(4, seed=2)
    batch = pair_batch(result.tokenizer, *([getattr(p, k) for p in pairs]
                                           for k in ("prompt", "chosen", "rejected")))
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(model, batch), sequence_scores(result.model, batch))


def test_seeded_runs_are_identical(sft_dir):
    config = RMConfig(model=str(sft_dir), max_steps=2, **{**SMALL, "num_policy_pairs": 0})
    a = train_reward_model(config).model.state_dict()
    b = train_reward_model(config).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_user_pairs(sft_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "review : the lamp from acme .", "chosen": "the bulb is good .", '
                    '"rejected": "the bulb is bad ."}\n' * 40)
    result = train_reward_model(RMConfig(model=str(sft_dir), data=str(data), max_steps=3,
                                         batch_size=8, torch_threads=1))
    assert result.summary["num_train"] == 36 and result.summary["num_eval"] == 4
    assert "policy_pair_agreement" not in result.summary  # no gold reward for a user's data


def test_bad_input_names_the_field(sft_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="label_noise: must be < 0.5"):
        RMConfig(label_noise=0.5)
    with pytest.raises(ValueError, match="model: no such model directory"):
        RMConfig(model=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="prompts: the policy pairs"):
        RMConfig(data="pairs.jsonl", prompts="prompts.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "y"}\n')
    with pytest.raises(ValueError, match=r"data: .*bad.jsonl:1: expected an object"):
        train_reward_model(RMConfig(model=str(sft_dir), data=str(bad), **SMALL))
    monkeypatch.setattr(rm_module, "sequence_scores",
                        lambda model, batch: torch.full((len(batch),), float("nan")))
    with pytest.raises(ValueError, match="learning_rate: non-finite reward scores at step 1"):
        train_reward_model(RMConfig(model=str(sft_dir), max_steps=2, **SMALL))


def test_pad_equals_eos_scores_at_the_eos(tmp_path):
    """With pad == eos the reward is read at the EOS that ends each response (from the lengths),
    not where transformers' own pooling would read it (the last token that is not pad)."""
    train_sft(SFTConfig(pad_equals_eos=True, n_layer=1, d_model=32, n_head=2, num_demonstrations=64,
                        num_eval=0, batch_size=16, max_steps=2, torch_threads=1, out_dir=str(tmp_path)))
    result = train_reward_model(RMConfig(model=str(tmp_path / "sft"), max_steps=2,
                                         **{**SMALL, "num_policy_pairs": 0}))
    tokenizer, model = result.tokenizer, result.model
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    pairs = ReviewTask().preference_pairs(2, seed=4)
    batch = pair_batch(tokenizer, *([getattr(p, k) for p in pairs] for k in ("prompt", "chosen", "rejected")))
    ends = batch.response_ids.gather(1, (batch.response_lengths - 1)[:, None]).squeeze(1)
    assert (ends == tokenizer.eos_token_id).all() and batch.response_mask.sum() == batch.response_lengths.sum()
    with torch.no_grad():
        ours = sequence_scores(model, batch)
        pooled = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits.squeeze(-1)
    assert not torch.allclose(ours, pooled)  # transformers pools at the token before EOS
