"""Does the dataset in use match the cache? Every cache row found by sample id, with its split and label.

The cache holds teacher outputs, the prepared dataset the inputs; they are joined by sample id.
Ids on one side only, or rows whose split or label differ, mean the cache was built on other
data: `CacheAlignmentError` names them (the one error for a dataset that does not match its cache).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.cache.reader import CacheReader
from pipeline.errors import DistilleryError


class CacheAlignmentError(DistilleryError):
    """The dataset in use does not match the cache's rows (ids, splits, labels or class count)."""


def _list(ids: list, total: int, limit: int = 10) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (" ..." if total > limit else "")


def check_alignment(
    reader: CacheReader,
    sample_ids: np.ndarray,
    exact: bool = False,
    split: np.ndarray | None = None,
    label: np.ndarray | None = None,
    show_ids: Callable | None = None,
) -> np.ndarray:
    """(n,) int64 cache row of each id in `sample_ids` ((n,) int64), or CacheAlignmentError.

    Ids absent from the cache are always an error; with `exact`, cache rows whose id is not in
    `sample_ids` are one too (the dataset and the cache must hold the same rows). split / label:
    the dataset's (n,) split codes and labels, when given, must equal the cache's on every row.
    `show_ids` maps int64 keys to the ids messages show (the user's string ids: `PreparedData.ids_of`).
    """
    show = show_ids or (lambda keys: np.asarray(keys).tolist())
    cache_ids = np.asarray(reader.sample_id, np.int64)
    wanted = np.asarray(sample_ids, np.int64)
    order = np.argsort(cache_ids, kind="stable")
    sorted_ids = cache_ids[order]
    position = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[position] == wanted) if len(sorted_ids) else np.zeros(len(wanted), bool)
    problems = []
    if not found.all():
        missing = np.unique(wanted[~found])
        problems.append(
            f"{len(missing)} sample id(s) are not in the cache: {_list(show(missing[:10]), len(missing))}"
        )
    if exact:
        extra = np.setdiff1d(cache_ids, wanted)
        if len(extra):
            problems.append(
                f"{len(extra)} cache row(s) have ids the dataset lacks: {_list(show(extra[:10]), len(extra))}"
            )
    if problems:
        raise CacheAlignmentError(
            "the dataset does not match the cache: "
            + "; ".join(problems)
            + "; re-run `dvc repro cache` for this dataset"
        )
    rows = order[position].astype(np.int64)
    for name, cached, given in (("split", reader.split, split), ("label", reader.label, label)):
        if given is None:
            continue
        differ = np.flatnonzero(np.asarray(cached)[rows] != np.asarray(given))
        if len(differ):
            ids = np.sort(wanted[differ])
            raise CacheAlignmentError(
                f"{len(differ)} cache rows disagree with the prepared dataset on {name}, sample ids "
                f"{_list(show(ids[:10]), len(ids))}; the cache was built on other data: "
                "re-run `dvc repro cache`"
            )
    return rows
