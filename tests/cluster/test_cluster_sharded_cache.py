"""Sharded teacher inference on Dask workers: whole shards per writer, the same bytes as one process."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from pipeline.cluster.sharded_cache import ShardedCacheError, build_cache_sharded, plan_shard_groups
from tests.cache.helpers import FakeTeacher, build, make_rows, small_params, tree_bytes

TEACHER_SHA = "t" * 64


def sharded(client, tmp_path, params, teacher=FakeTeacher, name="sharded", rows=150):
    return build_cache_sharded(
        client,
        functools.partial(make_rows, rows),
        teacher,
        TEACHER_SHA,
        make_rows(rows).fingerprint,
        params,
        tmp_path / name / "store",
        tmp_path / name / "scratch",
        progress=False,
    )


def test_shard_groups_are_contiguous_whole_shards_covering_each_once():
    groups = plan_shard_groups(list(range(10)), 4)
    assert groups == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert plan_shard_groups([0, 1], 8) == [[0], [1]]
    assert plan_shard_groups([], 3) == []


@pytest.mark.parametrize("store", ["zarr", "parquet"])
def test_sharded_cache_is_byte_identical_to_a_single_process_build(local_client, tmp_path, store):
    params = small_params(store=store, sparse_top_k=3)
    single = build(tmp_path, make_rows(150), FakeTeacher(), params, name="single")
    result = sharded(local_client, tmp_path, params)
    assert result.shards_written == 5 and result.shards_resumed == 0
    assert tree_bytes(result.store_dir) == tree_bytes(single.store_dir)
    np.testing.assert_array_equal(result.reference_rows, single.reference_rows)
    np.testing.assert_array_equal(result.reference_logits, single.reference_logits)


def test_a_failing_shard_group_keeps_the_others_and_a_rerun_resumes_to_the_same_bytes(local_client, tmp_path):
    params = small_params()
    rows = make_rows(150)
    poisoned = functools.partial(FakeTeacher, nan_at=float(rows.inputs[140, 0]))  # row 140: the last shard
    with pytest.raises(
        ShardedCacheError,
        match=r"1 of 4 shard groups failed \(shards-4-4\).*First failure: .*TeacherOutputError.*NaN",
    ):
        sharded(local_client, tmp_path, params, teacher=poisoned)
    result = sharded(local_client, tmp_path, params)
    assert (result.shards_written, result.shards_resumed) == (1, 4)
    single = build(tmp_path, rows, FakeTeacher(), params, name="single")
    assert tree_bytes(result.store_dir) == tree_bytes(single.store_dir)
    np.testing.assert_array_equal(result.reference_logits, single.reference_logits)


def test_onnx_teacher_on_workers_gives_the_bytes_of_the_single_process_stage(local_client, project, tmp_path):
    from pipeline.cache.writer import build_cache
    from pipeline.cluster.sharded_cache import build_cache_on_cluster
    from pipeline.data.prepared import load_prepared
    from pipeline.teacher.session import open_teacher
    from tests.cluster.student_project import export_linear_teacher

    prepared_dir, _ = project
    onnx_path = export_linear_teacher(tmp_path / "teacher.onnx")
    prepared = load_prepared(prepared_dir)
    params = small_params(rows_per_chunk=32, chunks_per_shard=2, batch_size=48)
    single = build_cache(
        prepared,
        open_teacher(onnx_path, provider="cpu", intra_op_threads=1),
        TEACHER_SHA,
        prepared.fingerprint,
        params,
        tmp_path / "single" / "store",
        tmp_path / "single" / "scratch",
        progress=False,
    )
    result = build_cache_on_cluster(
        local_client,
        prepared_dir,
        onnx_path,
        TEACHER_SHA,
        prepared.fingerprint,
        params,
        tmp_path / "sharded" / "store",
        tmp_path / "sharded" / "scratch",
        provider="cpu",
        intra_op_threads=1,
        progress=False,
    )
    assert result.shards_written == 5 and result.provider == "CPUExecutionProvider"
    assert tree_bytes(result.store_dir) == tree_bytes(single.store_dir)
