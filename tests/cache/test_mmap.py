"""The memory-mapped reader: same batches as in RAM, a sidecar built once, verified, never half-taken."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cache.format import CacheCorruptError
from pipeline.cache.lazy import LazyCache
from pipeline.cache.mmap_store import MARKER_FILE, MmapCache, MmapDirError
from pipeline.cache.open import CacheModeError, StoredCache, open_cache

from .helpers import build, small_params


def _assert_same_batches(a, b, rows):
    x, y = a.batch(rows), b.batch(rows)
    np.testing.assert_array_equal(x.rows, y.rows)
    np.testing.assert_array_equal(x.sample_id, y.sample_id)
    np.testing.assert_array_equal(x.split, y.split)
    assert np.array_equal(x.label.numpy(), y.label.numpy())
    assert np.array_equal(x.logits.numpy(), y.logits.numpy()) and x.logits.dtype == y.logits.dtype
    assert x.features.keys() == y.features.keys()
    for tap in x.features:
        assert np.array_equal(x.features[tap].numpy(), y.features[tap].numpy())
    assert (x.sparse is None) == (y.sparse is None)
    if x.sparse is not None:
        for name in ("values", "indices", "logsumexp"):
            p, q = getattr(x.sparse, name), getattr(y.sparse, name)
            assert np.array_equal(p.numpy(), q.numpy()) and p.dtype == q.dtype


@pytest.mark.parametrize("store", ["zarr", "parquet"])
def test_mmap_reader_gives_the_same_batches_as_memory_for_random_rows(tmp_path, store):
    store_dir = build(tmp_path, params=small_params(store=store, sparse_top_k=3)).store_dir
    memory = open_cache(store_dir, mode="memory")
    mapped = open_cache(store_dir, in_memory_max_bytes=0)  # auto: too big for RAM -> mmap
    assert isinstance(memory, StoredCache) and isinstance(mapped, MmapCache)
    assert mapped.schema == memory.schema and len(mapped) == len(memory)
    rng = np.random.default_rng(0)
    for _ in range(5):
        _assert_same_batches(memory, mapped, rng.integers(0, len(memory), 40))
    _assert_same_batches(memory, mapped, np.array([149, 0, 0, 31, 32]))
    np.testing.assert_array_equal(mapped.logits, memory.logits)
    np.testing.assert_array_equal(mapped.sample_id, memory.sample_id)


def test_default_sidecar_lives_under_the_scratch_dir_outside_the_store(tmp_path):
    store_dir = build(tmp_path).store_dir  # tmp/cache/store
    mapped = open_cache(store_dir, mode="mmap")
    assert mapped.sidecar.parent == (tmp_path / ".scratch" / "mmap").resolve()
    assert (mapped.sidecar / MARKER_FILE).exists() and (mapped.sidecar / "features" / "embed.npy").exists()
    assert not any(p.suffix == ".npy" for p in store_dir.rglob("*"))


def test_sidecar_is_reused_on_a_second_open(tmp_path):
    store_dir = build(tmp_path).store_dir
    first = open_cache(store_dir, mode="mmap", mmap_dir=tmp_path / "side")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "side").rglob("*") if p.is_file()}
    second = open_cache(store_dir, mode="mmap", mmap_dir=tmp_path / "side")
    assert first.built and not second.built
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "side").rglob("*") if p.is_file()}
    _assert_same_batches(first, second, np.arange(0, 150, 7))


def test_corrupted_shard_is_refused_while_building_the_sidecar(tmp_path):
    store_dir = build(tmp_path).store_dir
    path = store_dir / "logits" / "c" / "2" / "0"
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match=r"'logits' rows 64\.\.95"):
        open_cache(store_dir, mode="mmap", mmap_dir=tmp_path / "side")
    assert not (tmp_path / "side").exists()
    assert list(tmp_path.glob("side.building-*")) == []


def test_missing_parquet_shard_is_refused_while_building_the_sidecar(tmp_path):
    store_dir = build(tmp_path, params=small_params(store="parquet")).store_dir
    (store_dir / "part-000001.parquet").unlink()
    with pytest.raises(CacheCorruptError, match=r"rows 32\.\.63"):
        open_cache(store_dir, in_memory_max_bytes=0, mmap_dir=tmp_path / "side")


def test_half_built_sidecar_without_marker_is_rebuilt(tmp_path):
    store_dir = build(tmp_path).store_dir
    memory = open_cache(store_dir)
    open_cache(store_dir, mode="mmap", mmap_dir=tmp_path / "side")
    (tmp_path / "side" / MARKER_FILE).unlink()
    logits = np.load(tmp_path / "side" / "logits.npy", mmap_mode="r+")
    logits[:] = 0  # garbage a killed build could leave
    logits.flush()
    del logits
    reopened = open_cache(store_dir, mode="mmap", mmap_dir=tmp_path / "side")
    assert reopened.built
    _assert_same_batches(memory, reopened, np.arange(150))


def test_sidecar_of_another_cache_is_rebuilt(tmp_path):
    a = build(tmp_path, name="a").store_dir
    b = build(tmp_path, params=small_params(logits_dtype="float32"), name="b").store_dir
    open_cache(a, mode="mmap", mmap_dir=tmp_path / "side")
    mapped = open_cache(b, mode="mmap", mmap_dir=tmp_path / "side")
    assert mapped.built and mapped.logits.dtype == np.float32
    marker = json.loads((tmp_path / "side" / MARKER_FILE).read_text())
    assert marker["build_fingerprint"] == mapped.metadata.build_fingerprint


def test_a_directory_of_other_files_is_never_deleted(tmp_path):
    store_dir = build(tmp_path).store_dir
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(MmapDirError, match="notes.txt"):
        open_cache(store_dir, mode="mmap", mmap_dir=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_modes_lazy_and_memory_are_kept_and_bad_modes_refused(tmp_path):
    zarr_dir = build(tmp_path).store_dir
    assert isinstance(open_cache(zarr_dir, mode="lazy"), LazyCache)
    assert isinstance(open_cache(zarr_dir, in_memory_max_bytes=0, mode="memory"), StoredCache)
    assert isinstance(open_cache(zarr_dir), StoredCache)  # small caches: in RAM, as before
    parquet_dir = build(tmp_path, params=small_params(store="parquet"), name="pq").store_dir
    with pytest.raises(CacheModeError, match="parquet.*lazily"):
        open_cache(parquet_dir, mode="lazy")
    with pytest.raises(CacheModeError, match="valid: auto, memory, mmap, lazy"):
        open_cache(zarr_dir, mode="fast")
