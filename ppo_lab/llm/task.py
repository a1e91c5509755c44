"""A synthetic review language with an exactly computed gold reward (§6, §7).

A prompt asks for a review of a product::

    review : the red phone from acme , bought last week .

and a response is a short review in a small generated grammar::

    the battery is very good . the screen is poor . i like it .

(or ``the straps are …`` for a plural aspect).

Every word is a token of a word-level tokenizer (:func:`train_tokenizer`), so a two-layer GPT-2
learns the language in about a minute on a CPU, and the *gold* reward of any response is a
formula (:meth:`ReviewTask.gold_terms`)::

    r_gold = a · tanh(S / s)              sentiment, with diminishing returns
             − c_rep · (repeated words: an aspect or verb named again, a word right after itself)
             − c_topic · (aspects the product does not have)
             − c_eos · [no end token: truncated at the length limit]
             + c_len · (number of words)

where S = Σ v_w over sentiment words (an adjective or verb of value v_w; ×1.5 after "very" or
"really"). The demonstrations never name an aspect or verb twice, never name another product's aspect
and always end with EOS, so preference pairs built from them carry no information about the three
penalties: a reward model trained on them cannot learn those terms. They are the loopholes a
policy optimised against the learned reward finds (repeat the most positive words, ramble past
the length limit), while the sentiment term saturates — the gold reward falls as the learned
reward keeps rising (reward over-optimisation, §7).

Everything here is plain Python with seeded ``random.Random`` generators: the same seed gives
the same prompts, demonstrations and preference pairs on every machine.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

__all__ = ["BOS", "EOS", "PAD", "UNK", "Demonstration", "PreferencePair", "ReviewTask",
           "read_jsonl", "train_tokenizer"]

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# product -> the three aspects a review of it may talk about
PRODUCTS: dict[str, tuple[str, ...]] = {
    "phone": ("battery", "screen", "camera"),
    "laptop": ("keyboard", "battery", "screen"),
    "kettle": ("handle", "lid", "switch"),
    "chair": ("seat", "backrest", "wheels"),
    "lamp": ("switch", "bulb", "shade"),
    "backpack": ("straps", "zipper", "pockets"),
    "headphones": ("sound", "cushions", "cable"),
    "blender": ("motor", "blades", "jar"),
    "jacket": ("zipper", "pockets", "fabric"),
    "shoes": ("soles", "laces", "fabric"),
}
ASPECTS = frozenset(a for aspects in PRODUCTS.values() for a in aspects)
PLURAL_ASPECTS = frozenset({"wheels", "straps", "pockets", "cushions", "blades", "soles", "laces"})
COLORS = ("red", "blue", "black", "white", "green", "grey")
# brand -> mean mood of its reviews (the demonstrations lean on it; the gold reward ignores it)
BRANDS: dict[str, float] = {"acme": 1.0, "zenith": 0.5, "nova": 0.0, "orbit": 0.0,
                            "bolt": -0.5, "cheapo": -1.0}
WHEN = (("yesterday",), ("last", "week"), ("last", "month"), ("a", "year", "ago"))
# sentiment words and their values v_w
ADJECTIVES: dict[str, float] = {
    "excellent": 2.0, "amazing": 2.0, "perfect": 2.0, "great": 1.5, "good": 1.0, "nice": 1.0,
    "solid": 1.0, "fine": 0.5, "okay": 0.0, "average": 0.0, "mediocre": -0.5, "poor": -1.0,
    "weak": -1.0, "flimsy": -1.0, "bad": -1.5, "awful": -2.0, "terrible": -2.0, "useless": -2.0,
}
VERBS: dict[str, float] = {"love": 2.0, "like": 1.0, "tolerate": 0.0, "dislike": -1.0,
                           "hate": -2.0}
SENTIMENT = {**ADJECTIVES, **VERBS}
INTENSIFIERS = frozenset({"very", "really"})
INTENSITY = 1.5
MOODS = (-2, -1, 0, 1, 2)


@dataclass(frozen=True)
class Demonstration:
    """A prompt and a response written by the grammar (no EOS in the text)."""

    prompt: str
    response: str


@dataclass(frozen=True)
class PreferencePair:
    """Two responses to one prompt; ``chosen`` has the higher gold reward unless ``flipped``."""

    prompt: str
    chosen: str
    rejected: str
    chosen_gold: float
    rejected_gold: float
    flipped: bool
    """The label was flipped by label noise (``chosen_gold < rejected_gold``)."""


@dataclass(frozen=True)
class ReviewTask:
    """The review language and its gold reward (module docstring). Field ↔ symbol: a ↔ sentiment_scale,
    s ↔ sentiment_saturation, c_rep ↔ repeat_penalty, c_topic ↔ off_topic_penalty,
    c_eos ↔ no_eos_penalty, c_len ↔ length_bonus."""

    sentiment_scale: float = 3.0
    sentiment_saturation: float = 6.0
    repeat_penalty: float = 1.0
    off_topic_penalty: float = 1.0
    no_eos_penalty: float = 2.0
    length_bonus: float = 0.02
    max_aspect_sentences: int = 3
    """A demonstration has 1 … this many "the <aspect> is <adjective> ." sentences."""
    verdict_probability: float = 0.7
    """Probability that a demonstration ends with "i <verb> it ."."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{f.name}: must be a finite number >= 0, got {value!r}")
        if self.sentiment_saturation == 0:
            raise ValueError("sentiment_saturation: must be > 0")
        if not 1 <= self.max_aspect_sentences <= 3:
            raise ValueError("max_aspect_sentences: must be 1, 2 or 3 (a product has 3 aspects)")
        if self.verdict_probability > 1:
            raise ValueError("verdict_probability: must be <= 1")

    # --- the gold reward ----------------------------------------------------------------------
    def gold_terms(self, prompt: str, response: str, *, eos: bool) -> dict[str, float]:
        """Each term of the gold reward (module docstring) for one response, and their sum under ``"gold"``.

        ``response`` is the decoded response (special tokens such as ``</s>`` may be in it; they
        are not words); ``eos`` says whether it ended with the end token rather than being cut at
        the length limit. Words are separated by whitespace. The product is the first product
        word of the prompt; a prompt without one has no off-topic term.
        """
        words = [w for w in response.split() if w not in SPECIAL_TOKENS]
        total, boost = 0.0, 1.0
        for word in words:
            total += boost * SENTIMENT.get(word, 0.0)
            boost = INTENSITY if word in INTENSIFIERS else 1.0
        # A repeat says the same thing again: an aspect or a verb named a second time, or any
        # word right after itself. (An adjective may describe two aspects: "good" twice is fine.)
        named = [w for w in words if w in ASPECTS or w in VERBS]
        repeats = (len(named) - len(set(named))
                   + sum(a == b for a, b in zip(words, words[1:])))
        product = next((w for w in prompt.split() if w in PRODUCTS), None)
        off_topic = 0 if product is None else sum(
            w in ASPECTS and w not in PRODUCTS[product] for w in words)
        terms = {
            "sentiment": self.sentiment_scale * math.tanh(total / self.sentiment_saturation),
            "repeats": -self.repeat_penalty * repeats,
            "off_topic": -self.off_topic_penalty * off_topic,
            "no_eos": 0.0 if eos else -self.no_eos_penalty,
            "length": self.length_bonus * len(words),
        }
        terms["gold"] = sum(terms.values())
        terms["sentiment_sum"] = total  # S, for plots (not part of the sum)
        return terms

    def gold_reward(self, prompt: str, response: str, *, eos: bool) -> float:
        """The gold reward r_gold for one response (see :meth:`gold_terms`)."""
        return self.gold_terms(prompt, response, eos=eos)["gold"]

    def gold_rewards(self, prompts: Sequence[str], responses: Sequence[str], *,
                     eos: Sequence[bool]) -> torch.Tensor:
        """Batched :meth:`gold_reward`: float32 ``[B]``. Same signature as a trainer's
        ``reward_fn(prompts, responses, *, eos)``."""
        if not len(prompts) == len(responses) == len(eos):
            raise ValueError(f"prompts, responses, eos: lengths differ ({len(prompts)}, "
                             f"{len(responses)}, {len(eos)})")
        return torch.tensor([self.gold_reward(p, r, eos=bool(e))
                             for p, r, e in zip(prompts, responses, eos)], dtype=torch.float32)

    # --- generators ---------------------------------------------------------------------------
    def prompts(self, n: int, *, seed: int) -> list[str]:
        """``n`` prompts drawn with ``random.Random(seed)``."""
        rng = random.Random(seed)
        return [self._prompt(rng)[0] for _ in range(_count(n, "n"))]

    def demonstrations(self, n: int, *, seed: int) -> list[Demonstration]:
        """``n`` prompts, each with one review written by the grammar."""
        rng = random.Random(seed)
        out = []
        for _ in range(_count(n, "n")):
            prompt, product, brand = self._prompt(rng)
            out.append(Demonstration(prompt, self._review(rng, product, brand)))
        return out

    def respond(self, prompt: str, *, seed: int) -> str:
        """One review of the product named in ``prompt`` (a prompt of :meth:`prompts`)."""
        words = prompt.split()
        product = next((w for w in words if w in PRODUCTS), None)
        brand = next((w for w in words if w in BRANDS), None)
        if product is None or brand is None:
            raise ValueError(f"prompt: names no product and brand of the task: {prompt!r}")
        return self._review(random.Random(seed), product, brand)

    def preference_pairs(self, n: int, *, seed: int, label_noise: float = 0.1
                         ) -> list[PreferencePair]:
        """``n`` pairs of two reviews of one prompt, labelled by the gold reward; each label is
        flipped with probability ``label_noise`` (Bradley–Terry data with annotator noise).
        Pairs whose two rewards tie are redrawn (they carry no preference)."""
        if not (isinstance(label_noise, (int, float)) and 0 <= label_noise < 0.5):
            raise ValueError(f"label_noise: must be in [0, 0.5), got {label_noise!r}")
        rng = random.Random(seed)
        out = []
        while len(out) < _count(n, "n"):
            prompt, product, brand = self._prompt(rng)
            a, b = self._review(rng, product, brand), self._review(rng, product, brand)
            ga, gb = (self.gold_reward(prompt, r, eos=True) for r in (a, b))
            if abs(ga - gb) < 1e-9:
                continue
            if ga < gb:
                a, b, ga, gb = b, a, gb, ga
            flipped = rng.random() < label_noise
            if flipped:
                a, b, ga, gb = b, a, gb, ga
            out.append(PreferencePair(prompt, a, b, ga, gb, flipped))
        return out

    def vocabulary(self) -> list[str]:
        """Every word the prompts and reviews can contain, sorted."""
        words = {"review", ":", "the", "from", ",", "bought", "is", "are", "it", "i", ".",
                 *PRODUCTS, *ASPECTS, *COLORS, *BRANDS, *(w for ws in WHEN for w in ws),
                 *SENTIMENT, *INTENSIFIERS}
        return sorted(words)

    def _prompt(self, rng: random.Random) -> tuple[str, str, str]:
        product, brand = rng.choice(list(PRODUCTS)), rng.choice(list(BRANDS))
        color = [rng.choice(COLORS)] if rng.random() < 0.7 else []
        when = [",", "bought", *rng.choice(WHEN)] if rng.random() < 0.7 else []
        words = ["review", ":", "the", *color, product, "from", brand, *when, "."]
        return " ".join(words), product, brand

    def _review(self, rng: random.Random, product: str, brand: str) -> str:
        # The mood (a star rating −2 … 2) leans on the brand; words are drawn near the mood.
        mood = min(MOODS, key=lambda m: abs(m - (BRANDS[brand] + rng.gauss(0.0, 1.3))))
        count = rng.randint(1, self.max_aspect_sentences)
        # No aspect twice (no repeats), in the product's order: the order makes a repeat easy
        # to avoid for a small model (the next aspect only depends on the previous one).
        aspects = sorted(rng.sample(PRODUCTS[product], count), key=PRODUCTS[product].index)
        adjectives = _draw_words(rng, ADJECTIVES, mood, count)
        words: list[str] = []
        for aspect, adjective in zip(aspects, adjectives):
            words += ["the", aspect, "are" if aspect in PLURAL_ASPECTS else "is"]
            if mood != 0 and rng.random() < 0.3:
                words.append(rng.choice(sorted(INTENSIFIERS)))
            words += [adjective, "."]
        if rng.random() < self.verdict_probability:
            words += ["i", _draw_words(rng, VERBS, mood, 1)[0], "it", "."]
        return " ".join(words)


def _draw_words(rng: random.Random, values: dict[str, float], mood: int, k: int) -> list[str]:
    """``k`` distinct words, each drawn with weight exp(−(v_w − mood)²/0.5)."""
    pool = dict(values)
    out = []
    for _ in range(k):
        words = list(pool)
        word = rng.choices(words, weights=[math.exp(-2.0 * (pool[w] - mood) ** 2) for w in words])[0]
        out.append(word)
        del pool[word]
    return out


def _count(n: int, name: str) -> int:
    if not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
        raise ValueError(f"{name}: must be a positive integer, got {n!r}")
    return n


def read_jsonl(path: str | Path, fields: Sequence[str], *, name: str = "data") -> list[dict[str, str]]:
    """The records of a JSON-lines file, each an object with the string ``fields`` (others are
    ignored). Blank lines are skipped. A missing file, a line that is not such an object, or a
    file without records is a ``ValueError`` naming ``name`` (the CLI flag) and the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: no such file {str(path)!r}")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{name}: {path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not all(
                    isinstance(record.get(k), str) and record[k].strip() for k in fields):
                raise ValueError(f"{name}: {path}:{number}: expected an object with non-empty "
                                 f"string fields {list(fields)}, got {line.strip()[:80]!r}")
            records.append({k: record[k] for k in fields})
    if not records:
        raise ValueError(f"{name}: {path} has no records (expected one JSON object per line "
                         f"with fields {list(fields)})")
    return records


def train_tokenizer(texts: Sequence[str] | None = None, *, pad_equals_eos: bool = False,
                    save_dir: str | Path | None = None):
    """A word-level tokenizer trained with 🤗 ``tokenizers`` and wrapped as
    ``PreTrainedTokenizerFast`` (padding on the left, §6.3).

    ``texts`` default to the task's vocabulary (every word once). Special tokens: ``<pad>``,
    ``<s>`` (BOS, prepended to every encoded text when ``add_special_tokens``), ``</s>`` (EOS)
    and ``<unk>``; with ``pad_equals_eos`` there is no ``<pad>`` and pad is ``</s>`` — the
    set-up of GPT-2 and many other released models. ``save_dir`` writes it with
    ``save_pretrained``; ``AutoTokenizer.from_pretrained(save_dir)`` loads it back.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(ReviewTask().vocabulary() if texts is None else texts)
    if not texts:
        raise ValueError("texts: is empty")
    specials = [BOS, EOS, UNK] if pad_equals_eos else [PAD, BOS, EOS, UNK]
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Ties in frequency are broken alphabetically by the trainer: the vocabulary is deterministic.
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        pad_token=EOS if pad_equals_eos else PAD, padding_side="left",
        model_input_names=["input_ids", "attention_mask"])
    if save_dir is not None:
        wrapped.save_pretrained(save_dir)
    return wrapped
