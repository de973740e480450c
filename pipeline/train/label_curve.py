"""Accuracy against the number of labels: the same student recipes trained at several label budgets
from one teacher cache ("one cache, many students"), scored on the test split.

```yaml
label_curve:
  per_class: [5, 15, 50, all]    # labels kept per class (all: every known label)
  students: [ce_baseline, hinton]   # recipes from the `students:` section, same architecture each
  seeds: [0, 1, 2]               # training seeds per point (mean ± std)
  label_seed: 0                  # which rows keep their label: the same for every recipe and seed
  held_back: true                # count the labels prepare.label_budget held back as known
  steps: 2700                    # optimiser steps of every run (null: each recipe's own epochs)
```

Each point applies a student-level label budget (pipeline/train/budget.py) at train time; the cache
and the prepared data stay as they are. With `steps` set, every run makes the same number of
optimiser updates, so a CE-only student on 50 rows is not starved of steps against a KD student
on 1,200 rows. A budget above the labels known clips to them (`clipped` in the outputs).
"""

from __future__ import annotations

import csv
import functools
import io
import math
import shutil
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from pipeline.config import Seed, StrictModel
from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline.names import safe_name
from pipeline.train.budget import TRAIN, UNLABELLED_SPLIT, StudentLabelBudget
from pipeline.train.params import StudentParams


class LabelCurveError(DistilleryError):
    """`label_curve:` names a student that does not exist or is a cohort."""


class LabelCurveParams(StrictModel):
    """The `label_curve:` section (module docstring)."""

    per_class: list[int | Literal["all"]] = Field(default_factory=lambda: [5, 15, 50, "all"], min_length=1)
    students: list[safe_name("student")] = Field(
        default_factory=lambda: ["ce_baseline", "hinton"], min_length=1
    )
    seeds: tuple[Seed, ...] = Field(default=(0, 1, 2), min_length=1)
    label_seed: Seed = 0
    held_back: bool = True
    steps: int | None = Field(default=2700, ge=1)

    @field_validator("per_class")
    @classmethod
    def _positive(cls, values: list) -> list:
        if any(v != "all" and v < 1 for v in values):
            raise ValueError("each budget is a positive number of labels per class, or 'all'")
        return values


def point_params(
    params: StudentParams, per_class: int | None, curve: LabelCurveParams, train_rows: int
) -> StudentParams:
    """The recipe `params` at one budget: its label budget, the curve's seeds and, with
    `curve.steps`, the epochs that give that many optimiser steps on `train_rows` rows."""
    update: dict[str, Any] = {
        "label_budget": StudentLabelBudget(
            per_class=per_class, seed=curve.label_seed, held_back=curve.held_back
        ),
        "seeds": tuple(curve.seeds),
    }
    if curve.steps is not None:
        per_epoch = max(train_rows // params.batch_size, 1)
        update["epochs"] = max(1, math.ceil(curve.steps / per_epoch))
    return params.model_copy(update=update)


def _test_accuracy(out_dir: Path, test) -> list[float]:
    """Test accuracy of every trained seed under `out_dir` (one model, not a cohort)."""
    from pipeline.evaluate.evaluation import predict_logits
    from pipeline.students.trained import list_trained, load_trained_student

    (seed_dirs,) = list_trained(out_dir).values()
    labelled = test.labelled
    return [
        float(
            (
                predict_logits(load_trained_student(d), test.inputs)[labelled].argmax(1)
                == test.labels[labelled]
            ).mean()
        )
        for d in seed_dirs
    ]


def _check_students(curve: LabelCurveParams, students: Mapping[str, StudentParams]) -> None:
    """LabelCurveError when `curve.students` names a student that is missing or a cohort."""
    missing = [name for name in curve.students if name not in students]
    if missing:
        raise LabelCurveError(
            f"label_curve.students: no student named {', '.join(missing)} in `students:`; "
            f"valid: {', '.join(sorted(students))}"
        )
    cohorts = [name for name in curve.students if students[name].cohort is not None]
    if cohorts:
        raise LabelCurveError(f"label_curve.students: {', '.join(cohorts)} is a cohort; name single students")


def curve_runs(curve: LabelCurveParams) -> list[tuple[str, int | str, int]]:
    """Every run of the curve as (student, per_class asked, seed), in the order of the outputs."""
    return [
        (name, asked, seed) for name in curve.students for asked in curve.per_class for seed in curve.seeds
    ]


def train_run(
    run: tuple[str, int | str, int],
    curve: LabelCurveParams,
    base: StudentParams,
    reader: Any,
    prepared: Any,
    test: Any,
    scratch_dir: str | Path,
    label_pool: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = True,
    source: Any = None,
) -> dict[str, Any]:
    """Train one run (student `base` at one budget, one seed) and score it on `test` (an EvalSplit
    of the same cache); returns its row (see `run_label_curve`). A seed trained alone is the same
    model as that seed trained among others: each seed starts from its own generator state.
    source: the PreparedDataset the inputs are read from per batch when `prepared` is its index
    (`pipeline.data.prepared.open_for_training`), else None."""
    from pipeline.train.budget import apply_budget
    from pipeline.train.run import train_from_reader

    name, asked, seed = run
    per_class = None if asked == "all" else int(asked)
    probe = apply_budget(
        reader,
        prepared,
        StudentLabelBudget(per_class=per_class, seed=curve.label_seed, held_back=curve.held_back),
        label_pool,
    )
    candidates = int(np.isin(probe.reader.split, [TRAIN, UNLABELLED_SPLIT]).sum())
    train_rows = probe.report["labelled_rows"] if base.train_rows == "labelled" else candidates
    params = point_params(base, per_class, curve, train_rows).model_copy(update={"seeds": (seed,)})
    tag = f"{name}/per_class_{asked}/seed_{seed}"
    out = Path(scratch_dir) / "models" / tag
    train_from_reader(
        name,
        params,
        reader,
        prepared,
        out,
        Path(scratch_dir) / "runs" / tag,
        progress=progress,
        label_pool=label_pool,
        source=source,
    )
    (accuracy,) = _test_accuracy(out, test)
    return {
        "student": name,
        "per_class": asked,
        "labels": probe.report["labelled_rows"],
        "clipped": bool(probe.report["clipped"]),
        "clipped_classes": [prepared.class_name(c) for c in probe.report["clipped"]],
        "seed": seed,
        "epochs": params.epochs,
        "accuracy": accuracy,
    }


def run_label_curve(
    curve: LabelCurveParams,
    students: Mapping[str, StudentParams],
    reader: Any,
    prepared: Any,
    scratch_dir: str | Path,
    label_pool: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train every (student, budget, seed) of `curve` in this process from `reader` (the one cache)
    joined to `prepared` and return one row per run: `student`, `per_class` (asked; "all"),
    `labels` (kept), `clipped` (bool), `clipped_classes` (the user's names of the classes with fewer
    known labels than asked), `seed`, `epochs`, `accuracy` (test split, labelled rows). prepared: a
    PreparedData, or a PreparedDataset (large data: its inputs read per batch)."""
    from pipeline.evaluate.evaluation import join_split

    _check_students(curve, students)
    test = join_split(prepared, reader, "test")
    # a dataset on disk (PreparedDataset): train on its index, its inputs read per batch
    source, index = (prepared, prepared.to_index()) if hasattr(prepared, "to_index") else (None, prepared)
    return [
        train_run(
            run, curve, students[run[0]], reader, index, test, scratch_dir, label_pool, progress, source
        )
        for run in curve_runs(curve)
    ]


def run_label_curve_on_cluster(
    cluster: Any,
    curve: LabelCurveParams,
    students: Mapping[str, StudentParams],
    prepared_dir: str | Path,
    cache_dir: str | Path,
    scratch_dir: str | Path,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """`run_label_curve` with each run a Dask task on `cluster` (the `cluster:` params, or an open
    Client): the runs are independent, so two cores train two at once. Each worker process opens the
    prepared data and the cache by path once (`_opened`). The rows are those of `run_label_curve`, in
    the same order; LabelCurveError names every run that failed, with the last line of its error."""
    from pipeline.cluster.runner import run_tasks

    _check_students(curve, students)
    prepared_dir, cache_dir, scratch_dir = (
        str(Path(p).resolve()) for p in (prepared_dir, cache_dir, scratch_dir)
    )
    tasks = {
        f"{name}/per_class_{asked}/seed_{seed}": (
            _run_task,
            ((name, asked, seed), curve, students[name], prepared_dir, cache_dir, scratch_dir),
            {},
        )
        for name, asked, seed in curve_runs(curve)
    }
    results = run_tasks(cluster, tasks, progress=progress, desc="label-curve runs")
    failed = {key: result.error for key, result in results.items() if not result.ok}
    if failed:
        raise LabelCurveError(
            f"{len(failed)} of {len(tasks)} label-curve runs failed: "
            + "; ".join(f"{key}: {_last_line(error)}" for key, error in failed.items())
        )
    return [result.value for result in results.values()]


def _last_line(error: str | None) -> str:
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else "no error text"


def _run_task(run, curve, base, prepared_dir: str, cache_dir: str, scratch_dir: str) -> dict[str, Any]:
    """One run on a Dask worker (paths in, its row out)."""
    reader, prepared, test, pool, source = _opened(prepared_dir, cache_dir, curve.held_back)
    return train_run(run, curve, base, reader, prepared, test, scratch_dir, pool, False, source)


@functools.lru_cache(maxsize=1)
def _opened(prepared_dir: str, cache_dir: str, held_back: bool):
    """(cache reader, prepared data, test EvalSplit, held-back label pool, source) by path, kept for
    the worker's next run (all of them read the same cache). Large data: `prepared` is the index and
    `source` the dataset its inputs are read from per batch (`open_for_training`)."""
    from pipeline.data.prepared import open_for_training
    from pipeline.evaluate.evaluation import join_split
    from pipeline.train.budget import held_back_labels
    from pipeline.train.run import open_student_cache

    prepared, source = open_for_training(prepared_dir)
    reader = open_student_cache(cache_dir, prepared.fingerprint)
    pool = held_back_labels(prepared_dir) if held_back else None
    test = join_split(prepared if source is None else source, reader, "test")
    return reader, prepared, test, pool, source


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """student -> labels (str) -> {"mean", "std" (sample, 0 for one seed), "per_class", "clipped",
    "clipped_classes" (class names), "seeds"}."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        point = summary.setdefault(row["student"], {}).setdefault(
            str(row["labels"]),
            {
                "per_class": row["per_class"],
                "clipped": row["clipped"],
                "clipped_classes": row.get("clipped_classes", []),
                "values": [],
            },
        )
        point["values"].append(row["accuracy"])
    for points in summary.values():
        for point in points.values():
            values = point.pop("values")
            point.update(
                mean=statistics.fmean(values),
                std=statistics.stdev(values) if len(values) > 1 else 0.0,
                seeds=len(values),
            )
    return summary


def _csv(header: list[str], lines: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(lines)
    return buffer.getvalue()


def write_curve(rows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write `curve.csv` (every run), `curve.json` (mean ± std per point: DVC metrics), `plot.csv`
    (x = labels, one mean-accuracy column per student: the DVC plot) and `curve.png` into `out_dir`."""
    out_dir = Path(out_dir)
    summary = summarise(rows)
    columns = ["student", "per_class", "labels", "clipped", "seed", "epochs", "accuracy"]
    paths = {
        "csv": atomic_write_text(
            out_dir / "curve.csv", _csv(columns, [[r[c] for c in columns] for r in rows])
        ),
        "json": atomic_write_json(out_dir / "curve.json", summary),
    }
    students = list(summary)
    labels = sorted({int(k) for points in summary.values() for k in points})
    plot_rows = [
        [n, *(round(summary[s][str(n)]["mean"], 6) if str(n) in summary[s] else "" for s in students)]
        for n in labels
    ]
    paths["plot"] = atomic_write_text(out_dir / "plot.csv", _csv(["labels", *students], plot_rows))
    paths["png"] = plot_curve(summary, out_dir / "curve.png")
    return paths


def plot_curve(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path) -> Path:
    """Test accuracy (mean ± std over seeds) against labels kept, one line per student, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for student, points in summary.items():
        labels = sorted(points, key=int)
        mean = np.array([points[n]["mean"] for n in labels])
        std = np.array([points[n]["std"] for n in labels])
        axis.errorbar([int(n) for n in labels], mean, yerr=std, marker="o", capsize=3, label=student)
    axis.set_xscale("log")
    axis.set_xlabel("labelled training rows (log scale)")
    axis.set_ylabel("test accuracy (mean ± std over seeds)")
    axis.set_title("Accuracy against labels, one teacher cache")
    axis.grid(True, alpha=0.3)
    axis.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def clear_scratch(scratch_dir: str | Path) -> None:
    """Remove the curve's trained models and checkpoints (its outputs are the files of `write_curve`)."""
    shutil.rmtree(scratch_dir, ignore_errors=True)
