"""The cache report of a view cache (`cache.views`): the usual figures on the originals, plus `views`.

A view cache holds every sample's original row (view -1) and K augmented views of the training
samples. Teacher accuracy, ECE, entropy, top-5 mass and the sparse form's error describe the
originals only, so they read the same as the single-view cache's (whose rows the originals are);
`rows` and `rows_per_split` count originals, `bytes_per_sample` is the store's bytes per original
(its views included). The stored dtype's KL error uses every reference row (originals and views:
it is a property of the stored form). The `views` block says what the augmentation does to the
teacher:

- `count` (K), `rows` (view rows), `bytes_per_row` (store bytes over every row);
- `teacher_accuracy`: teacher top-1 on the views against their sample's label, over the views whose
  label is a plain class (a labelled sample, not a mixup/cutmix view with lam < 1), and
  `labelled_views`, how many those are (accuracy null when none);
- `entropy_nats`: mean entropy of softmax(z / T) over the views at each T;
- `top1_agrees_with_original`: fraction of views whose teacher top-1 equals the teacher top-1 of
  their sample's original row (label-free: how far the augmentation moves the teacher).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.cache.batch import UNLABELLED
from pipeline.cache.report import entropy_nats, rowwise
from pipeline.cache.views import ORIGINAL_VIEW, PartnerIndex


class RowSubset:
    """The rows `rows` of a cache reader as a reader of their own (logits, labels, splits, sparse form
    gathered into RAM); `path` is the store whose bytes the report counts (None: count none)."""

    def __init__(self, reader: Any, rows: np.ndarray, path: Any = None) -> None:
        rows = np.asarray(rows, np.int64)
        self.logits = np.asarray(reader.logits[rows])
        self.label, self.split = np.asarray(reader.label)[rows], np.asarray(reader.split)[rows]
        sparse = getattr(reader, "sparse", None)
        self.sparse = None if sparse is None else tuple(np.asarray(part)[rows] for part in sparse)
        self.path = path


def view_cache_report(
    reader: Any,
    report_of: Callable[..., dict[str, Any]],
    reference_rows: np.ndarray | None,
    reference_logits: np.ndarray | None,
    temperatures,
) -> dict[str, Any]:
    """The report of a view cache (module docstring); `report_of` is `cache_report` (the figures of
    a reader without views). reference_rows (n,) int64 cache rows, reference_logits (n, C) float32."""
    view = np.asarray(reader.view)
    original_rows = np.flatnonzero(view == ORIGINAL_VIEW)
    view_rows = np.flatnonzero(view != ORIGINAL_VIEW)
    report = report_of(
        RowSubset(reader, original_rows, getattr(reader, "path", None)), None, None, temperatures
    )
    if reference_logits is not None and len(reference_logits):
        rows = np.asarray(reference_rows, np.int64)
        stored = report_of(RowSubset(reader, rows), np.arange(len(rows)), reference_logits, temperatures)
        for key in ("stored_kl_vs_fp32", "stored_kl_goal_p99_nats", "stored_kl_goal_met"):
            report[key] = stored[key]
    report["views"] = views_block(reader, original_rows, view_rows, temperatures)
    if "bytes_per_sample" in report:
        report["views"]["bytes_per_row"] = report["bytes_per_sample"] * len(original_rows) / len(view)
    return report


def views_block(
    reader: Any, original_rows: np.ndarray, view_rows: np.ndarray, temperatures
) -> dict[str, Any]:
    """The `views` block (module docstring) of the view rows `view_rows` (int64 cache rows)."""
    block: dict[str, Any] = {"count": int(reader.schema.view_count), "rows": int(len(view_rows))}
    if not len(view_rows):
        return {**block, "teacher_accuracy": None, "labelled_views": 0, "entropy_nats": None}
    sample_id = np.asarray(reader.sample_id)
    view_logits = np.asarray(reader.logits[view_rows])
    predicted = rowwise(lambda z: z.argmax(axis=1), view_logits)
    original_of = original_rows[PartnerIndex(sample_id[original_rows]).rows(sample_id[view_rows])]
    original_predicted = rowwise(lambda z: z.argmax(axis=1), np.asarray(reader.logits[original_of]))
    label = np.asarray(reader.label)[view_rows]
    plain = (label != UNLABELLED) & (reader.view_records(view_rows)["lam"] >= 1)
    block["teacher_accuracy"] = float((predicted[plain] == label[plain]).mean()) if plain.any() else None
    block["labelled_views"] = int(plain.sum())
    block["entropy_nats"] = {
        f"T{t:g}": float(rowwise(lambda z, t=t: entropy_nats(z, t), view_logits).mean()) for t in temperatures
    }
    block["top1_agrees_with_original"] = float((predicted == original_predicted).mean())
    return block
