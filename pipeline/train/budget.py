"""A student-level label budget: train on the labels of a seeded, stratified subset of the train
rows, from the same cache and prepared data.

`prepare.label_budget` decides which labels every student sees and changes the dataset (so its
fingerprint, so the cache). `students.<name>.label_budget` decides it for one student at train time:
the cache and `data/prepared` stay as they are. Per class, the candidate rows (the cache's `train`
and `unlabelled` rows that have a known label) are put in an order drawn from a generator seeded
with (seed, class); the first `per_class` keep their label, every other candidate becomes an
unlabelled row (label -1, split `unlabelled`): hard-label terms mask it, soft terms still use it.
For one seed the kept sets are nested: 5 per class is a subset of 15, of 50.

Known labels are the cache's, plus, with `held_back: true`, the labels `prepare` took away for its
own budget (`data/prepared/teacher_train/`): that is how the accuracy-vs-labels curve goes past the
150 labels of the default scenario. A budget larger than the labels available clips to them, and
the report says so.

On a view cache (`cache.views`) the budget counts samples, not rows: the candidates are the original
rows (view -1), and each view takes its sample's budgeted split and label, so a budgeted-away
sample's views lose their label too (a mixed view is unlabelled anyway, at batch time).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from pydantic import Field

from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.cache.views import PartnerIndex
from pipeline.config import Seed, StrictModel
from pipeline.errors import DistilleryError

TRAIN, UNLABELLED_SPLIT = SPLITS.index("train"), SPLITS.index("unlabelled")


class LabelPoolError(DistilleryError, ValueError):
    """Held-back labels that contradict the cache's own labels for the same sample ids."""


class StudentLabelBudget(StrictModel):
    """`students.<name>.label_budget: {per_class: 15, seed: 0, held_back: false}`.

    per_class: labels kept per class (null: every known label). seed: draws the kept rows (the
    same for every training seed, so recipes compared on one budget see the same labels).
    held_back: also count the labels `prepare.label_budget` held back as known.
    """

    per_class: int | None = Field(default=None, ge=1)
    seed: Seed = 0
    held_back: bool = False


def budget_rows(label: np.ndarray, candidates: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """(k,) int64 rows, ascending, that keep their label: per class c of `label[candidates]` (label
    -1 rows are never kept) the first `per_class` rows of an order drawn by
    `np.random.default_rng([seed, c])` (all of them when per_class is None or exceeds the class).

    label: (N,) int64, -1 = unknown; candidates: (n,) int64 row numbers into `label`. The order of
    a class depends only on (seed, c, its candidate rows), so budgets of one seed are nested.
    """
    candidates = np.sort(np.asarray(candidates, np.int64))
    known = candidates[label[candidates] != UNLABELLED]
    kept = []
    for cls in np.unique(label[known]):
        rows = np.random.default_rng([seed, int(cls)]).permutation(known[label[known] == cls])
        kept.append(rows if per_class is None else rows[:per_class])
    return np.sort(np.concatenate(kept)) if kept else np.empty(0, np.int64)


class RelabelledReader:
    """A cache reader whose `split` and `label` are replaced (same rows, same teacher outputs).

    split: (N,) int8 codes; label: (N,) int64. Every other attribute is the wrapped reader's.
    """

    def __init__(self, reader: Any, split: np.ndarray, label: np.ndarray) -> None:
        self._reader = reader
        self._split = np.asarray(split, np.int8)
        self._label = np.asarray(label, np.int64)

    def __len__(self) -> int:
        return len(self._reader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    @property
    def split(self) -> np.ndarray:
        """(N,) int8 split codes after the budget."""
        return self._split

    @property
    def label(self) -> np.ndarray:
        """(N,) int64 labels after the budget, -1 = none."""
        return self._label

    def batch(self, rows: np.ndarray):
        """The wrapped reader's TeacherBatch with this reader's split and labels."""
        batch = self._reader.batch(rows)
        rows = np.asarray(batch.rows, np.int64)
        return replace(batch, split=self._split[rows], label=torch.from_numpy(self._label[rows].copy()))


@dataclass(frozen=True)
class BudgetedData:
    """reader: the relabelled cache; prepared: the PreparedData with the same split and labels (its
    fingerprint unchanged: the dataset is the same); report: JSON-able counts (see `apply_budget`)."""

    reader: RelabelledReader
    prepared: Any
    report: dict[str, Any]


def known_labels(
    reader: Any, label_pool: tuple[np.ndarray, np.ndarray] | None = None, show_ids=None
) -> np.ndarray:
    """(N,) int64 label of each cache row: the cache's, else the pool's for the same sample id.

    label_pool: (sample_id (M,), label (M,)) of labels known outside the cache (held back by
    `prepare`), or None. A pool label that contradicts a cache label raises LabelPoolError naming
    the ids (as `show_ids` shows int64 keys: the user's string ids, `PreparedData.ids_of`).
    """
    label = np.asarray(reader.label, np.int64).copy()
    if label_pool is None:
        return label
    pool_ids, pool_labels = (np.asarray(a, np.int64) for a in label_pool)
    order = np.argsort(pool_ids, kind="stable")
    pool_ids, pool_labels = pool_ids[order], pool_labels[order]
    ids = np.asarray(reader.sample_id, np.int64)
    position = np.clip(np.searchsorted(pool_ids, ids), 0, max(len(pool_ids) - 1, 0))
    found = (pool_ids[position] == ids) if len(pool_ids) else np.zeros(len(ids), bool)
    clash = found & (label != UNLABELLED) & (pool_labels[position] != label)
    if clash.any():
        raise LabelPoolError(
            f"{int(clash.sum())} held-back labels differ from the cache's for the same sample ids "
            f"(first: {', '.join(map(str, (show_ids or np.ndarray.tolist)(ids[clash][:5])))}); "
            "data/prepared/teacher_train is from other data: "
            "re-run `dvc repro prepare cache`"
        )
    fill = found & (label == UNLABELLED)
    label[fill] = pool_labels[position[fill]]
    return label


def apply_budget(
    reader: Any,
    prepared: Any,
    budget: StudentLabelBudget,
    label_pool: tuple[np.ndarray, np.ndarray] | None = None,
) -> BudgetedData:
    """Relabel the cache's train and unlabelled rows by `budget` (module docstring).

    prepared: the PreparedData the cache was built from (joined by sample id). label_pool: labels
    known outside the cache, used only when `budget.held_back`. The report holds `per_class` (asked),
    `labelled_rows`, `available_rows` (known labels among the candidates), `clipped` (the classes with
    fewer known labels than asked) and `class_counts` (class -> labels kept).
    """
    label = known_labels(reader, label_pool if budget.held_back else None, getattr(prepared, "ids_of", None))
    split = np.asarray(reader.split, np.int8)
    is_view = _view_rows(reader)
    candidates = np.flatnonzero(((split == TRAIN) | (split == UNLABELLED_SPLIT)) & ~is_view).astype(np.int64)
    kept = budget_rows(label, candidates, budget.per_class, budget.seed)
    new_split, new_label = split.copy(), np.asarray(reader.label, np.int64).copy()
    new_split[candidates], new_label[candidates] = UNLABELLED_SPLIT, UNLABELLED
    new_split[kept], new_label[kept] = TRAIN, label[kept]
    _views_follow_their_sample(reader, is_view, new_split, new_label)
    available = {
        int(c): int(n)
        for c, n in zip(*np.unique(label[candidates][label[candidates] >= 0], return_counts=True))
    }
    counts = {int(c): int(n) for c, n in zip(*np.unique(new_label[kept], return_counts=True))}
    clipped = sorted(c for c, n in available.items() if budget.per_class is not None and n < budget.per_class)
    report = {
        "per_class": budget.per_class,
        "seed": budget.seed,
        "held_back": budget.held_back,
        "labelled_rows": int(len(kept)),
        "available_rows": int(sum(available.values())),
        "clipped": clipped,
        "class_counts": {_class_name(prepared, c): n for c, n in counts.items()},
    }
    return BudgetedData(
        RelabelledReader(reader, new_split, new_label),
        _relabel_prepared(prepared, reader, new_split, new_label),
        report,
    )


def _view_rows(reader: Any) -> np.ndarray:
    """(N,) bool: the rows of a view cache that are views (not originals); all False without views."""
    view = getattr(reader, "view", None)
    return np.zeros(len(reader), bool) if view is None else np.asarray(view) >= 0


def _views_follow_their_sample(
    reader: Any, is_view: np.ndarray, split: np.ndarray, label: np.ndarray
) -> None:
    """Give every view its sample's budgeted split and label (in place): the budget counts samples
    (original rows), so a budgeted-away sample's views lose their label too. (A mixed view is
    unlabelled later, at batch time: pipeline/train/views.py.)"""
    if not is_view.any():
        return
    sample_id = np.asarray(reader.sample_id, np.int64)
    originals, views = np.flatnonzero(~is_view), np.flatnonzero(is_view)
    original_of = originals[PartnerIndex(sample_id[originals]).rows(sample_id[views])]
    split[views], label[views] = split[original_of], label[original_of]


def _class_name(prepared: Any, index: int) -> str:
    """The user's name of class `index` (its index as text when the labels were integers)."""
    return prepared.class_name(index) if hasattr(prepared, "class_name") else str(int(index))


def _relabel_prepared(prepared: Any, reader: Any, split: np.ndarray, label: np.ndarray) -> Any:
    """The PreparedData with each cache row's new split and label written at its sample id."""
    from pipeline.cache.open import check_alignment

    cache_row = check_alignment(  # (N,) cache row of each dataset row
        reader, prepared.sample_id, exact=True, show_ids=getattr(prepared, "ids_of", None)
    )
    return replace(
        prepared,
        split=split[cache_row].astype(prepared.split.dtype),
        label=label[cache_row].astype(prepared.label.dtype),
    )


def held_back_labels(prepared_dir: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(sample_id, label) of `prepared_dir/teacher_train` (the labels `prepare` held back), or
    None when prepare held nothing back."""
    from pathlib import Path

    from pipeline.data.prepare import TEACHER_TRAIN_DIR
    from pipeline.data.prepared import load_prepared

    directory = Path(prepared_dir) / TEACHER_TRAIN_DIR
    if not directory.exists():
        return None
    held = load_prepared(directory)
    return held.sample_id, held.label
