"""Models of §6: the policy (any causal LM), the reward / value models (a trunk + a scalar head),
the value head on the policy's trunk, and the sampling spec shared by generation and scoring.

Everything loads with ``from_pretrained`` from a local directory or a hub id, the same code path
for the tiny models the book builds from configs (``tiny_config`` + ``build_model``) and for
``gpt2`` or any ``AutoModelForCausalLM`` a reader names. Two position schemes are covered by the
tests: learned positions (GPT-2) and rotary positions (Llama).

Shapes: B sequences, P prompt width, T response width, L = P + T, H hidden size, V vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from ppo_lab.scale.precision import DTYPES

from .sequences import SequenceBatch, last_token_index, position_ids_from_mask

logger = logging.getLogger(__name__)

ARCHS = ("gpt2", "llama")


# --- loading ---------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load report (e.g. "newly initialized: score.weight") and its
    progress bars ("Loading weights", "Writing model shards") inside the block: stderr in a
    notebook cell breaks the book build, and the caller states what it loads or initialises."""
    level = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.logging.enable_progress_bar()


def looks_local(path_or_id: str) -> bool:
    """A local path rather than a hub id ("org/name"): it starts with ``.``, ``/`` or ``~``, exists,
    or has more than one ``/`` — so a typo in a path is reported, never tried as a hub download."""
    return path_or_id.startswith((".", "/", "~")) or Path(path_or_id).exists() or path_or_id.count("/") > 1


def check_model_path(path: str | None, name: str) -> None:
    """A model given as a local path (:func:`looks_local`) must be an existing directory: a typo
    should not become a hub download attempt. ``ValueError`` naming ``name``; None passes."""
    if path is not None and looks_local(path) and not Path(path).expanduser().is_dir():
        raise ValueError(f"{name}: no such model directory {path!r}")


def _from_pretrained(loader, path_or_id, name: str, **kwargs):
    """``loader.from_pretrained(path_or_id)``; a missing directory or unknown id is a ValueError."""
    path_or_id = str(path_or_id)
    check_model_path(path_or_id, name)
    local = looks_local(path_or_id)
    try:
        with quiet_transformers():
            return loader.from_pretrained(str(Path(path_or_id).expanduser()) if local else path_or_id, **kwargs)
    except OSError as err:  # not on disk, and the hub is offline (HF_HUB_OFFLINE=1) or has no such id
        raise ValueError(f"{name}: cannot load {path_or_id!r} (not a local directory; hub: {err})") from None


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {tuple(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def ensure_pad_token(tokenizer):
    """Give a tokenizer without a pad token (GPT-2's) pad = eos, with a logged message; return it.

    Harmless because masks come from lengths, never from token ids (§6): an EOS that equals pad
    stays in the response mask.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer: has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
        logger.warning("tokenizer has no pad token: using eos %r (id %d) as pad; masks come from lengths, "
                       "so the EOS that ends a response is still counted", tokenizer.eos_token, tokenizer.eos_token_id)
    return tokenizer


def load_tokenizer(path_or_id):
    """``AutoTokenizer.from_pretrained(path_or_id)`` with ``padding_side="left"`` and a pad token
    (pad = eos, with a message, when it has none)."""
    tokenizer = _from_pretrained(AutoTokenizer, path_or_id, "path_or_id")
    tokenizer.padding_side = "left"
    return ensure_pad_token(tokenizer)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def check_shares_tokenizer(model, tokenizer, name: str, path: str | None = None) -> None:
    """Every model of a PPO-RLHF run reads the policy's token ids as they are (no decoding and
    re-encoding), so each must share the policy's tokenizer; a ``ValueError`` naming ``name``
    where it visibly does not, instead of scores of the wrong tokens:

    - its input embedding has fewer rows than the tokenizer has tokens (some ids would fall
      outside it; more rows are fine: vocabularies are often padded to a multiple of 64);
    - a tokenizer saved in its local directory ``path`` gives any of the policy tokenizer's
      tokens another id (extra tokens of its own are fine).
    """
    rows = model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):
        raise ValueError(f"{name}: its embedding has {rows} rows, fewer than the {len(tokenizer)} tokens of the "
                         "policy's tokenizer; every model must share the policy's tokenizer")
    if path is None or not looks_local(str(path)):
        return
    directory = Path(str(path)).expanduser()
    if not any((directory / f).exists() for f in TOKENIZER_FILES):
        return
    with quiet_transformers():
        own = AutoTokenizer.from_pretrained(str(directory)).get_vocab()
    moved = [(token, i, own.get(token)) for token, i in tokenizer.get_vocab().items() if own.get(token) != i]
    if moved:
        token, i, theirs = min(moved, key=lambda m: m[1])
        raise ValueError(f"{name}: the tokenizer saved in {str(path)!r} differs from the policy's ({len(moved)} "
                         f"tokens, e.g. {token!r} is {theirs} there and {i} here); every model must share the "
                         "policy's tokenizer")


def load_causal_lm(path_or_id, *, device="cpu", dtype="fp32") -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` on ``device`` in ``dtype`` ("fp32", "bf16", "fp16"),
    in eval mode (dropout off: PPO's ratio must be 1 on its own rollout)."""
    model = _from_pretrained(AutoModelForCausalLM, path_or_id, "path_or_id", dtype=_torch_dtype(dtype))
    return model.to(device).eval()


def tiny_config(arch: str, vocab_size: int, *, n_layer: int = 2, d_model: int = 128, n_head: int = 4,
                max_positions: int = 256, bos_token_id: int | None = None, eos_token_id: int | None = None,
                pad_token_id: int | None = None) -> PretrainedConfig:
    """A small ``GPT2Config`` (learned positions) or ``LlamaConfig`` (rotary positions), dropout 0.

    ``d_model`` must divide by ``n_head``. Llama's MLP is 4·d_model wide, as GPT-2's is.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}")
    for name, value in (("vocab_size", vocab_size), ("n_layer", n_layer), ("d_model", d_model),
                        ("n_head", n_head), ("max_positions", max_positions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if d_model % n_head:
        raise ValueError(f"d_model: {d_model} is not divisible by n_head={n_head}")
    tokens = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=d_model, n_layer=n_layer,
                          n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **tokens)
    return LlamaConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=4 * d_model,
                       num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head,
                       max_position_embeddings=max_positions, tie_word_embeddings=True, **tokens)


def build_model(config: PretrainedConfig) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_config(config)``, freshly initialised (seed torch first), eval mode."""
    return AutoModelForCausalLM.from_config(config).eval()


# --- the sampling distribution, shared by generation and scoring --------------------------------


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """π(·|s) = softmax(logits / temperature) with excluded tokens at probability 0 (§6).

    τ ↔ ``temperature``. ``excluded_token_ids``: tokens the policy must never emit (pad where it
    differs from EOS, BOS). ``rollout.generate`` samples from exactly this distribution and
    ``logprobs.response_logprobs`` scores with it, through the same ``apply``, so the sampled
    tokens' log-probabilities agree between the two paths.
    """

    temperature: float = 1.0
    excluded_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature: expected a finite number > 0, got {t!r}")
        ids = tuple(sorted({int(i) for i in self.excluded_token_ids}))
        if any(i < 0 for i in ids) or any(isinstance(i, bool) for i in self.excluded_token_ids):
            raise ValueError(f"excluded_token_ids: expected non-negative token ids, got {self.excluded_token_ids!r}")
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "excluded_token_ids", ids)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [..., V]`` → the sampling distribution's logits, float32 for 16-bit input:
        ``logits / τ``, excluded tokens −inf. The one function both paths call."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.excluded_token_ids:
            if self.excluded_token_ids[-1] >= logits.shape[-1]:
                raise ValueError(f"excluded_token_ids: {self.excluded_token_ids[-1]} is outside the vocabulary "
                                 f"of size {logits.shape[-1]}")
            idx = torch.tensor(self.excluded_token_ids, device=logits.device)
            logits = logits.index_fill(-1, idx, float("-inf"))
        return logits


def sampling_spec(tokenizer, temperature: float = 1.0, stop_token_ids: tuple[int, ...] = ()) -> SamplingSpec:
    """The spec for a tokenizer: exclude pad and bos, unless either is eos or one of the extra
    ``stop_token_ids`` (the tokens that end a response must stay possible)."""
    stops = {tokenizer.eos_token_id, *stop_token_ids}
    excluded = {tid for tid in (tokenizer.pad_token_id, tokenizer.bos_token_id) if tid is not None and tid not in stops}
    return SamplingSpec(temperature=temperature, excluded_token_ids=tuple(excluded))


# --- reward and value models: a trunk + a scalar head ----------------------------------------------


def load_scalar_model(path_or_id, *, device="cpu", dtype="fp32") -> PreTrainedModel:
    """A saved reward / value model: ``AutoModelForSequenceClassification`` with ``num_labels=1``."""
    model = _from_pretrained(AutoModelForSequenceClassification, path_or_id, "path_or_id",
                             dtype=_torch_dtype(dtype))
    if model.config.num_labels != 1:
        raise ValueError(f"path_or_id: {path_or_id!r} has num_labels={model.config.num_labels}, expected 1")
    return model.to(device).eval()


def scalar_model_from_causal_lm(causal_lm_path, *, device="cpu", dtype="fp32",
                                pad_token_id: int | None = None) -> PreTrainedModel:
    """A reward / value model whose trunk is initialised from a causal LM's weights (the SFT
    policy, or a reward model's trunk) and whose ``score`` head (H → 1) is new.

    Seed torch before calling: the head is drawn from the model's initialiser.
    """
    model = _from_pretrained(AutoModelForSequenceClassification, causal_lm_path, "causal_lm_path",
                             num_labels=1, dtype=_torch_dtype(dtype))
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model.to(device).eval()


def backbone(model: PreTrainedModel) -> nn.Module:
    """The trunk of a ``*ForSequenceClassification`` / ``*ForCausalLM`` model (``model.transformer``
    for GPT-2, ``model.model`` for Llama): ``getattr(model, model.base_model_prefix)``."""
    return getattr(model, model.base_model_prefix)


def token_scalars(model: PreTrainedModel, batch: SequenceBatch) -> torch.Tensor:
    """The ``score`` head on every position: ``float32 [B, P + T]``; entry i is the scalar of the
    sequence up to and including token i.

    One trunk pass with ``position_ids`` from the attention mask (so padding changes nothing).
    """
    hidden = backbone(model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids).last_hidden_state  # (B, L, H)
    return model.score(hidden).squeeze(-1).float()  # (B, L)


def response_values(scalars: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """Per-token values ``[B, T]`` from per-position scalars ``[B, P + T]``: V(s_t) for the state
    before response token t is read at position ``P + t − 1`` (the logits' shift); 0 outside
    ``response_mask``."""
    P, T = batch.prompt_width, batch.response_mask.shape[1]
    return torch.where(batch.response_mask, scalars[:, P - 1 : P + T - 1], 0.0)  # (B, T)


def sequence_scores(model: PreTrainedModel, batch: SequenceBatch) -> torch.Tensor:
    """The reward r(x, y) of each sequence, ``float32 [B]``: the score at its last real response
    token, ``last_token_index`` (§6) — never at padding.

    Not ``AutoModelForSequenceClassification``'s own pooling, which looks for the last token that
    is not pad and so, when pad == eos, reads the token before the EOS.
    """
    scalars = token_scalars(model, batch)  # (B, L)
    index = last_token_index(batch.response_lengths, batch.prompt_width)  # (B,)
    return scalars.gather(1, index[:, None]).squeeze(1)


class ValueHead(nn.Module):
    """V(s) = w·h + b on the policy's last hidden state h (the "value head on the policy trunk"
    design, §6). ``[..., H]`` → float32 ``[...]``. Starts at V = 0 (zero weights)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1).float()


class PolicyWithValueHead(nn.Module):
    """A causal LM and a ``ValueHead`` sharing one trunk pass (§6): ``forward`` returns
    ``(logits [B, L, V], values [B, L])``. ``.policy`` is the Hugging Face model itself
    (``generate``, ``save_pretrained``); the head is saved separately (``value_head.state_dict()``).
    """

    def __init__(self, policy: PreTrainedModel, value_head: ValueHead | None = None):
        super().__init__()
        self.policy = policy
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = value_head if value_head is not None else ValueHead(hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True)
        return out.logits, self.value_head(out.hidden_states[-1])
