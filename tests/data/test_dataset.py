"""Format-2 prepared data: named fields of any dtype, fixed or variable length, read in blocks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipeline.data.dataset import block_order, open_prepared
from pipeline.data.fields import FieldSpec, FieldTypeError, MissingFieldError, Ragged, require_fields
from pipeline.data.prepared import load_prepared, verify_fingerprint
from pipeline.data.writer import write_arrays


def _fields(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 3, 4, 4), dtype=np.uint8)
    tokens = Ragged.from_rows(
        [rng.integers(0, 100, size=int(k)) for k in rng.integers(1, 9, size=n)], np.int64
    )
    return pixels, tokens


def _write(tmp_path, n=50, **kwargs):
    pixels, tokens = _fields(n)
    split = np.arange(n) % 4
    write_arrays(
        tmp_path / "p",
        np.arange(n) * 10,
        split,
        np.arange(n) % 3,
        3,
        {"pixels": pixels, "input_ids": tokens},
        rows_per_chunk=7,
        block_rows=8,
        blocks_per_shard=2,
        **kwargs,
    )
    return pixels, tokens


def test_named_fields_round_trip_with_dtypes_kept_in_any_row_order(tmp_path):
    pixels, tokens = _write(tmp_path)
    data = open_prepared(tmp_path / "p")
    assert data.fields == {"pixels": FieldSpec("uint8", (3, 4, 4)), "input_ids": FieldSpec("int64", (None,))}
    assert len(data.meta["shards"]) == 4  # 50 rows, 16 a shard
    rows = np.array([49, 0, 17, 3, 3, 30])
    got = data.read(rows)
    assert got["pixels"].dtype == np.uint8 and (got["pixels"] == pixels[rows]).all()
    assert [got["input_ids"].row(i).tolist() for i in range(len(rows))] == [
        tokens.row(r).tolist() for r in rows
    ]
    verify_fingerprint(data)
    assert pickle.loads(pickle.dumps(data)).read([5])["pixels"].tolist() == pixels[[5]].tolist()


def test_read_time_transforms_apply_on_read_and_change_the_fingerprint(tmp_path):
    pixels, _ = _write(tmp_path)
    plain = open_prepared(tmp_path / "p").fingerprint
    scale = [{"kind": "scale", "factor": 1 / 255}]
    _write(tmp_path, transforms={"pixels": scale})
    data = open_prepared(tmp_path / "p")
    assert data.fingerprint != plain
    np.testing.assert_allclose(data.inputs[0:5], pixels[:5] / 255, rtol=1e-6)
    assert data.read([1], ["pixels"], transform=False)["pixels"].dtype == np.uint8


def test_block_order_is_seeded_and_reads_blocks_contiguously(tmp_path):
    rows = np.arange(100)
    order = block_order(rows, 16, seed=3)
    assert sorted(order.tolist()) == rows.tolist() and (order == block_order(rows, 16, seed=3)).all()
    assert not (order == block_order(rows, 16, seed=4)).all()
    assert (np.diff(order // 16) != 0).sum() == 6  # 7 blocks, each visited once


def test_a_missing_field_names_the_fields_there_are_and_a_wrong_dtype_is_one_line(tmp_path):
    _write(tmp_path)
    data = open_prepared(tmp_path / "p")
    with pytest.raises(
        MissingFieldError, match=r"needs field attention_mask .* has pixels uint8 \(3, 4, 4\), input_ids"
    ):
        require_fields(data.fields, {"attention_mask": None}, "teacher")
    with pytest.raises(FieldTypeError, match=r"'pixels' as float32 \(3, 4, 4\) .* holds uint8"):
        require_fields(data.fields, {"pixels": FieldSpec("float32", (3, 4, 4))}, "teacher")
    require_fields(data.fields, {"input_ids": FieldSpec("int64", (None,))}, "teacher")


def test_digits_shaped_data_loads_whole_as_before(tmp_path):
    x = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)
    fingerprint = write_arrays(tmp_path / "p", np.arange(30), np.zeros(30), np.zeros(30), 10, {"input": x})
    data = load_prepared(tmp_path / "p")
    assert data.fingerprint == fingerprint and (data.inputs == x).all() and data.input_shape == (1, 8, 8)
