"""The student-level label budget: exactly the right rows keep their label, seeded, nested, from one cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.losses._contract import LossInputs
from pipeline.train.budget import LabelPoolError, StudentLabelBudget, apply_budget, budget_rows
from pipeline.train.data import join_training_data
from pipeline.train.loop import build_members
from pipeline.train.run import train_from_reader
from tests.train.helpers import make_cache, make_prepared, student_params

TRAIN, UNLABELLED_SPLIT = SPLITS.index("train"), SPLITS.index("unlabelled")


@pytest.fixture(scope="module")
def prepared():
    return make_prepared({"train": 300, "val": 40, "test": 20, "unlabelled": 40})


@pytest.fixture(scope="module")
def cache(prepared):
    return make_cache(prepared)


def test_budget_keeps_exactly_per_class_rows_of_each_class_and_only_candidates():
    rng = np.random.default_rng(3)
    label = rng.integers(-1, 4, 500)
    candidates = np.flatnonzero(rng.random(500) < 0.7)
    kept = budget_rows(label, candidates, per_class=7, seed=0)
    assert set(kept) <= set(candidates) and np.all(label[kept] >= 0)
    for cls in range(4):
        available = int(np.sum(label[candidates] == cls))
        assert np.sum(label[kept] == cls) == min(7, available)


def test_budget_is_seeded_stable_and_nested():
    label = np.random.default_rng(4).integers(0, 5, 400)
    rows = np.arange(400)
    assert np.array_equal(budget_rows(label, rows, 10, seed=1), budget_rows(label, rows[::-1], 10, seed=1))
    assert not np.array_equal(budget_rows(label, rows, 10, seed=1), budget_rows(label, rows, 10, seed=2))
    small, large = budget_rows(label, rows, 5, seed=1), budget_rows(label, rows, 20, seed=1)
    assert set(small) < set(large)
    assert np.array_equal(budget_rows(label, rows, None, seed=1), rows)


def test_applied_budget_masks_the_other_train_rows_and_leaves_val_and_test(prepared, cache):
    budgeted = apply_budget(cache, prepared, StudentLabelBudget(per_class=3, seed=0))
    reader = budgeted.reader
    labelled_train = (reader.split == TRAIN) & (reader.label != UNLABELLED)
    assert labelled_train.sum() == 30 and budgeted.report["labelled_rows"] == 30
    counts = np.bincount(reader.label[labelled_train], minlength=10)
    assert np.all(counts == 3)
    was_candidate = np.isin(cache.split, [TRAIN, UNLABELLED_SPLIT])
    assert np.all(reader.split[was_candidate & ~labelled_train] == UNLABELLED_SPLIT)
    assert np.all(reader.label[was_candidate & ~labelled_train] == UNLABELLED)
    assert np.array_equal(reader.split[~was_candidate], cache.split[~was_candidate])
    assert np.array_equal(reader.label[~was_candidate], cache.label[~was_candidate])
    rows = np.arange(len(cache))
    assert np.array_equal(reader.batch(rows).label.numpy(), reader.label)
    assert np.array_equal(reader.batch(rows).logits.numpy(), cache.batch(rows).logits.numpy())


def test_budgeted_data_joins_and_trains_the_labelled_rows_only(prepared, cache):
    budgeted = apply_budget(cache, prepared, StudentLabelBudget(per_class=4, seed=2))
    data = join_training_data(budgeted.reader, budgeted.prepared, "labelled")
    assert len(data.train_rows) == 40 and np.all(budgeted.reader.label[data.train_rows] >= 0)
    everything = join_training_data(budgeted.reader, budgeted.prepared, "all")
    assert len(everything.train_rows) == 300 + 40


def test_a_budget_beyond_the_labels_clips_and_says_so(prepared, cache):
    report = apply_budget(cache, prepared, StudentLabelBudget(per_class=10_000)).report
    assert report["labelled_rows"] == report["available_rows"] == 300
    assert report["clipped"] == list(range(10))


def test_held_back_labels_extend_the_pool_and_contradictions_are_refused(prepared, cache):
    unlabelled = prepared.split == UNLABELLED_SPLIT
    ids = prepared.sample_id[unlabelled]
    pool = (ids, np.arange(len(ids)) % 10)
    report = apply_budget(cache, prepared, StudentLabelBudget(held_back=True), pool).report
    assert report["available_rows"] == 340
    assert (
        apply_budget(cache, prepared, StudentLabelBudget(held_back=False), pool).report["available_rows"]
        == 300
    )
    train = prepared.split == TRAIN
    wrong = (prepared.sample_id[train][:3], (prepared.label[train][:3] + 1) % 10)
    with pytest.raises(LabelPoolError, match="teacher_train"):
        apply_budget(cache, prepared, StudentLabelBudget(held_back=True), wrong)


def test_a_masked_row_gives_no_hard_label_gradient_and_an_all_masked_batch_trains_on_soft_terms(
    prepared, cache
):
    budgeted = apply_budget(cache, prepared, StudentLabelBudget(per_class=1))
    data = join_training_data(budgeted.reader, budgeted.prepared, "all")
    masked = data.train_rows[budgeted.reader.label[data.train_rows] == UNLABELLED][:32]
    batch = budgeted.reader.batch(masked)
    params = student_params(loss={"ce": {"kind": "ce", "weight": 1.0}})
    (member,) = build_members(params, data, seed=0)
    inputs = torch.from_numpy(data.inputs[batch.rows])
    output = member.model(inputs)
    total, terms = member.recipe(
        LossInputs(student_logits=output.logits, teacher_logits=batch.logits, labels=batch.label)
    )
    total.backward()
    assert total.item() == 0.0
    assert all(p.grad is None or torch.all(p.grad == 0) for p in member.model.parameters())
    kd = student_params(loss={"ce": {"kind": "ce", "weight": 0.5}, "kd": {"kind": "hinton", "weight": 0.5}})
    (member,) = build_members(kd, data, seed=0)
    output = member.model(inputs)
    total, terms = member.recipe(
        LossInputs(student_logits=output.logits, teacher_logits=batch.logits, labels=batch.label)
    )
    total.backward()
    grads = [p.grad for p in member.model.parameters()]
    assert torch.isfinite(total) and total.item() > 0 and terms["ce"].item() == 0.0
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    member.optimizer.step()
    assert all(torch.isfinite(p).all() for p in member.model.parameters())


def test_training_with_a_budget_writes_its_report_of_labels_kept_per_class(tmp_path, prepared, cache):
    params = student_params(label_budget={"per_class": 2, "seed": 0}, train_rows="labelled", epochs=1)
    summary = train_from_reader(
        "b", params, cache, prepared, tmp_path / "out", tmp_path / "scratch", progress=False, threads=1
    )
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["label_budget"]["labelled_rows"] == 20 == summary["label_budget"]["labelled_rows"]
    assert written["label_budget"]["class_counts"] == {str(c): 2 for c in range(10)}
