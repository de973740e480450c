"""Stratified split, label budget and omitted classes on the built-in digits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import ParamsError
from pipeline.data.prepare import prepare_dataset
from pipeline.data.split import TEST, TRAIN, UNLABELLED_SPLIT, VAL, stratified_split
from tests.data.conftest import make_params


@pytest.fixture(scope="module")
def digits():
    return prepare_dataset(make_params(seed=0))


def test_digits_are_1797_images_in_unit_range_with_row_ids(digits):
    data = digits.dataset
    assert len(data) == 1797 and data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert data.inputs.dtype == np.float32 and data.inputs.min() == 0.0 and data.inputs.max() == 1.0
    np.testing.assert_array_equal(data.sample_id, np.arange(1797))
    assert digits.teacher_train is None


def test_split_is_deterministic_for_a_seed_and_changes_with_it(digits):
    again = prepare_dataset(make_params(seed=0)).dataset
    other = prepare_dataset(make_params(seed=1)).dataset
    assert again.fingerprint == digits.dataset.fingerprint
    assert (other.split != digits.dataset.split).any()


def test_split_is_stratified_with_the_requested_fractions(digits):
    data = digits.dataset
    for cls in range(10):
        in_class = data.label == cls
        n = in_class.sum()
        assert (data.split[in_class] == TEST).sum() == round(n * 0.2)
        assert (data.split[in_class] == VAL).sum() == round(n * 0.15)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(-1, 4), min_size=1, max_size=200),
    st.integers(0, 10**6),
    st.floats(0, 0.45),
    st.floats(0, 0.45),
)
def test_every_row_lands_in_exactly_one_split_per_class_rule(labels, seed, val_fraction, test_fraction):
    label = np.asarray(labels, dtype=np.int64)
    split = stratified_split(label, seed, val_fraction, test_fraction)
    assert ((split == UNLABELLED_SPLIT) == (label == -1)).all()
    for cls in set(labels) - {-1}:
        n = (label == cls).sum()
        assert (split[label == cls] == TEST).sum() == round(n * test_fraction)
        assert (split[label == cls] == TRAIN).sum() == n - round(n * test_fraction) - round(n * val_fraction)


def test_label_budget_per_class_keeps_that_many_labels_and_unlabels_the_rest(digits):
    budgeted = prepare_dataset(make_params(label_budget={"per_class": 15}))
    data, full = budgeted.dataset, digits.dataset
    train_labels = data.label[data.split == TRAIN]
    assert np.bincount(train_labels, minlength=10).tolist() == [15] * 10
    assert (data.label[data.split == UNLABELLED_SPLIT] == -1).all()
    assert (data.split == UNLABELLED_SPLIT).sum() == (full.split == TRAIN).sum() - 150
    np.testing.assert_array_equal(data.split == VAL, full.split == VAL)  # val/test untouched
    assert budgeted.teacher_train is not None and len(budgeted.teacher_train) == (full.split == TRAIN).sum()


def test_label_budget_fraction_is_stratified(digits):
    data = prepare_dataset(make_params(label_budget={"fraction": 0.1})).dataset
    full = digits.dataset
    for cls in range(10):
        n_train = ((full.split == TRAIN) & (full.label == cls)).sum()
        assert ((data.split == TRAIN) & (data.label == cls)).sum() == max(1, round(n_train * 0.1))


def test_label_budget_needs_exactly_one_of_per_class_or_fraction():
    with pytest.raises(ParamsError, match="exactly one of per_class or fraction"):
        make_params(label_budget={"per_class": 5, "fraction": 0.1})


def test_omitted_class_leaves_the_train_split_but_stays_in_val_and_test(digits):
    outputs = prepare_dataset(make_params(omit_classes=[3]))
    data = outputs.dataset
    assert not ((data.split == TRAIN) & (data.label == 3)).any()
    for code in (VAL, TEST):
        assert ((data.split == code) & (data.label == 3)).sum() == (
            (digits.dataset.split == code) & (digits.dataset.label == 3)
        ).sum()
    assert set(data.sample_id) < set(digits.dataset.sample_id)
    assert (outputs.teacher_train.label == 3).any()  # the teacher still learns class 3 (Hinton 2015 §3)
    assert data.num_classes == 10


def test_budget_and_omission_combine(digits):
    data = prepare_dataset(make_params(omit_classes=[3], label_budget={"per_class": 5})).dataset
    counts = np.bincount(data.label[data.split == TRAIN], minlength=10)
    assert counts[3] == 0 and (np.delete(counts, 3) == 5).all()


def test_fractions_that_leave_no_train_are_a_params_error():
    with pytest.raises(ParamsError, match="val_fraction"):
        make_params(val_fraction=0.5, test_fraction=0.5)
