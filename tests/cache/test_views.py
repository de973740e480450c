"""A view cache (`cache.views`): originals then K drawn views per sample, their params stored beside
the teacher's outputs; byte-identical on a re-run and after a resume; stale when the spec changes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.cache.build import create_store
from pipeline.cache.format import StaleCacheError
from pipeline.cache.open import check_views, open_cache
from pipeline.cache.params import CacheParams
from pipeline.cache.shards import write_shard
from pipeline.cache.views import ORIGINAL_VIEW, pool_mask
from pipeline.config import ParamsError, validate_section
from pipeline.transforms import PartnerPool, TransformError, ViewsParams, draw_table
from tests.cache.helpers import FakeTeacher, build, make_rows, small_params, tree_bytes

VIEWS = {
    "count": 3,
    "seed": 7,
    "transforms": [{"kind": "flip"}, {"kind": "shift", "pixels": 1}, {"kind": "mixup", "alpha": 0.4}],
}


class ImageTeacher(FakeTeacher):
    """FakeTeacher over (1, 2, 4) images, with an `echo` tap: the very input it saw, flattened."""

    tap_names = ("embed", "conv", "echo")

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def run(self, inputs):
        self.calls += 1
        flat = np.asarray(inputs).reshape(len(inputs), -1)
        return {**super().run(flat), "echo": flat.astype(np.float32)}


def image_rows(num_rows: int = 60):
    rows = make_rows(num_rows)
    return dataclasses.replace(rows, inputs=rows.inputs.reshape(num_rows, 1, 2, 4))


def view_params(views=VIEWS, **overrides):
    return small_params(views=views, features_dtype="float32", **overrides)


def test_a_view_cache_holds_the_originals_then_k_drawn_views_of_each_training_sample(tmp_path):
    rows = image_rows()
    result = build(tmp_path, rows, ImageTeacher(), view_params())
    cache = open_cache(result.store_dir)
    n, pooled = len(rows.sample_id), np.flatnonzero(pool_mask(rows.split))
    assert len(cache) == n + 3 * len(pooled) and cache.schema.view_count == 3
    assert (cache.view[:n] == ORIGINAL_VIEW).all()
    assert (cache.sample_id[:n] == rows.sample_id).all()
    assert (cache.sample_id[n:] == np.repeat(rows.sample_id[pooled], 3)).all()
    assert (cache.view[n:] == np.tile([0, 1, 2], len(pooled))).all()
    # the stored records are the drawn ones; partners come from the training splits only
    spec = ViewsParams(**VIEWS)
    expected = draw_table(
        spec.transforms,
        7,
        rows.sample_id[pooled],
        3,
        PartnerPool(rows.sample_id[pooled]),
        input_shape=(1, 2, 4),
    ).reshape(-1)
    assert cache.view_records(np.arange(n, len(cache))).tobytes() == expected.tobytes()
    assert np.isin(expected["partner_id"], rows.sample_id[pooled]).all()
    # the originals are the single-view cache's rows, output for output
    single = open_cache(
        build(tmp_path, rows, ImageTeacher(), small_params(features_dtype="float32"), "one").store_dir
    )
    np.testing.assert_array_equal(cache.logits[:n], single.logits)
    np.testing.assert_array_equal(cache.features["echo"][:n], rows.inputs.reshape(n, -1))


def test_a_view_cache_is_byte_identical_on_a_rerun_and_after_a_resume(tmp_path):
    rows, params = image_rows(), view_params()
    first = tree_bytes(build(tmp_path, rows, ImageTeacher(), params, "a").store_dir)
    assert tree_bytes(build(tmp_path, rows, ImageTeacher(), params, "b").store_dir) == first
    # resume: two shards written by another "process", then the build finishes the rest
    scratch = tmp_path / "c" / "scratch"
    started = create_store(scratch, rows, ImageTeacher(), "t" * 64, rows.fingerprint, params)
    for shard in (0, 2):
        write_shard(started, shard, ImageTeacher())
    resumed = build(tmp_path, rows, ImageTeacher(), params, "c")
    assert resumed.shards_resumed == 2
    assert tree_bytes(resumed.store_dir) == first


def test_a_changed_spec_count_or_seed_is_another_build_and_a_stale_cache(tmp_path, caplog):
    rows = image_rows()
    store = build(tmp_path, rows, ImageTeacher(), view_params()).store_dir
    metadata = open_cache(store).metadata
    check_views(store, metadata, ViewsParams(**VIEWS))  # the same views: accepted
    for change in ({"seed": 8}, {"count": 2}, {"transforms": VIEWS["transforms"][:2]}):
        other = ViewsParams(**(VIEWS | change))
        with pytest.raises(StaleCacheError, match=r"built with cache\.views [0-9a-f]{12} .*dvc repro cache"):
            check_views(store, metadata, other)
    with pytest.raises(StaleCacheError, match="params ask for no views"):
        check_views(store, metadata, None)
    single = build(tmp_path, rows, ImageTeacher(), small_params(), "one").store_dir
    with pytest.raises(StaleCacheError, match="built with cache.views no views"):
        check_views(single, open_cache(single).metadata, ViewsParams(**VIEWS))
    # a scratch build of another spec is not resumed
    scratch = tmp_path / "x" / "scratch"
    started = create_store(scratch, rows, ImageTeacher(), "t" * 64, rows.fingerprint, view_params())
    write_shard(started, 0, ImageTeacher())
    changed = view_params(ViewsParams(**(VIEWS | {"seed": 9})))
    result = build(tmp_path, rows, ImageTeacher(), changed, "x")
    assert result.shards_resumed == 0 and "views" in caplog.text


@pytest.mark.parametrize(
    ("transforms", "shape", "message"),
    [
        (
            [{"kind": "crop", "size": 5}],
            (1, 2, 4),
            r"transform 0 \(crop\): size \[5, 5\] is larger than the image",
        ),
        (
            [{"kind": "rotate", "degrees": 10}],
            (8,),
            r"transform 0 \(rotate\): needs an image .* 1-D feature vector",
        ),
        (
            [{"kind": "crop", "size": 2}],
            (1, 2, 4),
            r"a view is \[1, 2, 2\] but an original input is \[1, 2, 4\]",
        ),
    ],
    ids=["crop-larger-than-image", "rotate-a-vector", "crop-changes-the-shape"],
)
def test_a_spec_that_cannot_apply_is_refused_before_the_teacher_runs(tmp_path, transforms, shape, message):
    rows = make_rows(40)
    rows = dataclasses.replace(rows, inputs=rows.inputs[:, : int(np.prod(shape))].reshape(40, *shape))
    teacher = ImageTeacher()
    with pytest.raises(TransformError, match=message):
        build(tmp_path, rows, teacher, view_params({"count": 2, "transforms": transforms}))
    assert teacher.calls == 0 and not (tmp_path / "cache" / "store").exists()


def test_zero_views_is_refused_naming_the_key():
    with pytest.raises(ParamsError, match=r"cache\.views\.count"):
        validate_section(CacheParams, {"views": {"count": 0, "transforms": []}}, "cache")


def test_a_view_cache_reads_the_same_in_every_mode_and_store(tmp_path):
    rows = image_rows(40)
    zarr_store = build(tmp_path, rows, ImageTeacher(), view_params()).store_dir
    parquet = build(tmp_path, rows, ImageTeacher(), view_params(store="parquet"), "pq").store_dir
    memory = open_cache(zarr_store)
    picked = np.array([0, 41, 77, 99, 5])
    for reader in (
        open_cache(zarr_store, mode="lazy"),
        open_cache(zarr_store, mode="mmap", mmap_dir=tmp_path / "mm"),
        open_cache(parquet),
    ):
        assert reader.schema.view_count == 3
        assert reader.view_records(picked).tobytes() == memory.view_records(picked).tobytes()
        assert (reader.view == memory.view).all()
        np.testing.assert_array_equal(reader.batch(picked).logits, memory.batch(picked).logits)
