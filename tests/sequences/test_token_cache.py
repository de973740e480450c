"""Per-token teacher outputs cached ragged (Zarr and Parquet), read back padded with a mask and flat;
a teacher without logits caches its taps only."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cache.format import TOKEN_LENGTHS, read_metadata
from pipeline.cache.open import open_cache
from pipeline.teacher.session import open_teacher
from tests.cache.helpers import build, small_params, tree_bytes
from tests.sequences.helpers import expected_outputs, sequence_rows, sequence_teacher

FIELDS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}


def _teacher(tmp_path, logits=True):
    path = sequence_teacher(tmp_path / f"seq-{logits}.onnx", logits=logits)
    return open_teacher(path, inputs=FIELDS, provider="cpu", logits_name="logits" if logits else None)


def _params(store):
    return small_params(store=store, rows_per_chunk=4, chunks_per_shard=2, batch_size=3)


@pytest.mark.parametrize("store", ["zarr", "parquet"])
def test_per_token_hidden_states_are_cached_ragged_and_read_back_per_row(tmp_path, store):
    rows = sequence_rows(num_rows=21)
    result = build(tmp_path, rows, _teacher(tmp_path), _params(store))
    metadata = read_metadata(result.store_dir)
    layout = metadata.layout
    assert layout.token_shapes == {"hidden": (4,)} and layout.feature_shapes == {"pooled": (4,)}
    assert layout.logits == "row" and layout.num_classes == 3
    lengths = np.diff(rows.fields["input_ids"].offsets)
    assert sum(record["tokens"] for record in metadata.manifest) == lengths.sum()
    modes = ["memory", "mmap"] + (["lazy"] if store == "zarr" else [])
    for mode in modes:
        cache = open_cache(result.store_dir, mode=mode, mmap_dir=tmp_path / f"mmap-{store}")
        assert cache.schema.token_shapes == {"hidden": (4,)}
        values, offsets = cache.token_values("hidden")
        np.testing.assert_array_equal(np.diff(offsets), lengths)
        picked = np.array([7, 0, 20, 12])
        batch = cache.batch(picked)
        tokens = batch.tokens
        np.testing.assert_array_equal(tokens.lengths.numpy(), lengths[picked])
        assert tokens.mask.shape == (4, lengths[picked].max())
        assert tokens.padded["hidden"].shape == (4, lengths[picked].max(), 4)
        assert tokens.flat["hidden"].shape == (lengths[picked].sum(), 4)
        start = 0
        for b, row in enumerate(picked):
            want = expected_outputs(rows, row)
            n = lengths[row]
            np.testing.assert_allclose(tokens.padded["hidden"][b, :n].numpy(), want["hidden"], rtol=1e-3)
            assert not tokens.padded["hidden"][b, n:].any() and tokens.mask[b].sum() == n
            np.testing.assert_array_equal(
                tokens.flat["hidden"][start : start + n], tokens.padded["hidden"][b, :n]
            )
            np.testing.assert_allclose(values[offsets[row] : offsets[row + 1]], want["hidden"], rtol=1e-3)
            np.testing.assert_allclose(batch.logits[b].numpy(), want["logits"], rtol=1e-3, atol=1e-3)
            start += n


@pytest.mark.parametrize("store", ["zarr", "parquet"])
def test_a_token_cache_is_byte_identical_on_rebuild_and_after_resume(tmp_path, store):
    rows = sequence_rows(num_rows=21)
    first = build(tmp_path, rows, _teacher(tmp_path), _params(store), name="a")
    again = build(tmp_path, rows, _teacher(tmp_path), _params(store), name="b")
    assert tree_bytes(first.store_dir) == tree_bytes(again.store_dir)
    # a resumed build: shard 1's record and bytes removed from a finished scratch, rebuilt
    import shutil

    from pipeline.cache.build import create_store
    from pipeline.cache.shards import write_shard

    scratch = tmp_path / "c" / "scratch"
    teacher = _teacher(tmp_path)
    build_state = create_store(scratch, rows, teacher, "t" * 64, rows.fingerprint, _params(store))
    for k in range(build_state.layout.num_shards):
        if k != 1:
            write_shard(build_state, k, teacher)
    resumed = build(tmp_path, rows, teacher, _params(store), name="c")
    assert resumed.shards_resumed == build_state.layout.num_shards - 1
    assert tree_bytes(resumed.store_dir) == tree_bytes(first.store_dir)
    shutil.rmtree(tmp_path / "c", ignore_errors=True)


def test_a_damaged_token_count_is_refused_before_reading(tmp_path):
    import json

    rows = sequence_rows(num_rows=21)
    result = build(tmp_path, rows, _teacher(tmp_path), _params("zarr"))
    path = result.store_dir / "cache.json"
    data = json.loads(path.read_text())
    data["manifest"][0]["tokens"] += 10**9
    path.write_text(json.dumps(data))
    from pipeline.cache.format import CacheCorruptError

    with pytest.raises(CacheCorruptError, match="ragged array 'tokens/hidden'"):
        open_cache(result.store_dir)


@pytest.mark.parametrize("store", ["zarr", "parquet"])
def test_a_teacher_without_logits_caches_only_its_taps(tmp_path, store):
    rows = sequence_rows(num_rows=13)
    result = build(tmp_path, rows, _teacher(tmp_path, logits=False), _params(store))
    metadata = read_metadata(result.store_dir)
    assert metadata.layout.logits == "none" and metadata.teacher["logits_name"] is None
    assert "logits" not in metadata.layout.arrays() and TOKEN_LENGTHS in metadata.layout.arrays()
    cache = open_cache(result.store_dir)
    assert not cache.schema.has_logits and cache.logits is None
    batch = cache.batch(np.arange(5))
    assert batch.logits is None
    np.testing.assert_allclose(
        batch.features["pooled"][2].numpy(), expected_outputs(rows, 2)["pooled"], rtol=1e-3
    )
