"""Both stores give back every array, dtype and metadata field that went in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.cache.format import FORMAT_VERSION, CacheLayout, plan_shards
from pipeline.cache.open import StoredCache, open_cache
from pipeline.cache.reader import block_shuffle, iter_batches, rows_of_split
from pipeline.cache.sparse import top_k_form
from tests.cache.helpers import FakeTeacher, build, make_rows, small_params


@pytest.mark.parametrize("store", ["zarr", "parquet"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cache_round_trips_every_array_and_metadata(tmp_path, store, dtype):
    rows, teacher = make_rows(), FakeTeacher()
    params = small_params(store=store, logits_dtype=dtype, features_dtype=dtype, sparse_top_k=3)
    result = build(tmp_path, rows, teacher, params)
    cache = open_cache(result.store_dir, rows.fingerprint, "t" * 64)
    assert isinstance(cache, StoredCache)
    expected = teacher.run(rows.inputs)

    np.testing.assert_array_equal(cache.sample_id, rows.sample_id)
    np.testing.assert_array_equal(cache.split, rows.split)
    np.testing.assert_array_equal(cache.label, rows.label)
    assert cache.logits.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cache.logits, expected["logits"].astype(dtype))
    for tap in ("embed", "conv"):
        assert cache.features[tap].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(cache.features[tap], expected[tap].astype(dtype))
    values, indices, lse = top_k_form(expected["logits"], 3)
    stored_values, stored_indices, stored_lse = cache.sparse
    np.testing.assert_array_equal(stored_values, values.astype(dtype))
    np.testing.assert_array_equal(stored_indices, indices)
    assert stored_indices.dtype == np.int32
    np.testing.assert_array_equal(stored_lse, lse)

    meta = cache.metadata.to_json()
    assert meta["format_version"] == FORMAT_VERSION and meta["complete"] is True and meta["store"] == store
    assert meta["teacher"] == {
        "sha256": "t" * 64,
        "input_name": "input",
        "logits_name": "logits",
        "tap_names": ["embed", "conv"],
    }
    assert meta["dataset_fingerprint"] == rows.fingerprint
    assert meta["arrays"]["features/conv"] == {"row_shape": [2, 2, 2], "dtype": dtype}
    assert [(m["start"], m["stop"]) for m in meta["manifest"]] == [
        (s.start, s.stop) for s in plan_shards(150, 32)
    ]
    assert cache.schema.feature_shapes == {"embed": (5,), "conv": (2, 2, 2)}


def test_batches_are_float32_tensors_aligned_by_row(tmp_path):
    rows = make_rows()
    cache = open_cache(build(tmp_path, rows).store_dir)
    wanted = np.array([149, 0, 31, 32, 0])
    batch = cache.batch(wanted)
    np.testing.assert_array_equal(batch.sample_id, rows.sample_id[wanted])
    assert batch.logits.dtype.is_floating_point and str(batch.logits.dtype) == "torch.float32"
    assert tuple(batch.features["conv"].shape) == (5, 2, 2, 2)
    train = rows_of_split(cache, "train")
    seen = np.concatenate([b.rows for b in iter_batches(cache, 16, train, shuffle=True, seed=1)])
    assert sorted(seen.tolist()) == train.tolist()


@given(st.integers(0, 5000), st.integers(1, 700))
def test_plan_shards_covers_every_row_once_in_whole_aligned_shards(num_rows, rows_per_shard):
    shards = plan_shards(num_rows, rows_per_shard)
    covered = np.concatenate([np.arange(s.start, s.stop) for s in shards]) if shards else np.array([], int)
    np.testing.assert_array_equal(covered, np.arange(num_rows))
    assert all(s.start % rows_per_shard == 0 for s in shards)
    assert all(s.stop - s.start == rows_per_shard for s in shards[:-1])
    layout = CacheLayout(num_rows, 3, "float16", "float16", {}, None, rows_per_shard, rows_per_shard)
    assert layout.num_shards == len(shards)  # arithmetic, not a list: a lying cache.json costs nothing
    assert [layout.shard_rows(k) for k in range(layout.num_shards)] == shards


def test_plan_shards_covers_every_row_once():
    shards = plan_shards(100, 32)
    assert [(s.start, s.stop) for s in shards] == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert plan_shards(0, 32) == []


def test_lazy_reader_gives_the_same_batches_as_memory(tmp_path):
    store_dir = build(tmp_path).store_dir
    memory, lazy = open_cache(store_dir), open_cache(store_dir, mode="lazy")
    assert type(lazy).__name__ == "LazyCache"
    rows = np.array([5, 140, 5, 77])
    a, b = memory.batch(rows), lazy.batch(rows)
    assert np.array_equal(a.logits.numpy(), b.logits.numpy())
    assert np.array_equal(a.features["conv"].numpy(), b.features["conv"].numpy())
    np.testing.assert_array_equal(lazy.logits, memory.logits)


def test_block_shuffle_visits_every_row_once_and_keeps_batches_local():
    rows = np.arange(1000, dtype=np.int64)
    order = block_shuffle(rows, block_rows=16, blocks_per_window=4, seed=3)
    assert sorted(order.tolist()) == rows.tolist()
    assert not np.array_equal(order, rows)
    np.testing.assert_array_equal(order, block_shuffle(rows, 16, 4, seed=3))
    for start in range(0, 1000, 64):
        assert len(np.unique(order[start : start + 64] // 16)) <= 8
