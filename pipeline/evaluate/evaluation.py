"""Evaluate one trained model (all its seeds) on a split: metrics per seed, mean ± std, calibration.

The split is the prepared data's rows joined by `sample_id` to the teacher's cached logits
(`EvalSplit`); the model's own logits come from torch (`predict_logits`). Latency is measured
separately on the exported ONNX file (pipeline/evaluate/latency.py), since that is what is deployed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.errors import DistilleryError
from pipeline.evaluate.metrics import (
    CalibrationBins,
    calibration_bins,
    classification_metrics,
    teacher_metrics,
)
from pipeline.students.inputs import PreparedRows, call_student, named_batches
from pipeline.teacher.inputs import DEFAULT_FIELD


class EvaluationError(DistilleryError):
    """The data to evaluate on is unusable: ids that do not join, no labelled rows, wrong shapes."""


@dataclass(frozen=True)
class EvalSplit:
    """One split, aligned by row: sample_id (N,) int64, inputs (N, *input_shape) float32 (an array,
    or for data on disk a `FieldView` reading the rows sliced from it; for data of named fields, a
    PreparedRows that students of named inputs read in padded batches),
    labels (N,) int64 (-1 = unlabelled), teacher_logits (N, C) float32 (None when the teacher has no
    logits: the teacher metrics are left out); class_names: the user's class names by index (None:
    the labels were integers, shown as "0", "1", ...); teacher_features: tap -> (N, *tap_shape)
    float32, the cached taps `join_split` was asked for (the embedding metrics' reference)."""

    name: str
    sample_id: np.ndarray
    inputs: np.ndarray | PreparedRows
    labels: np.ndarray
    teacher_logits: np.ndarray | None
    class_names: tuple[str, ...] | None = None
    teacher_features: Mapping[str, np.ndarray] = field(default_factory=dict)

    def class_name(self, index: int) -> str:
        """The user's name of class `index` ("3" when the labels were integers)."""
        return self.class_names[index] if self.class_names else str(int(index))

    @property
    def labelled(self) -> np.ndarray:
        """(N,) bool, rows that have a label."""
        return self.labels != UNLABELLED

    def labelled_inputs(self):
        """The inputs of the labelled rows, as `inputs` holds them (a view stays a view)."""
        if hasattr(self.inputs, "at"):
            return self.inputs.at(np.flatnonzero(self.labelled))
        return self.inputs[self.labelled]


def join_split(
    prepared: Any, cache: Any, split: str = "test", rows_per_read: int = 4096, features: Sequence[str] = ()
) -> EvalSplit:
    """The rows of `split` in the cache joined by sample_id to the prepared data (inputs, labels),
    with the cached teacher taps named in `features` (EvaluationError naming the taps there are).

    prepared: a `pipeline.data.prepared.PreparedData` or a `PreparedDataset` (read per batch);
    cache: a `CacheReader`. Every cached row
    of the split must exist in the prepared data, or EvaluationError names the missing ids.
    """
    if split not in SPLITS:
        raise EvaluationError(f"evaluate.split: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    rows = np.flatnonzero(np.asarray(cache.split) == SPLITS.index(split)).astype(np.int64)
    if len(rows) == 0:
        raise EvaluationError(f"the cache has no rows in split {split!r}; re-run `dvc repro prepare cache`")
    cached_ids = np.asarray(cache.sample_id)[rows]
    teacher_logits = None
    if getattr(cache.schema, "logits", "row") == "row":  # per token or none: no per-row teacher metrics
        teacher_logits = np.concatenate(
            [
                cache.batch(rows[start : start + rows_per_read]).logits.numpy()
                for start in range(0, len(rows), rows_per_read)
            ]
        ).astype(np.float32, copy=False)
    teacher_features = _cached_features(cache, rows, features, rows_per_read)
    order = np.argsort(prepared.sample_id, kind="stable")
    sorted_ids = prepared.sample_id[order]
    position = np.clip(np.searchsorted(sorted_ids, cached_ids), 0, len(sorted_ids) - 1)
    missing = sorted_ids[position] != cached_ids
    if missing.any():
        raise EvaluationError(
            f"{int(missing.sum())} cached {split} rows have sample ids absent from the prepared data "
            f"(first: {', '.join(map(str, _shown(prepared, cached_ids[missing][:5])))}); the cache was "
            "built on other data, "
            "re-run `dvc repro cache`"
        )
    prepared_rows = order[position]
    single = getattr(prepared, "input_field", DEFAULT_FIELD) is not None and hasattr(prepared, "inputs")
    inputs = PreparedRows(prepared, prepared_rows)
    if single:  # a dataset on disk: a view reading the rows asked for (bounded memory), else an array
        view = prepared.inputs
        inputs = view.at(prepared_rows) if hasattr(view, "at") else view[prepared_rows]
    return EvalSplit(
        split,
        cached_ids,
        inputs,
        prepared.label[prepared_rows],
        teacher_logits,
        getattr(prepared, "class_names", None),
        teacher_features,
    )


def _cached_features(cache: Any, rows: np.ndarray, names: Sequence[str], rows_per_read: int) -> dict:
    """tap -> (len(rows), *tap_shape) float32 of the cached per-row taps `names`."""
    there = dict(getattr(cache.schema, "feature_shapes", {}) or {})
    missing = [name for name in names if name not in there]
    if missing:
        raise EvaluationError(
            f"the cache has no per-row tap {', '.join(map(repr, missing))} (it has {sorted(there)}); set "
            "evaluate.embedding.teacher_tap to one of them"
        )
    if not names:
        return {}
    parts = [cache.batch(rows[start : start + rows_per_read]) for start in range(0, len(rows), rows_per_read)]
    return {
        name: np.concatenate([part.features[name].numpy() for part in parts]).astype(np.float32, copy=False)
        for name in names
    }


def _shown(prepared: Any, keys: np.ndarray) -> list:
    """The ids a message shows for int64 keys: the user's (string) ids where the data has them."""
    return prepared.ids_of(keys) if hasattr(prepared, "ids_of") else keys.tolist()


@torch.no_grad()
def predict_logits(module: torch.nn.Module, inputs: Any, batch_size: int = 512) -> np.ndarray:
    """(N, *input_shape) float32 -> (N, C) float32 logits of a StudentOutput-returning module, in eval
    mode; for a student of named inputs, `inputs` is a PreparedRows, padded per batch as in training."""
    module.eval()
    chunks = [
        call_student(module, batch).logits.float().cpu().numpy()
        for batch in named_batches(module, inputs, batch_size)
    ]
    return np.concatenate(chunks)


@dataclass(frozen=True)
class ModelEvaluation:
    """per_seed: "seed_<k>" -> metric -> value; bins: "seed_<k>" -> calibration bins;
    per_class: "seed_<k>" -> class name -> accuracy on that class's labelled rows."""

    per_seed: dict[str, dict[str, float]]
    bins: dict[str, CalibrationBins] = field(default_factory=dict)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    def per_class_summary(self) -> dict[str, dict[str, float]]:
        """class name -> {"mean", "std"} of its accuracy over seeds (sample std; 0.0 for one seed),
        in class-index order."""
        result = {}
        for name in next(iter(self.per_class.values()), {}):
            values = np.array([seed[name] for seed in self.per_class.values()], dtype=np.float64)
            result[name] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            }
        return result

    def summary(self) -> dict[str, dict[str, float]]:
        """metric -> {"mean", "std"} over seeds (sample std, ddof=1; 0.0 for one seed)."""
        names = next(iter(self.per_seed.values())).keys()
        result = {}
        for name in names:
            values = np.array([seed[name] for seed in self.per_seed.values()], dtype=np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            result[name] = {"mean": float(values.mean()), "std": std}
        return result


def evaluate_seed(
    logits: np.ndarray,
    data: EvalSplit,
    temperature: float | None = None,
    ece_bins: int = 15,
    top_k: int = 5,
) -> tuple[dict[str, float], CalibrationBins]:
    """Metrics of one seed's logits (N, C) on `data`: label metrics on its labelled rows, teacher
    metrics (agreement, KL) on all rows. Returns (metrics, calibration bins); ({}, empty bins) for a
    split with neither labels nor teacher logits (a sentence encoder's: its embedding block scores it)."""
    labelled = data.labelled
    if not labelled.any() and data.teacher_logits is None:  # sentences of an encoder: nothing to score
        empty = np.full(ece_bins, np.nan)
        return {}, CalibrationBins(
            np.linspace(0.0, 1.0, ece_bins + 1), np.zeros(ece_bins, np.int64), empty, empty
        )
    if not labelled.any():
        raise EvaluationError(f"split {data.name!r} has no labelled rows; accuracy, NLL and ECE need labels")
    if data.teacher_logits is None:  # a teacher without logits: the label metrics only
        metrics = classification_metrics(logits[labelled], data.labels[labelled], ece_bins, top_k)
        return metrics, calibration_bins(logits[labelled], data.labels[labelled], ece_bins)
    if logits.shape != data.teacher_logits.shape:
        raise EvaluationError(
            f"model logits {logits.shape} and teacher logits {data.teacher_logits.shape} differ; "
            "was the student trained on this dataset's classes?"
        )
    metrics = classification_metrics(logits[labelled], data.labels[labelled], ece_bins, top_k)
    metrics.update(teacher_metrics(logits, data.teacher_logits, temperature))
    return metrics, calibration_bins(logits[labelled], data.labels[labelled], ece_bins)


def per_class_accuracy(logits: np.ndarray, data: EvalSplit) -> dict[str, float]:
    """Class name -> fraction of its labelled rows of `data` whose argmax of `logits` (N, C) is the
    label, for every class that has labelled rows, in class-index order."""
    labelled = data.labelled
    predicted, labels = logits[labelled].argmax(axis=1), data.labels[labelled]
    return {
        data.class_name(c): float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels).tolist()
    }


def evaluate_model(
    modules: Mapping[str, torch.nn.Module] | Sequence[tuple[str, torch.nn.Module]],
    data: EvalSplit,
    temperature: float | None = None,
    ece_bins: int = 15,
    top_k: int = 5,
    batch_size: int = 512,
) -> ModelEvaluation:
    """Evaluate every seed ("seed_<k>" -> module returning StudentOutput) of one model on `data`."""
    items = modules.items() if isinstance(modules, Mapping) else modules
    per_seed, bins, per_class = {}, {}, {}
    for seed_name, module in items:
        logits = predict_logits(module, data.inputs, batch_size)
        per_seed[seed_name], bins[seed_name] = evaluate_seed(logits, data, temperature, ece_bins, top_k)
        per_class[seed_name] = per_class_accuracy(logits, data)
    if not per_seed:
        raise EvaluationError("no seeds to evaluate")
    return ModelEvaluation(per_seed, bins, per_class)


def metrics_report(
    model: str,
    evaluation: ModelEvaluation,
    data: EvalSplit,
    num_parameters: int,
    recipe: str = "-",
    temperature: float | None = None,
    latency_ms: Mapping[str, float | str] | None = None,
    int8: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metrics.json payload: scalars first (what `dvc metrics show` puts in columns), then
    "metric": {"mean", "std"}, `per_class` (class name -> accuracy {"mean", "std"}), latency, the
    int8 report of the export, and every seed's values."""
    report: dict[str, Any] = {
        "model": model,
        "recipe": recipe,
        "params": int(num_parameters),
        "seeds": len(evaluation.per_seed),
        "split": data.name,
        "rows": int(len(data.labels)),
        "labelled_rows": int(data.labelled.sum()),
    }
    if temperature is not None:
        report["temperature"] = float(temperature)
    report.update(evaluation.summary())
    if evaluation.per_class:
        report["per_class"] = evaluation.per_class_summary()
    if latency_ms is not None:
        report["latency_ms"] = {k.removeprefix("latency_ms_"): v for k, v in latency_ms.items()}
    if int8 is not None:
        report["int8"] = dict(int8)
    report["per_seed"] = evaluation.per_seed
    return report


def calibration_tsv(bins_by_label: Mapping[str, CalibrationBins]) -> str:
    """Calibration bins as TSV (model_or_seed, bin_lower, bin_upper, count, accuracy, confidence);
    empty bins have empty accuracy and confidence cells. Plot data for DVC and the leaderboard."""
    lines = ["label\tbin_lower\tbin_upper\tcount\taccuracy\tconfidence"]
    for label, bins in bins_by_label.items():
        for b in range(len(bins.count)):
            filled = bins.count[b] > 0
            lines.append(
                "\t".join(
                    [
                        label,
                        f"{bins.edges[b]:.6f}",
                        f"{bins.edges[b + 1]:.6f}",
                        str(int(bins.count[b])),
                        f"{bins.accuracy[b]:.6f}" if filled else "",
                        f"{bins.confidence[b]:.6f}" if filled else "",
                    ]
                )
            )
    return "\n".join(lines) + "\n"


def read_calibration_tsv(text: str) -> dict[str, CalibrationBins]:
    """The inverse of `calibration_tsv`."""
    rows: dict[str, list[list[str]]] = {}
    for line in text.rstrip("\n").splitlines()[1:]:
        label, *cells = line.split("\t")
        rows.setdefault(label, []).append(cells)
    result = {}
    for label, cells in rows.items():
        number = lambda s: float(s) if s else np.nan  # noqa: E731
        edges = np.array([float(c[0]) for c in cells] + [float(cells[-1][1])])
        result[label] = CalibrationBins(
            edges,
            np.array([int(c[2]) for c in cells]),
            np.array([number(c[3]) for c in cells]),
            np.array([number(c[4]) for c in cells]),
        )
    return result
