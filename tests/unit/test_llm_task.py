"""ppo_lab.llm.task: the gold reward term by term on hand-solvable reviews, the seeded generators,
the preference label noise, the JSON-lines reader, and the word-level tokenizer."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from ppo_lab.llm.task import (ADJECTIVES, ASPECTS, BOS, EOS, PAD, PRODUCTS, VERBS, ReviewTask,
                              read_jsonl, train_tokenizer)

TASK = ReviewTask()
PHONE = "review : the red phone from acme ."


def sentiment(total: float) -> float:
    return 3.0 * math.tanh(total / 6.0)


def test_gold_sentiment_with_intensifier_and_length():
    terms = TASK.gold_terms(PHONE, "the battery is very good . i love it .", eos=True)
    # S = 1.5 · 1 (very good) + 2 (love); 10 words
    assert terms["sentiment_sum"] == pytest.approx(3.5)
    assert terms["sentiment"] == pytest.approx(sentiment(3.5))
    assert terms["length"] == pytest.approx(0.02 * 10)
    assert terms["repeats"] == terms["off_topic"] == terms["no_eos"] == 0
    assert terms["gold"] == pytest.approx(sentiment(3.5) + 0.2)
    assert TASK.gold_reward(PHONE, "the battery is very good . i love it .", eos=True) == terms["gold"]


def test_gold_diminishing_returns():
    one = TASK.gold_terms(PHONE, "the battery is excellent .", eos=True)["sentiment"]
    two = TASK.gold_terms(PHONE, "the battery is excellent . the screen is excellent .", eos=True)["sentiment"]
    three = TASK.gold_terms(PHONE, "the battery is excellent . the screen is excellent . "
                                   "the camera is excellent .", eos=True)["sentiment"]
    assert 0 < three - two < two - one < one


def test_gold_repeat_penalty_counts_each_repeat():
    # "battery" named twice (1), "excellent excellent" (1), "love" twice (1); "good" on two
    # aspects is not a repeat.
    terms = TASK.gold_terms(PHONE, "the battery is good . the screen is good . the battery is "
                                   "excellent excellent . i love it . i love it .", eos=True)
    assert terms["repeats"] == -3.0
    assert TASK.gold_terms(PHONE, "the battery is good . the screen is good .", eos=True)["repeats"] == 0


def test_gold_off_topic_and_no_eos_and_special_tokens():
    terms = TASK.gold_terms(PHONE, "the zipper is good . the lid is bad .", eos=True)
    assert terms["off_topic"] == -2.0
    truncated = TASK.gold_terms(PHONE, "the screen is good", eos=False)
    assert truncated["no_eos"] == -2.0
    # decoded special tokens are not words; a prompt without a product has no off-topic term
    assert TASK.gold_terms(PHONE, f"the screen is good . {EOS}", eos=True) == \
        TASK.gold_terms(PHONE, "the screen is good .", eos=True)
    assert TASK.gold_terms("write something", "the zipper is good .", eos=True)["off_topic"] == 0


def test_gold_rewards_batched_matches_single():
    prompts, responses = [PHONE, PHONE], ["the screen is good .", "the camera is awful"]
    gold = TASK.gold_rewards(prompts, responses, eos=[True, False])
    assert gold.tolist() == pytest.approx([TASK.gold_reward(PHONE, responses[0], eos=True),
                                           TASK.gold_reward(PHONE, responses[1], eos=False)])
    with pytest.raises(ValueError, match="eos"):
        TASK.gold_rewards(prompts, responses, eos=[True])


def test_generators_are_seeded_and_deterministic():
    assert TASK.prompts(20, seed=3) == TASK.prompts(20, seed=3) != TASK.prompts(20, seed=4)
    assert TASK.demonstrations(20, seed=3) == TASK.demonstrations(20, seed=3)
    assert TASK.preference_pairs(20, seed=3) == TASK.preference_pairs(20, seed=3)
    assert TASK.respond(PHONE, seed=1) == TASK.respond(PHONE, seed=1)
    with pytest.raises(ValueError, match="n: must be a positive integer"):
        TASK.prompts(0, seed=1)
    with pytest.raises(ValueError, match="prompt"):
        TASK.respond("hello", seed=1)


def test_demonstrations_hold_no_loophole():
    """Demonstrations never repeat, never go off topic and fit the length: the reward model sees
    no example of the three penalties."""
    vocabulary = set(TASK.vocabulary())
    for demo in TASK.demonstrations(2000, seed=0):
        terms = TASK.gold_terms(demo.prompt, demo.response, eos=True)
        assert terms["repeats"] == terms["off_topic"] == 0
        words = demo.response.split()
        assert set(words) <= vocabulary and 4 <= len(words) <= 24
        assert 7 <= len(demo.prompt.split()) <= 13  # + BOS: 8–14 tokens
        product = next(w for w in demo.prompt.split() if w in PRODUCTS)
        aspects = [w for w in words if w in ASPECTS]
        assert aspects == sorted(aspects, key=PRODUCTS[product].index)  # the product's order


def test_demonstrations_cover_both_signs_of_sentiment():
    gold = [TASK.gold_reward(d.prompt, d.response, eos=True) for d in TASK.demonstrations(1000, seed=1)]
    assert min(gold) < -1.5 and max(gold) > 2.0
    used = Counter(w for d in TASK.demonstrations(1000, seed=1) for w in d.response.split())
    assert all(used[w] > 0 for w in (*ADJECTIVES, *VERBS))


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_preference_label_noise_rate(noise):
    pairs = TASK.preference_pairs(4000, seed=5, label_noise=noise)
    flipped = [p.flipped for p in pairs]
    # binomial standard error at n = 4000 is <= 0.008; 4 sigma
    assert abs(sum(flipped) / len(pairs) - noise) < 0.032
    for p in pairs:
        assert p.chosen_gold == TASK.gold_reward(p.prompt, p.chosen, eos=True)
        assert (p.chosen_gold < p.rejected_gold) == p.flipped
        assert p.chosen_gold != p.rejected_gold
    with pytest.raises(ValueError, match="label_noise"):
        TASK.preference_pairs(4, seed=5, label_noise=0.5)


def test_task_fields_are_validated():
    with pytest.raises(ValueError, match="repeat_penalty"):
        ReviewTask(repeat_penalty=-1)
    with pytest.raises(ValueError, match="max_aspect_sentences"):
        ReviewTask(max_aspect_sentences=4)


def test_read_jsonl_errors_name_the_flag(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "response": "b", "extra": 1}\n\n{"prompt": "c", "response": "d"}\n')
    assert read_jsonl(good, ["prompt", "response"]) == [{"prompt": "a", "response": "b"},
                                                         {"prompt": "c", "response": "d"}]
    with pytest.raises(ValueError, match="data: no such file"):
        read_jsonl(tmp_path / "missing.jsonl", ["prompt"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="data: .* has no records"):
        read_jsonl(empty, ["prompt"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"prompts: .*bad.jsonl:2: not valid JSON"):
        read_jsonl(bad, ["prompt"], name="prompts")
    bad.write_text(json.dumps({"prompt": "a", "chosen": 3}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected an object"):
        read_jsonl(bad, ["prompt", "chosen"])


@pytest.mark.parametrize("pad_equals_eos", [False, True])
def test_tokenizer_round_trip_and_save_load(tmp_path, pad_equals_eos):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = train_tokenizer(pad_equals_eos=pad_equals_eos, save_dir=tmp_path)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert len(tokenizer) == len(TASK.vocabulary()) + (3 if pad_equals_eos else 4)
    assert (tokenizer.pad_token == EOS) == pad_equals_eos
    if not pad_equals_eos:
        assert tokenizer.pad_token == PAD
    demo = TASK.demonstrations(1, seed=0)[0]
    ids = tokenizer(demo.prompt)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.convert_ids_to_tokens(ids[0]) == BOS
    assert len(ids) == len(demo.prompt.split()) + 1  # one token per word, after BOS
    assert tokenizer.decode(ids, skip_special_tokens=True) == demo.prompt
    response = tokenizer(demo.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(response, skip_special_tokens=False) == demo.response + " " + EOS
    assert tokenizer.convert_ids_to_tokens(tokenizer("blargh")["input_ids"])[1] == "<unk>"

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.padding_side == "left"
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id) == \
        (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    assert loaded(demo.prompt)["input_ids"] == ids
    batch = loaded([demo.prompt, "review :"], padding=True)["input_ids"]
    assert batch[1][0] == loaded.pad_token_id  # left padding


def test_tokenizer_training_is_deterministic(tmp_path):
    train_tokenizer(save_dir=tmp_path / "a")
    train_tokenizer(save_dir=tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(ValueError, match="texts"):
        train_tokenizer([])
