"""Hinton's bias correction for a class the transfer set lacked (Hinton, Vinyals, Dean 2015, §3).

A student distilled without any example of class c (`prepare.omit_classes: [c]`) still learns c
from the soft labels of the other classes, but its output bias for c is too low. Hinton raises
that bias by a value chosen to fix the class's frequency; here the value is the one of a grid that
maximises accuracy on the validation split (which keeps class c), and the test split is then scored
with and without it. Classes are corrected one after the other (each search sees the earlier
corrections); a tie between grid values goes to the smallest |bias|.

```yaml
evaluate:
  bias_correction:            # null = off; also on by itself when prepare.omit_classes is set
    classes: [3]              # null: prepare.omit_classes; class names work too (string labels)
    grid: {low: -2.0, high: 12.0, step: 0.25}   # logit offsets tried (nats)
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from pipeline.config import StrictModel
from pipeline.errors import DistilleryError


class BiasCorrectionError(DistilleryError, ValueError):
    """A class to correct that is out of range, or a validation split without labelled rows of it."""


class BiasGrid(StrictModel):
    """Offsets `low, low + step, ..., high` added to one class's logit."""

    low: float = -2.0
    high: float = 12.0
    step: float = Field(default=0.25, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> BiasGrid:
        if self.high < self.low:
            raise ValueError(f"grid: high ({self.high}) is below low ({self.low})")
        return self

    def values(self) -> np.ndarray:
        """(G,) float64 offsets, 0 always among them."""
        count = int(np.floor((self.high - self.low) / self.step + 1e-9)) + 1
        grid = self.low + self.step * np.arange(count)
        return np.unique(np.append(grid, 0.0)) if self.low <= 0 <= self.high else grid


class BiasCorrectionParams(StrictModel):
    """`evaluate.bias_correction`: which classes (null = prepare.omit_classes; indices, or names
    when the labels were strings) and the grid."""

    classes: list[int | str] | None = None
    grid: BiasGrid = BiasGrid()


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def search_bias(logits: np.ndarray, labels: np.ndarray, cls: int, grid: Sequence[float]) -> float:
    """The offset of `grid` that, added to column `cls` of `logits` (N, C), maximises the accuracy
    against `labels` (N,) (ties: the smallest |offset|, then the smallest offset)."""
    grid = np.asarray(sorted(grid, key=lambda b: (abs(b), b)), np.float64)
    best, best_accuracy = 0.0, -1.0
    for bias in grid:
        shifted = logits.copy()
        shifted[:, cls] += bias
        accuracy = _accuracy(shifted, labels)
        if accuracy > best_accuracy:
            best, best_accuracy = float(bias), accuracy
    return best


def class_accuracy(logits: np.ndarray, labels: np.ndarray, cls: int) -> float | None:
    """Accuracy on the rows of class `cls` (recall of the class), None when it has no rows."""
    rows = labels == cls
    return _accuracy(logits[rows], labels[rows]) if rows.any() else None


def bias_correction(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    classes: Sequence[int],
    grid: Sequence[float],
) -> dict[str, Any]:
    """Search a bias per class on val, apply it to test and report before/after.

    val_logits, test_logits: (N, C) float; *_labels: (N,) int64, labelled rows only. Returns
    {"biases": {c: offset}, "accuracy_before", "accuracy_after", "class_accuracy_before": {c: ..},
    "class_accuracy_after": {c: ..}} (test split; class keys as strings, JSON-able).
    """
    num_classes = val_logits.shape[1]
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise BiasCorrectionError(f"bias_correction.classes: {bad} out of range for {num_classes} classes")
    absent = [c for c in classes if not np.any(val_labels == c)]
    if absent:
        raise BiasCorrectionError(
            f"bias_correction: the validation split has no labelled rows of class {absent}; "
            "the bias cannot be chosen (omit_classes removes train rows only)"
        )
    val, test = np.array(val_logits, np.float64), np.array(test_logits, np.float64)
    biases = {}
    for cls in classes:
        biases[cls] = search_bias(val, val_labels, cls, grid)
        val[:, cls] += biases[cls]
    corrected = test.copy()
    for cls, bias in biases.items():
        corrected[:, cls] += bias
    return {
        "biases": {str(c): b for c, b in biases.items()},
        "accuracy_before": _accuracy(test, test_labels),
        "accuracy_after": _accuracy(corrected, test_labels),
        "class_accuracy_before": {str(c): class_accuracy(test, test_labels, c) for c in classes},
        "class_accuracy_after": {str(c): class_accuracy(corrected, test_labels, c) for c in classes},
    }


def summarise_seeds(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The metrics-JSON block: `accuracy_before`/`accuracy_after` and per class
    `class_<c>_before`/`class_<c>_after` as {"mean", "std"} over seeds, the biases per seed."""

    def spread(values: list[float]) -> dict[str, float]:
        array = np.asarray(values, np.float64)
        return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}

    first = next(iter(per_seed.values()))
    block: dict[str, Any] = {"classes": [int(c) for c in first["biases"]]}
    for key in ("accuracy_before", "accuracy_after"):
        block[key] = spread([seed[key] for seed in per_seed.values()])
    for cls in first["biases"]:
        for when in ("before", "after"):
            values = [seed[f"class_accuracy_{when}"][cls] for seed in per_seed.values()]
            block[f"class_{cls}_{when}"] = spread([v for v in values if v is not None])
    block["biases"] = {seed: result["biases"] for seed, result in per_seed.items()}
    return block


def correct_model(
    modules: dict[str, Any],
    val: Any,
    test: Any,
    classes: Sequence[int],
    params: BiasCorrectionParams,
    batch_size: int = 512,
) -> dict[str, Any]:
    """`summarise_seeds` of `bias_correction` for every seed ("seed_<k>" -> module) on the val and
    test EvalSplits (pipeline/evaluate/evaluation.py); labelled rows only."""
    from pipeline.evaluate.evaluation import predict_logits

    per_seed = {}
    for seed, module in modules.items():
        val_logits = predict_logits(module, val.labelled_inputs(), batch_size)
        test_logits = predict_logits(module, test.labelled_inputs(), batch_size)
        per_seed[seed] = bias_correction(
            val_logits,
            val.labels[val.labelled],
            test_logits,
            test.labels[test.labelled],
            classes,
            params.grid.values(),
        )
    block = summarise_seeds(per_seed)
    if getattr(test, "class_names", None):
        block["class_names"] = [test.class_name(c) for c in block["classes"]]
    return block


def bias_classes(
    params: BiasCorrectionParams | None,
    omit_classes: Sequence[int | str] | None,
    class_names: Sequence[str] | None = None,
) -> list[int]:
    """The class indices to correct: `params.classes` when given, else `prepare.omit_classes` (the
    correction runs by itself in the omitted-class experiment); empty = no correction. Class names
    are looked up in `class_names` (the prepared data's; ClassNameError for one it lacks)."""
    from pipeline.data.labels import class_indices

    names = tuple(class_names) if class_names else None
    if params is not None and params.classes is not None:
        return class_indices(params.classes, names, "evaluate.bias_correction.classes")
    return class_indices(omit_classes or [], names, "prepare.omit_classes")
