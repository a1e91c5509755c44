"""The shared sequence layout (§6): left padding, positions from the mask, masks from lengths."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from llm_helpers import loop_position_ids

from ppo_lab.llm import (
    SequenceBatch,
    last_token_index,
    left_pad,
    position_ids_from_mask,
    response_mask_from_lengths,
    right_pad,
)

PAD = 9


def test_left_pad_by_hand():
    ids, mask = left_pad([[1, 2, 3], [4], [5, 6]], PAD)
    assert ids.tolist() == [[1, 2, 3], [PAD, PAD, 4], [PAD, 5, 6]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]


@settings(deadline=None, max_examples=40, derandomize=True)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5), extra=st.integers(0, 3))
def test_left_padded_positions_equal_the_loop_twin(lengths, extra):
    ids, mask = left_pad([[7] * n for n in lengths], PAD)
    mask = torch.cat([mask, torch.zeros(len(lengths), extra, dtype=torch.long)], 1)  # right padding too
    assert torch.equal(position_ids_from_mask(mask), loop_position_ids(mask))
    for row, n in zip(position_ids_from_mask(mask), lengths):  # real tokens count 0, 1, ..., n - 1
        assert row[mask.shape[1] - extra - n : mask.shape[1] - extra].tolist() == list(range(n))


def test_right_pad_by_hand():
    ids, lengths = right_pad([[1, 2], [3], []], PAD, width=3)
    assert ids.tolist() == [[1, 2, PAD], [3, PAD, PAD], [PAD, PAD, PAD]]
    assert lengths.tolist() == [2, 1, 0]


def test_response_mask_from_lengths_keeps_an_eos_equal_to_pad():
    # the second response is [eos] with eos == pad: its mask comes from the length, not the id
    batch = SequenceBatch.from_token_lists([[1, 2], [3]], [[4, 5, PAD], [PAD]], pad_token_id=PAD, eos_token_id=PAD)
    assert batch.response_mask.tolist() == [[True, True, True], [True, False, False]]
    assert batch.eos.tolist() == [True, True]
    assert batch.response_lengths.tolist() == [3, 1]
    assert response_mask_from_lengths(torch.tensor([0, 2]), 3).tolist() == [[False] * 3, [True, True, False]]


def test_batch_layout_and_last_token_index():
    batch = SequenceBatch.from_token_lists([[1, 2, 3], [4]], [[5], [6, 7, 8]], pad_token_id=PAD, eos_token_id=8)
    assert batch.prompt_width == 3
    assert batch.input_ids.tolist() == [[1, 2, 3, 5, PAD, PAD], [PAD, PAD, 4, 6, 7, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    assert batch.response_ids.tolist() == [[5, PAD, PAD], [6, 7, 8]]
    assert batch.position_ids[1].tolist() == [0, 0, 0, 1, 2, 3]
    assert batch.eos.tolist() == [False, True]
    index = last_token_index(batch.response_lengths, batch.prompt_width)
    assert index.tolist() == [3, 5]
    assert batch.input_ids.gather(1, index[:, None]).squeeze(1).tolist() == [5, 8]


def test_select_and_to_keep_the_layout():
    batch = SequenceBatch.from_token_lists([[1, 2], [3], [4, 5]], [[6], [7, 8], [8]], PAD, eos_token_id=8)
    sub = batch.select([2, 0])
    assert sub.prompt_width == batch.prompt_width and len(sub) == 2
    assert torch.equal(sub.input_ids, batch.input_ids[[2, 0]])
    assert sub.eos.tolist() == [True, False]
    assert torch.equal(batch.select(slice(1, 3)).response_mask, batch.response_mask[1:])
    moved = batch.to("cpu")
    assert torch.equal(moved.attention_mask, batch.attention_mask) and moved.prompt_width == batch.prompt_width


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: left_pad([], PAD), "sequences"),
        (lambda: left_pad([[1], []], PAD), "sequences"),
        (lambda: left_pad([[1, -2]], PAD), "sequences"),
        (lambda: right_pad([[1, 2, 3]], PAD, width=2), "width"),
        (lambda: position_ids_from_mask(torch.ones(3)), "attention_mask"),
        (lambda: response_mask_from_lengths(torch.tensor([4]), 3), "lengths"),
        (lambda: response_mask_from_lengths(torch.tensor([1.0]), 3), "lengths"),
        (lambda: last_token_index(torch.tensor([2, 0]), 3), "response_lengths"),
        (lambda: SequenceBatch.from_token_lists([[1]], [[2], [3]], PAD), "responses"),
        (lambda: SequenceBatch.from_token_lists([[1], [2]], [[2], []], PAD), "responses"),
        (lambda: SequenceBatch.from_parts(torch.ones(2, 2, dtype=torch.long), torch.tensor([[1, 1], [0, 0]]),
                                          torch.ones(2, 1, dtype=torch.long), torch.tensor([1, 1])), "prompt_mask"),
        (lambda: SequenceBatch.from_parts(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 3),
                                          torch.ones(2, 1, dtype=torch.long), torch.tensor([1, 1])), "prompt_mask"),
        (lambda: SequenceBatch(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long), 4,
                               torch.ones(2, 0, dtype=torch.bool), torch.zeros(2), torch.zeros(2)), "prompt_width"),
        (lambda: SequenceBatch(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), 2,
                               torch.ones(2, 2, dtype=torch.bool), torch.ones(2), torch.zeros(2)), "attention_mask"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
