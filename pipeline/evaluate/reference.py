"""The teacher's reference row: its test metrics from the cached logits, its size from its ONNX file.

Its parameter count is `pipeline.teacher.session.onnx_parameter_count(data/teacher/model.onnx)`.
Computed with the same functions and split as the students, so the leaderboard compares like with
like (the cache report's own figures are not reused: they may cover other splits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.evaluate.evaluation import EvaluationError
from pipeline.evaluate.metrics import CalibrationBins, calibration_bins, classification_metrics


def teacher_split_logits(
    cache: Any, split: str = "test", rows_per_read: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (n, C) float32, labels (n,) int64) of the labelled cache rows of `split`."""
    rows = np.flatnonzero(
        (np.asarray(cache.split) == SPLITS.index(split)) & (np.asarray(cache.label) != UNLABELLED)
    )
    if len(rows) == 0:
        raise EvaluationError(
            f"the cache has no labelled rows in split {split!r}; the teacher row needs labels"
        )
    logits = np.concatenate(
        [cache.batch(rows[s : s + rows_per_read]).logits.numpy() for s in range(0, len(rows), rows_per_read)]
    )
    return logits, np.asarray(cache.label)[rows]


def teacher_report(
    cache: Any,
    split: str = "test",
    ece_bins: int = 15,
    top_k: int = 5,
    num_parameters: int | None = None,
    latency_ms: Mapping[str, float | str] | None = None,
) -> tuple[dict[str, Any], CalibrationBins]:
    """The teacher as a metrics.json-shaped payload (std 0, agreement 1, KL 0) and its calibration bins."""
    logits, labels = teacher_split_logits(cache, split)
    metrics = classification_metrics(logits, labels, ece_bins, top_k)
    metrics.update({"agreement": 1.0, "root_agreement": 1.0, "kl_T1": 0.0})
    report: dict[str, Any] = {
        "model": "teacher (reference)",
        "recipe": "teacher",
        "params": num_parameters,
        "seeds": 1,
        "split": split,
        "labelled_rows": int(len(labels)),
        **{name: {"mean": value, "std": 0.0} for name, value in metrics.items()},
    }
    if latency_ms is not None:
        report["latency_ms"] = {k.removeprefix("latency_ms_"): v for k, v in latency_ms.items()}
    return report, calibration_bins(logits, labels, ece_bins)
