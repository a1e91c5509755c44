"""The sequence layout every ``ppo_lab.llm`` function shares (§6): left-padded prompts, right-padded
responses, masks built from lengths.

::

    input_ids      [B, P + T]  prompt left-padded to width P | response right-padded to width T
    attention_mask [B, P + T]  1 on real prompt tokens and on response positions t < length
    response_mask  [B, T]      arange(T) < response_lengths[:, None]   (bool)
    position_ids   [B, P + T]  attention_mask.cumsum(-1) − 1, clamped at 0

The logits at position ``P + t − 1`` score response token ``t`` (the shift, errata 1). The
response mask is built from the lengths, never from token ids: when pad == eos, the EOS that
ends a response is a real token, stays in the mask and receives the score (§6).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch


def _ids_list(seq, name: str, i: int) -> list[int]:
    ids = seq.tolist() if torch.is_tensor(seq) else list(seq)
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in ids):
        raise ValueError(f"{name}[{i}]: expected non-negative integer token ids, got {ids!r}")
    return ids


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into ``ids [B, P]`` padded on the LEFT with ``pad_token_id``, and
    ``attention_mask [B, P]`` (long, 1 = real token). P is the longest sequence.

    Left padding puts every prompt's last token in column P − 1, so generation continues all
    rows at the same column. An empty batch or an empty sequence is a ``ValueError``.
    """
    rows = _check_rows(sequences, "sequences")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
    return ids, mask


def right_pad(sequences: Sequence[Sequence[int]], pad_token_id: int, width: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into ``ids [B, T]`` padded on the RIGHT, and their ``lengths [B]``.

    ``width`` defaults to the longest sequence; a longer sequence is a ``ValueError``.
    """
    rows = _check_rows(sequences, "sequences", allow_empty_rows=True)
    longest = max(len(r) for r in rows)
    width = longest if width is None else int(width)
    if longest > width:
        raise ValueError(f"width: {width} is shorter than the longest sequence ({longest})")
    ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, : len(row)] = torch.tensor(row)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def _check_rows(sequences, name: str, allow_empty_rows: bool = False) -> list[list[int]]:
    if len(sequences) == 0:
        raise ValueError(f"{name}: is empty, expected at least one sequence")
    rows = [_ids_list(s, name, i) for i, s in enumerate(sequences)]
    if not allow_empty_rows and any(len(r) == 0 for r in rows):
        raise ValueError(f"{name}: sequence {next(i for i, r in enumerate(rows) if not r)} is empty")
    return rows


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``position_ids [B, L] = cumsum(attention_mask) − 1``, clamped at 0 on the left padding.

    Each sequence's first real token gets position 0 however much padding precedes it, so a
    prompt alone and the same prompt padded in a batch see the same positions (learned positions
    in GPT-2, rotary angles in Llama). Positions past a response's end keep counting from its
    last real token; nothing reads them.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask: expected [B, L], got shape {tuple(attention_mask.shape)}")
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_mask_from_lengths(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``response_mask [B, T] = arange(T) < lengths[:, None]`` (bool): True on real response tokens.

    Built from the lengths, never from token ids, so an EOS equal to pad is kept.
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.is_floating_point():
        raise ValueError(f"lengths: expected an integer tensor [B], got {lengths.dtype} {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > width):
        raise ValueError(f"lengths: values must lie in [0, {width}], got {lengths.tolist()}")
    return torch.arange(width, device=lengths.device) < lengths[:, None]


def last_token_index(response_lengths: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """Absolute index ``P + length − 1`` of each sequence's last real response token, ``[B]``.

    The reward model's score and the terminal reward are read here (§6); an empty response has
    no last token and is a ``ValueError``.
    """
    response_lengths = torch.as_tensor(response_lengths)
    if response_lengths.numel() and int(response_lengths.min()) < 1:
        raise ValueError(f"response_lengths: every response needs at least one token, got {response_lengths.tolist()}")
    return int(prompt_width) + response_lengths.long() - 1


@dataclasses.dataclass
class SequenceBatch:
    """Prompts + responses in the shared layout (module docstring). Shapes: B sequences,
    ``prompt_width`` P, response width T.

    ``eos [B]`` is True where the response ended with EOS, False where it was cut at the length
    limit (the gold reward and the trainer treat the two differently).
    """

    input_ids: torch.Tensor  # (B, P + T) long
    attention_mask: torch.Tensor  # (B, P + T) long
    prompt_width: int  # P
    response_mask: torch.Tensor  # (B, T) bool
    response_lengths: torch.Tensor  # (B,) long
    eos: torch.Tensor  # (B,) bool

    def __post_init__(self):
        B, L = self.input_ids.shape
        T = L - self.prompt_width
        if not 0 < self.prompt_width < L:
            raise ValueError(f"prompt_width: expected 0 < P < {L}, got {self.prompt_width}")
        for name, shape in (("attention_mask", (B, L)), ("response_mask", (B, T)),
                            ("response_lengths", (B,)), ("eos", (B,))):
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(getattr(self, name).shape)}")

    @classmethod
    def from_parts(cls, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                   response_lengths: torch.Tensor, eos: torch.Tensor | None = None) -> SequenceBatch:
        """Join left-padded ``prompt_ids [B, P]`` (+ ``prompt_mask``) and right-padded
        ``response_ids [B, T]`` with their ``response_lengths [B]``. ``eos`` defaults to all False."""
        response_lengths = torch.as_tensor(response_lengths, device=response_ids.device).long()
        response_mask = response_mask_from_lengths(response_lengths, response_ids.shape[1])
        if prompt_mask.shape != prompt_ids.shape or prompt_ids.shape[0] != response_ids.shape[0]:
            raise ValueError(f"prompt_mask: shapes {tuple(prompt_ids.shape)}, {tuple(prompt_mask.shape)}, "
                             f"{tuple(response_ids.shape)} do not line up")
        if not bool(prompt_mask.bool().any(-1).all()):
            raise ValueError("prompt_mask: a prompt has no real token (all padding)")
        eos = torch.zeros_like(response_lengths, dtype=torch.bool) if eos is None else eos.bool()
        return cls(input_ids=torch.cat([prompt_ids, response_ids], 1),
                   attention_mask=torch.cat([prompt_mask.long(), response_mask.long()], 1),
                   prompt_width=prompt_ids.shape[1], response_mask=response_mask,
                   response_lengths=response_lengths, eos=eos)

    @classmethod
    def from_token_lists(cls, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                         pad_token_id: int, eos_token_id: int | None = None) -> SequenceBatch:
        """Build a batch from token lists: prompts left-padded, responses right-padded.

        ``eos`` marks responses whose last token is ``eos_token_id``. A response must have at
        least one token; prompts and responses must pair up.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"responses: {len(responses)} responses for {len(prompts)} prompts")
        prompt_ids, prompt_mask = left_pad(prompts, pad_token_id)
        response_ids, lengths = right_pad(responses, pad_token_id)
        if int(lengths.min()) < 1:
            raise ValueError("responses: every response needs at least one token")
        ends = [len(r) > 0 and eos_token_id is not None and int(list(r)[-1]) == eos_token_id for r in responses]
        return cls.from_parts(prompt_ids, prompt_mask, response_ids, lengths, torch.tensor(ends))

    @property
    def response_ids(self) -> torch.Tensor:
        """``input_ids[:, P:]``, ``[B, T]`` (padding included; mask with ``response_mask``)."""
        return self.input_ids[:, self.prompt_width:]

    @property
    def prompt_ids(self) -> torch.Tensor:
        """``input_ids[:, :P]``, ``[B, P]`` (left-padded)."""
        return self.input_ids[:, : self.prompt_width]

    @property
    def prompt_mask(self) -> torch.Tensor:
        return self.attention_mask[:, : self.prompt_width]

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions from the attention mask, ``[B, P + T]``."""
        return position_ids_from_mask(self.attention_mask)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> SequenceBatch:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                           for f in dataclasses.fields(self) if f.name != "prompt_width"})

    def select(self, idx) -> SequenceBatch:
        """The rows ``idx`` (index tensor, list or slice), same P and T — a minibatch."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx, device=self.input_ids.device)
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[idx]
                                           for f in dataclasses.fields(self) if f.name != "prompt_width"})


Batch = SequenceBatch
