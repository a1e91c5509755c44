"""Tiny language models for the ``ppo_lab.llm`` tests, built the way a reader's model loads.

A word-level tokenizer trained with ``tokenizers`` and tiny GPT-2 (learned positions) / Llama
(rotary positions) models from configs are saved with ``save_pretrained`` into a temporary
directory and loaded back with ``load_tokenizer`` / ``load_causal_lm`` — the path a hub id takes.
Weights are drawn with a larger spread than the default initialiser, so the next-token
distribution depends visibly on position and context (a shift or position bug moves a logprob by
far more than the tests' tolerances).

(A plain module, not conftest.py: the tests import what they use.)
"""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ppo_lab.llm import SequenceBatch, build_model, load_causal_lm, load_tokenizer, tiny_config
from ppo_lab.llm.models import quiet_transformers

ARCHS = ("gpt2", "llama")
WORDS = "the a good bad great awful product service price works broke again very not and is was".split()
CORPUS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(8)) for i in range(40)]


def _tmpdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"ppo_lab_{name}_"))


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(pad_is_eos: bool = False):
    """A word-level tokenizer over ``WORDS``; specials <pad> <bos> <eos> <unk> — or, with
    ``pad_is_eos``, no pad token at all (GPT-2's situation: ``load_tokenizer`` sets pad = eos)."""
    specials = ["<unk>", "<bos>", "<eos>"] + ([] if pad_is_eos else ["<pad>"])
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=specials))
    kwargs = dict(unk_token="<unk>", bos_token="<bos>", eos_token="<eos>")
    if not pad_is_eos:
        kwargs["pad_token"] = "<pad>"
    path = _tmpdir("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs).save_pretrained(path)
    return load_tokenizer(path)


@functools.lru_cache(maxsize=None)
def tiny_model_dir(arch: str, pad_is_eos: bool = False, seed: int = 0) -> Path:
    """Save a seeded tiny ``arch`` causal LM (2 layers, d_model 32) and return its directory."""
    tokenizer = tiny_tokenizer(pad_is_eos)
    config = tiny_config(arch, len(tokenizer), n_layer=2, d_model=32, n_head=2, max_positions=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    config.initializer_range = 0.3
    torch.manual_seed(seed)
    path = _tmpdir(f"{arch}_{seed}")
    with quiet_transformers():
        build_model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_model(arch: str, pad_is_eos: bool = False, seed: int = 0, dtype: str = "fp32"):
    """A freshly loaded tiny causal LM (eval mode), via ``load_causal_lm(directory)``."""
    return load_causal_lm(tiny_model_dir(arch, pad_is_eos, seed), dtype=dtype)


def random_batch(tokenizer, *, batch: int = 4, seed: int = 0, max_prompt: int = 6, max_response: int = 7,
                 eos_rows: tuple[int, ...] = (0,)) -> SequenceBatch:
    """A seeded batch of random prompts (lengths 1…max_prompt) and responses (1…max_response)
    of ordinary words; rows in ``eos_rows`` end with EOS."""
    gen = torch.Generator().manual_seed(seed)
    words = tokenizer.convert_tokens_to_ids(WORDS)
    pick = lambda n: [words[int(i)] for i in torch.randint(len(words), (n,), generator=gen)]  # noqa: E731
    prompts = [pick(int(torch.randint(1, max_prompt + 1, (1,), generator=gen))) for _ in range(batch)]
    responses = []
    for b in range(batch):
        n = int(torch.randint(1, max_response + 1, (1,), generator=gen))
        responses.append(pick(n - 1) + [tokenizer.eos_token_id] if b in eos_rows else pick(n))
    responses[-1] = pick(max_response)  # one row fills the width
    return SequenceBatch.from_token_lists(prompts, responses, tokenizer.pad_token_id, tokenizer.eos_token_id)


def loop_per_token_rewards(scores, logprobs, ref_logprobs, lengths, kl_coef, kl_kind="k1"):
    """Slow twin of ``per_token_rewards``: Python floats, one token at a time, Eq. written out."""
    B, T = logprobs.shape
    rewards = [[0.0] * T for _ in range(B)]
    kls = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(int(lengths[b])):
            d = float(logprobs[b, t]) - float(ref_logprobs[b, t])
            kls[b][t] = d if kl_kind == "k1" else math.exp(-d) - 1 + d
            rewards[b][t] = -kl_coef * kls[b][t] + (float(scores[b]) if t == int(lengths[b]) - 1 else 0.0)
    return torch.tensor(rewards), torch.tensor(kls)


def loop_position_ids(attention_mask):
    """Slow twin of ``position_ids_from_mask``: count real tokens left to right."""
    out = []
    for row in attention_mask.tolist():
        seen, positions = 0, []
        for m in row:
            seen += m
            positions.append(max(seen - 1, 0))  # a padding slot repeats the last real position
        out.append(positions)
    return torch.tensor(out)
