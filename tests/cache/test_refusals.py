"""A cache is never silently wrong: stale, unfinished, corrupt or misaligned caches are refused."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from pipeline.cache.build import CacheInputError, completed_shards, open_build
from pipeline.cache.format import CacheCorruptError, IncompleteCacheError, StaleCacheError
from pipeline.cache.open import CacheAlignmentError, check_alignment, open_cache
from pipeline.cache.parquet_store import ParquetStore
from pipeline.cache.shards import CacheDiskFullError
from pipeline.cache.teacher_outputs import TeacherOutputError
from pipeline.cache.zarr_store import ZarrStore
from tests.cache.helpers import FakeTeacher, build, make_rows, small_params, tree_bytes


def test_cache_refuses_other_teacher(tmp_path):
    store_dir = build(tmp_path, teacher_sha256="a" * 64).store_dir
    with pytest.raises(StaleCacheError, match=r"aaaaaaaaaaaa.*bbbbbbbbbbbb.*dvc repro cache"):
        open_cache(store_dir, teacher_sha256="b" * 64)


def test_cache_refuses_other_dataset(tmp_path):
    rows = make_rows()
    store_dir = build(tmp_path, rows).store_dir
    with pytest.raises(StaleCacheError, match=r"dataset dddddddddddd.*eeeeeeeeeeee.*dvc repro cache"):
        open_cache(store_dir, dataset_fingerprint="e" * 64)
    open_cache(store_dir, dataset_fingerprint=rows.fingerprint, teacher_sha256="t" * 64)


def test_half_written_cache_is_never_opened(tmp_path):
    with pytest.raises(TeacherOutputError):
        build(tmp_path, make_rows(), FakeTeacher(nan_at=make_rows().inputs[100, 0]))
    scratch_store = tmp_path / "cache" / "scratch" / "store"
    assert (scratch_store / "cache.json").exists()
    with pytest.raises(IncompleteCacheError, match="never finished"):
        open_cache(scratch_store)
    with pytest.raises(IncompleteCacheError, match="no cache.json"):
        open_cache(tmp_path / "nowhere")


def test_nan_rows_are_named_and_completed_shards_kept(tmp_path):
    rows = make_rows()
    with pytest.raises(
        TeacherOutputError, match=r"'logits' is NaN/Inf for 1 row\(s\): sample_id 1300 \(rows 100\)"
    ):
        build(tmp_path, rows, FakeTeacher(nan_at=rows.inputs[100, 0]))
    done = completed_shards(open_build(tmp_path / "cache" / "scratch", rows))
    assert done == {0, 1, 2}  # shard 3 holds row 100
    result = build(tmp_path, rows)  # the same teacher sha256 once the inputs are fixed: resumes
    assert result.shards_resumed == 3


def test_float16_overflow_is_refused_with_the_fix(tmp_path):
    with pytest.raises(TeacherOutputError, match="float16 range.*float32"):
        build(tmp_path, teacher=FakeTeacher(scale=1e6))


def test_disk_full_then_rerun_completes(tmp_path, monkeypatch):
    rows = make_rows()
    reference = tree_bytes(build(tmp_path, rows, name="reference").store_dir)
    real_write, calls = ZarrStore.write_array, {"n": 0}

    def write_array(self, name, shard_rows, values):
        calls["n"] += 1
        if calls["n"] == 14:  # the second of six arrays of shard 2
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, name, shard_rows, values)

    monkeypatch.setattr(ZarrStore, "write_array", write_array)
    with pytest.raises(
        CacheDiskFullError,
        match=r"disk full while writing shard 2 \(rows 64\.\.95\) of 5.*free space and re-run "
        r"`dvc repro cache`; completed shards are kept \(2 of 5\)",
    ):
        build(tmp_path, rows)
    assert completed_shards(open_build(tmp_path / "cache" / "scratch", rows)) == {0, 1}
    result = build(tmp_path, rows)
    assert (result.shards_written, result.shards_resumed) == (3, 2)
    assert tree_bytes(result.store_dir) == reference


def test_parquet_disk_full_then_rerun_is_byte_identical(tmp_path, monkeypatch):
    rows, params = make_rows(), small_params(store="parquet")
    reference = tree_bytes(build(tmp_path, rows, params=params, name="reference").store_dir)
    real_write, calls = ParquetStore.write_file, {"n": 0}

    def write_file(self, shard_index, data):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, shard_index, data)

    monkeypatch.setattr(ParquetStore, "write_file", write_file)
    with pytest.raises(CacheDiskFullError, match="shard 3 "):
        build(tmp_path, rows, params=params)
    result = build(tmp_path, rows, params=params)
    assert (result.shards_written, result.shards_resumed) == (2, 3)
    assert tree_bytes(result.store_dir) == reference


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_zarr_chunk_is_detected_naming_array_and_rows(tmp_path):
    store_dir = build(tmp_path).store_dir
    _flip_byte(store_dir / "logits" / "c" / "2" / "0", 20)
    with pytest.raises(CacheCorruptError, match=r"'logits' rows 64\.\.95 .*checksum"):
        open_cache(store_dir)
    with pytest.raises(CacheCorruptError, match=r"'logits' rows in 64\.\.64"):
        open_cache(store_dir, mode="lazy").batch(np.array([64]))


def test_truncated_or_missing_zarr_shard_is_detected(tmp_path):
    store_dir = build(tmp_path).store_dir
    shard = store_dir / "features" / "embed" / "c" / "1" / "0"
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(CacheCorruptError, match=r"'features/embed' rows 32\.\.63"):
        open_cache(store_dir)
    shard.unlink()  # a missing shard reads back as fill values: the manifest digest catches it
    with pytest.raises(CacheCorruptError, match=r"'features/embed' rows 32\.\.63 .*manifest"):
        open_cache(store_dir)


def test_corrupted_parquet_page_is_detected_naming_array_and_rows(tmp_path):
    store_dir = build(tmp_path, params=small_params(store="parquet")).store_dir
    path = store_dir / "part-000001.parquet"
    meta = __import__("pyarrow.parquet", fromlist=["x"]).ParquetFile(path).metadata
    column = [
        meta.row_group(0).column(i)
        for i in range(meta.num_columns)
        if meta.row_group(0).column(i).path_in_schema.startswith("logits")
    ][0]
    _flip_byte(path, column.data_page_offset + column.total_compressed_size - 3)
    with pytest.raises(CacheCorruptError, match=r"'logits' rows 32\.\.63"):
        open_cache(store_dir)


def test_misaligned_ids_are_refused_naming_them(tmp_path):
    rows = make_rows()
    cache = open_cache(build(tmp_path, rows).store_dir)
    wanted = rows.sample_id[[7, 3, 3]]
    np.testing.assert_array_equal(check_alignment(cache, wanted), [7, 3, 3])
    with pytest.raises(CacheAlignmentError, match=r"2 sample id\(s\) are not in the cache: 5, 99999"):
        check_alignment(cache, np.array([1000, 5, 99999]))
    with pytest.raises(CacheAlignmentError, match=r"148 cache row\(s\) have ids the dataset lacks: 1006"):
        check_alignment(cache, rows.sample_id[:2], exact=True)
    np.testing.assert_array_equal(
        check_alignment(cache, rows.sample_id[::-1], exact=True), np.arange(150)[::-1]
    )


def test_scratch_from_another_teacher_is_started_over(tmp_path, caplog):
    rows = make_rows()
    with pytest.raises(TeacherOutputError):
        build(tmp_path, rows, FakeTeacher(nan_at=rows.inputs[100, 0]), teacher_sha256="a" * 64)
    with caplog.at_level("WARNING"):
        result = build(tmp_path, rows, teacher_sha256="b" * 64)
    assert result.shards_resumed == 0
    assert "teacher aaaaaaaaaaaa -> bbbbbbbbbbbb" in caplog.text
    assert json.loads((result.store_dir / "cache.json").read_text())["teacher"]["sha256"] == "b" * 64


def test_empty_or_duplicate_rows_are_refused(tmp_path):
    rows = make_rows(10)
    empty = type(rows)(rows.sample_id[:0], rows.split[:0], rows.label[:0], rows.inputs[:0])
    with pytest.raises(CacheInputError, match="no rows"):
        build(tmp_path, empty)
    duplicated = type(rows)(np.zeros(10, np.int64), rows.split, rows.label, rows.inputs)
    with pytest.raises(CacheInputError, match="not unique"):
        build(tmp_path, duplicated)


def test_nan_in_a_feature_tap_is_named(tmp_path):
    class BadTap(FakeTeacher):
        def run(self, inputs):
            out = super().run(inputs)
            out["embed"][0, 0] = np.inf
            return out

    with pytest.raises(TeacherOutputError, match=r"'embed' is NaN/Inf .* sample_id 1000"):
        build(tmp_path, teacher=BadTap())
