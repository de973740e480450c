"""Training on cached views (`students.<s>.views: k`): the replayed inputs are bit for bit what the
teacher saw, each epoch takes one view per sample without replacement, a run resumes exactly, and a
student whose views do not fit the cache is refused with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.cache.open import open_cache
from pipeline.cache.params import CacheParams
from pipeline.cache.writer import build_cache
from pipeline.config import ParamsError
from pipeline.train.budget import StudentLabelBudget, apply_budget
from pipeline.train.data import join_training_data
from pipeline.train.params import validate_students
from pipeline.train.run import train_from_reader
from pipeline.train.views import ViewsMismatchError
from tests.train.helpers import LinearTeacher, make_cache, make_prepared, student_params

VIEWS = {
    "count": 4,
    "seed": 3,
    "transforms": [{"kind": "shift", "pixels": 1}, {"kind": "rotate", "degrees": 15}, {"kind": "mixup"}],
}


class EchoTeacher(LinearTeacher):
    """LinearTeacher plus an `echo` tap: the very input it was given (stored as float32)."""

    tap_names = ("embed", "echo")

    def run(self, inputs):
        return {**super().run(inputs), "echo": np.asarray(inputs, np.float32).reshape(len(inputs), -1)}


def build_view_cache(tmp, views):
    prepared = make_prepared({"train": 60, "val": 20, "test": 10, "unlabelled": 20})
    params = CacheParams(
        views=views, features_dtype="float32", rows_per_chunk=32, chunks_per_shard=2, batch_size=50
    )
    result = build_cache(
        prepared,
        EchoTeacher(),
        "t" * 64,
        prepared.fingerprint,
        params,
        tmp / "store",
        tmp / "scratch",
        progress=False,
    )
    return prepared, open_cache(result.store_dir, prepared.fingerprint)


@pytest.fixture(scope="module")
def view_cache(tmp_path_factory):
    return build_view_cache(tmp_path_factory.mktemp("views"), VIEWS)


@pytest.fixture(scope="module")
def unmixed_view_cache(tmp_path_factory):
    return build_view_cache(
        tmp_path_factory.mktemp("unmixed"), {**VIEWS, "transforms": VIEWS["transforms"][:2]}
    )


def test_replayed_inputs_are_bit_equal_to_what_the_teacher_saw(view_cache):
    prepared, reader = view_cache
    data = join_training_data(reader, prepared, "all", 4)
    rows = np.random.default_rng(0).choice(len(reader), 200, replace=False)  # views and originals
    assert (reader.view[rows] >= 0).any() and (reader.view[rows] < 0).any()
    replayed = data.batch_inputs(rows)
    assert replayed.shape == (200, 1, 8, 8) and replayed.dtype == np.float32
    assert replayed.reshape(200, -1).tobytes() == reader.batch(rows).features["echo"].numpy().tobytes()
    # the views really are augmented: not one equals its original
    views = rows[reader.view[rows] >= 0]
    originals = prepared.inputs[
        np.searchsorted(prepared.sample_id, reader.sample_id[views], sorter=np.argsort(prepared.sample_id))
    ]
    assert not np.array_equal(data.batch_inputs(views), originals)


def test_each_epoch_takes_one_view_per_sample_each_view_once_per_cycle(view_cache):
    prepared, reader = view_cache
    data = join_training_data(reader, prepared, "all", 3)
    n = len(data.train_rows)
    epochs = [data.epoch_rows(5, epoch) for epoch in range(6)]
    sample_of = {int(row): int(reader.sample_id[row]) for rows in epochs for row in rows}
    for cycle in (epochs[:3], epochs[3:]):
        seen = np.stack(cycle)  # (3 epochs, n samples)
        assert len({row for rows in cycle for row in rows.tolist()}) == 3 * n  # no view twice in a cycle
        assert all(reader.view[seen].max() < 3 for _ in [0])  # only views 0..k-1
        assert len({sample_of[int(r)] for r in seen[0]}) == n  # one view of every sample per epoch
    assert not np.array_equal(epochs[0], epochs[3])  # cycles draw their own order
    again = join_training_data(reader, prepared, "all", 3)
    assert all(np.array_equal(again.epoch_rows(5, e), epochs[e]) for e in range(6))  # (seed, epoch) alone
    assert not np.array_equal(data.epoch_rows(6, 0), epochs[0])


def test_mixed_views_are_unlabelled_for_hard_label_terms(view_cache):
    prepared, reader = view_cache
    data = join_training_data(reader, prepared, "labelled", 2)
    rows = data.epoch_rows(0, 0)
    batch = data.reader.batch(rows)
    mixed = reader.view_records(rows)["lam"] < 1
    assert mixed.any()
    assert (batch.label.numpy()[mixed] == -1).all()
    assert (batch.label.numpy()[~mixed] == reader.label[rows][~mixed]).all()


def test_a_run_on_views_killed_mid_epoch_resumes_to_the_same_weights(view_cache, tmp_path):
    prepared, reader = view_cache
    params = student_params(views=3, epochs=4, batch_size=16, checkpoint_every_steps=3)

    def stop_at(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_from_reader(
            "v", params, reader, prepared, tmp_path / "a", tmp_path / "sa", progress=False, on_step=stop_at
        )
    train_from_reader("v", params, reader, prepared, tmp_path / "a", tmp_path / "sa", progress=False)
    train_from_reader("v", params, reader, prepared, tmp_path / "b", tmp_path / "sb", progress=False)
    resumed, straight = (load_file(tmp_path / d / "seed_0" / "model.safetensors") for d in ("a", "b"))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_views_that_do_not_fit_the_cache_are_refused_with_one_line(view_cache):
    prepared, reader = view_cache
    with pytest.raises(ViewsMismatchError, match=r"students\.kd\.views is 5 but the cache holds 4 views"):
        join_training_data(reader, prepared, "all", 5, "kd")
    with pytest.raises(
        ViewsMismatchError, match=r"holds 4 views per sample but students\.kd\.views is not set"
    ):
        join_training_data(reader, prepared, "all", None, "kd")
    with pytest.raises(
        ViewsMismatchError, match=r"students\.kd\.views is 2 but the cache at .* holds no views"
    ):
        join_training_data(make_cache(prepared), prepared, "all", 2, "kd")
    with pytest.raises(ParamsError, match=r"students\.kd\.views"):
        validate_students({"kd": student_params().model_dump(mode="json") | {"views": 0}})


@pytest.mark.parametrize("cache", ["view_cache", "unmixed_view_cache"])
def test_a_budgeted_student_on_a_view_cache_hides_labels_on_budgeted_away_samples_and_their_views(
    cache, request, tmp_path
):
    prepared, reader = request.getfixturevalue(cache)
    budgeted = apply_budget(reader, prepared, StudentLabelBudget(per_class=2, seed=1))
    data = join_training_data(budgeted.reader, budgeted.prepared, "all", 3)
    original = reader.view < 0
    kept = reader.sample_id[original & (budgeted.reader.split == 0) & (budgeted.reader.label >= 0)]
    assert 0 < len(kept) == budgeted.report["labelled_rows"] <= 2 * prepared.num_classes  # samples, not rows
    rows = np.concatenate([data.epoch_rows(0, epoch) for epoch in range(3)])  # views 0..2 of every sample
    label, in_budget = data.reader.batch(rows).label.numpy(), np.isin(reader.sample_id[rows], kept)
    mixed = reader.view_records(rows)["lam"] < 1
    assert (label[~in_budget] == -1).all()  # a budgeted-away sample's views carry no label
    assert (label[mixed] == -1).all()  # nor does a mixed view
    plain = in_budget & ~mixed  # a plain view of a labelled sample keeps its sample's label
    assert (label[plain] == reader.label[rows][plain]).all() and (label[plain] >= 0).all()
    assert plain.any() if cache == "unmixed_view_cache" else mixed.any()
    train_from_reader(
        "b",
        student_params(views=3, epochs=2, label_budget={"per_class": 2, "seed": 1}),
        reader,
        prepared,
        tmp_path / "out",
        tmp_path / "scratch",
        progress=False,
    )
    assert (tmp_path / "out" / "seed_0" / "model.safetensors").exists()
