"""Splitting, the label budget and the omitted classes: all seeded, stratified, deterministic.

Every function works on row-aligned arrays and returns new ones, so the order of rows (and the
sample ids) never changes; only the `split` codes and labels do, and `omit_train_classes` drops rows.
"""

from __future__ import annotations

import numpy as np

from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.data.params import LabelBudget

TRAIN, VAL, TEST, UNLABELLED_SPLIT = (SPLITS.index(name) for name in ("train", "val", "test", "unlabelled"))


def stratified_split(label: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """(N,) int8 split codes: per class, round(n_c * test_fraction) rows go to test and
    round(n_c * val_fraction) to val, chosen by a generator seeded with `seed`; the rest to train.
    Rows without a label (-1) go to `unlabelled`."""
    rng = np.random.default_rng(seed)
    split = np.full(len(label), TRAIN, dtype=np.int8)
    split[label == UNLABELLED] = UNLABELLED_SPLIT
    for cls in np.unique(label[label != UNLABELLED]):
        rows = rng.permutation(np.flatnonzero(label == cls))
        n_test = int(round(len(rows) * test_fraction))
        n_val = int(round(len(rows) * val_fraction))
        split[rows[:n_test]] = TEST
        split[rows[n_test : n_test + n_val]] = VAL
    return split


def unlabelled_train_to_unlabelled(split: np.ndarray, label: np.ndarray) -> np.ndarray:
    """A user's own split may put rows without a label in `train`; they belong in `unlabelled`."""
    split = split.copy()
    split[(split == TRAIN) & (label == UNLABELLED)] = UNLABELLED_SPLIT
    return split


def omit_train_classes(split: np.ndarray, label: np.ndarray, omit_classes: list[int]) -> np.ndarray:
    """(N,) bool mask of the rows to keep: every row except the train rows of `omit_classes`
    (Hinton et al. 2015 §3: the transfer set lacks a class; val and test keep it; "Distilling the
    Knowledge in a Neural Network", arXiv:1503.02531)."""
    return ~((split == TRAIN) & np.isin(label, np.asarray(omit_classes, dtype=np.int64)))


def apply_label_budget(
    split: np.ndarray, label: np.ndarray, budget: LabelBudget, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the labels of `budget.per_class` rows per class of train (or `budget.fraction` of each
    class, at least 1 row), chosen by a generator seeded with (seed, 1); every other train row
    becomes split `unlabelled` with label -1. Returns new (split, label)."""
    rng = np.random.default_rng([seed, 1])
    split, label = split.copy(), label.copy()
    train = split == TRAIN
    for cls in np.unique(label[train]):
        rows = rng.permutation(np.flatnonzero(train & (label == cls)))
        if budget.per_class is not None:
            keep = min(budget.per_class, len(rows))
        else:
            keep = min(len(rows), max(1, int(round(len(rows) * budget.fraction))))
        dropped = rows[keep:]
        split[dropped] = UNLABELLED_SPLIT
        label[dropped] = UNLABELLED
    return split, label
