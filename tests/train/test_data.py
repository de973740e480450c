"""The cache is joined to the prepared inputs by sample id, checked once, and refused when it does not fit."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cache.batch import SPLITS
from pipeline.cache.open import CacheAlignmentError
from pipeline.cache.reader import MemoryCache
from pipeline.data.prepared import PreparedData
from pipeline.train.data import join_training_data, training_rows
from tests.train.helpers import make_cache, make_prepared


def test_inputs_are_gathered_in_cache_row_order_whatever_the_order_of_either_side():
    prepared = make_prepared()
    order = np.random.default_rng(5).permutation(len(prepared))
    cache = make_cache(prepared, order=order)
    data = join_training_data(cache, prepared, "all")
    np.testing.assert_array_equal(data.inputs, prepared.inputs[order])


def test_cache_ids_missing_from_the_dataset_are_refused_and_named():
    prepared = make_prepared()
    cache = make_cache(prepared)
    ids = prepared.sample_id.copy()
    ids[ids == cache.sample_id[3]] = 99
    other = PreparedData(ids, prepared.split, prepared.label, prepared.inputs, 10, "other")
    with pytest.raises(
        CacheAlignmentError,
        match=rf"cache row\(s\) have ids the dataset lacks: {cache.sample_id[3]}.*dvc repro cache",
    ):
        join_training_data(cache, other, "all")


def test_dataset_samples_without_a_cache_row_are_refused():
    prepared = make_prepared()
    cache = make_cache(prepared, order=np.arange(len(prepared) - 1))
    with pytest.raises(
        CacheAlignmentError, match=rf"1 sample id\(s\) are not in the cache: {prepared.sample_id[-1]}"
    ):
        join_training_data(cache, prepared, "all")


def test_a_cache_whose_labels_differ_from_the_dataset_is_refused():
    prepared = make_prepared()
    cache = make_cache(prepared, order=np.arange(len(prepared)))
    label = cache.label.copy()
    label[0] = (label[0] + 1) % 10 if label[0] >= 0 else 0
    shifted = MemoryCache(cache.sample_id, cache.split, label, cache.logits, cache.features)
    with pytest.raises(CacheAlignmentError, match="disagree with the prepared dataset on label"):
        join_training_data(shifted, prepared, "all")


def test_labelled_rows_are_the_train_split_and_all_adds_the_unlabelled_split():
    prepared = make_prepared()
    cache = make_cache(prepared)
    labelled = training_rows(cache, "labelled")
    everything = training_rows(cache, "all")
    assert set(cache.split[labelled]) == {SPLITS.index("train")}
    assert (cache.label[labelled] >= 0).all()
    assert set(cache.split[everything]) == {SPLITS.index("train"), SPLITS.index("unlabelled")}
    assert len(everything) == len(labelled) + 40
