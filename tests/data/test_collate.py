"""Padding, masks and length bucketing of variable-length fields (pipeline/data/collate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.collate import SequenceTooLongError, collate, length_batches, pad, padded_tokens
from pipeline.data.fields import Ragged


def test_pad_puts_each_row_first_and_masks_the_rest():
    field = Ragged.from_rows([[1, 2, 3], [4], []], dtype=np.int64)
    values, mask = pad(field, pad_value=-1)
    assert values.tolist() == [[1, 2, 3], [4, -1, -1], [-1, -1, -1]]
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    assert pad(field, multiple_of=4)[0].shape == (3, 4)


def test_pad_keeps_item_shape_and_dtype():
    field = Ragged.from_rows([np.ones((2, 3), np.float16), np.zeros((1, 3), np.float16)])
    values, mask = pad(field)
    assert values.shape == (2, 2, 3) and values.dtype == np.float16 and mask.sum() == 3


def test_a_row_longer_than_the_maximum_is_one_line():
    with pytest.raises(
        SequenceTooLongError, match=r"input_ids: row 1 of the batch has 5 items, more than .* 4"
    ):
        collate(
            {"input_ids": Ragged.from_rows([[1], [1, 2, 3, 4, 5]], dtype=np.int64)},
            max_length={"input_ids": 4},
        )


def test_collate_adds_masks_for_variable_fields_only():
    batch = {
        "pixels": np.zeros((2, 3, 4, 4), np.uint8),
        "input_ids": Ragged.from_rows([[1, 2], [3]], dtype=np.int64),
    }
    out = collate(batch, pad_values={"input_ids": 0})
    assert set(out) == {"pixels", "input_ids", "input_ids_mask"} and out["input_ids"].shape == (2, 2)


def test_ragged_take_gathers_rows_in_order():
    field = Ragged.from_rows([[0], [1, 1], [2, 2, 2]], dtype=np.int32)
    taken = field.take([2, 0])
    assert [taken.row(i).tolist() for i in range(2)] == [[2, 2, 2], [0]]


def test_length_buckets_hold_every_row_once_and_pad_less():
    lengths = np.random.default_rng(0).integers(8, 513, size=5000)
    plain = length_batches(lengths, 32, seed=0, bucket_batches=1)
    bucketed = length_batches(lengths, 32, seed=0, bucket_batches=50)
    for batches in (plain, bucketed):
        rows = np.concatenate(batches)
        assert len(rows) == len(lengths) and len(np.unique(rows)) == len(lengths)
    assert padded_tokens(lengths, bucketed) < padded_tokens(lengths, plain)
    again = length_batches(lengths, 32, seed=0, bucket_batches=50)
    assert all((a == b).all() for a, b in zip(bucketed, again))
    other = length_batches(lengths, 32, seed=1, bucket_batches=50)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(bucketed, other))
