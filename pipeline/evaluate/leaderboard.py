"""One table over every evaluated model, the teacher as the reference row: Markdown, CSV and a plot.

Input: the `metrics.json` files the evaluate stage writes (`data/evaluate/**/metrics.json`, see
`pipeline.evaluate.evaluation.metrics_report`), and those of the students the `sweep` stage trained
(`data/sweep/evaluate/**/metrics.json`, ranked as `sweep/<model>`). Rows are sorted by mean test
accuracy, best first, after the teacher. The CSV holds raw numbers (mean and std in separate
columns); the Markdown holds the same rounded, as a person reads them.

The table is a polars DataFrame: sorted there, written to CSV by polars, and read back as rows for the
Markdown and the plots (pipeline/evaluate/leaderboard_tables.py writes the files).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import DistilleryError
from pipeline.evaluate import embedding_columns, lm_columns
from pipeline.evaluate.leaderboard_tables import CSV_COLUMNS, LATENCY_KEYS, SPREAD_METRICS, write_leaderboard
from pipeline.evaluate.report_cells import spread_cells
from pipeline.io import replace_dir


class LeaderboardError(DistilleryError):
    """No metrics to rank, or a metrics file that is not the evaluate stage's."""


SWEEP = "sweep"
"""Name prefix of the models the `sweep` stage trained (`sweep/<model>`): the same student may also
be trained by its own `train@<student>` stage, and both rows are kept."""


def collect_metrics(
    evaluate_root: str | Path, prefix: str = "", required: bool = True
) -> list[dict[str, Any]]:
    """Every model's report from `evaluate_root/<student>/metrics.json` (a cohort's file holds one
    report per member under `members`), parsed, in student order; each model named
    `<prefix>/<model>` when `prefix` is given. LeaderboardError when there are none and `required`."""
    paths = sorted(Path(evaluate_root).glob("*/metrics.json"))
    if not paths and required:
        raise LeaderboardError(
            f"{evaluate_root}: no <student>/metrics.json found; run `dvc repro evaluate` first"
        )
    reports = []
    for path in paths:
        payload = json.loads(path.read_text())
        for report in payload["members"].values() if "members" in payload else [payload]:
            if "model" not in report or not {"accuracy", "knn_agreement", "perplexity"} & set(report):
                raise LeaderboardError(
                    f"{path}: not an evaluate metrics file (needs `model` and `accuracy`, `knn_agreement` "
                    "or `perplexity`)"
                )
            reports.append({**report, "model": f"{prefix}/{report['model']}"} if prefix else report)
    return reports


def first_seed_live_dirs(train_root: str | Path) -> dict[str, Path]:
    """Model name (`<student>` or `<cohort>/<member>`, as the leaderboard names it) -> the dvclive
    directory of its lowest seed, `<model>/seed_<k>/live`, under `train_root`."""
    train_root, found = Path(train_root), {}
    for live in train_root.glob("**/seed_*/live"):
        model = live.parent.parent.relative_to(train_root).as_posix()
        seed = int(live.parent.name.split("_", 1)[1]) if live.parent.name[5:].isdigit() else None
        if seed is not None and (model not in found or seed < found[model][0]):
            found[model] = (seed, live)
    return {model: live for model, (_, live) in sorted(found.items())}


def write_curve_files(
    train_roots: Mapping[str, str | Path], out_dir: str | Path, metrics: Iterable[str]
) -> list[Path]:
    """Copy each model's first-seed dvclive file of each of `metrics` (e.g. "val/acc") to
    `out_dir/<metric>/<model>.tsv`, the directory dvc.yaml declares as plots (x = step = epoch), so
    `dvc plots show` draws every student's curves, a student added later included, without a list
    in dvc.yaml. train_roots: name prefix ("" or "sweep") -> a train root. The directory is built
    aside and moved into place in one rename; returns the files written."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(staging, ignore_errors=True)
    written = []
    for prefix, root in train_roots.items():
        for model, live in first_seed_live_dirs(root).items():
            for metric in metrics:
                source = live / "plots" / "metrics" / f"{metric}.tsv"
                if source.is_file():
                    name = f"{prefix}/{model}" if prefix else model
                    target = staging / metric / f"{name}.tsv"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target)
                    written.append(out_dir / metric / f"{name}.tsv")
    staging.mkdir(parents=True, exist_ok=True)
    replace_dir(staging, out_dir)
    return written


def flatten_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.json payload -> one flat row keyed by CSV_COLUMNS (missing values are None)."""
    row: dict[str, Any] = {column: None for column in CSV_COLUMNS}
    for key in ("model", "recipe", "teacher", "params", "seeds", "temperature"):
        row[key] = report.get(key)
    row.update(spread_cells(report, SPREAD_METRICS))
    for key in LATENCY_KEYS:
        row[f"latency_ms_{key}"] = (report.get("latency_ms") or {}).get(key)
    row["int8_accuracy_change"] = (report.get("int8") or {}).get("accuracy_change")
    per_class = report.get("per_class") or {}
    if per_class:  # the class (by the user's name) with the lowest mean accuracy; ties: the first
        name = min(per_class, key=lambda c: per_class[c]["mean"])
        row["weakest_class"], row["weakest_class_accuracy"] = str(name), per_class[name]["mean"]
    fixed = report.get("bias_correction")
    if fixed:
        row["bias_corrected_accuracy_mean"] = fixed["accuracy_after"]["mean"]
        row["bias_corrected_accuracy_std"] = fixed["accuracy_after"]["std"]
        for when in ("before", "after"):
            row[f"omitted_class_accuracy_{when}"] = sum(
                fixed[f"class_{c}_{when}"]["mean"] for c in fixed["classes"]
            ) / len(fixed["classes"])
    return {**row, **embedding_columns.embedding_cells(report), **lm_columns.lm_cells(report)}


def leaderboard_frame(
    reports: Iterable[Mapping[str, Any]], teacher: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """One row per model (columns CSV_COLUMNS): the teacher first (when given), then the models by
    mean accuracy, best first (ties by mean kNN agreement, then perplexity, then name; unmeasured
    values last)."""
    flat = [flatten_report(r) for r in reports]
    if teacher is not None:
        flat.insert(0, flatten_report(teacher))
    frame = (
        pl.DataFrame(flat, schema=list(CSV_COLUMNS), infer_schema_length=None, orient="row")
        if flat
        else pl.DataFrame(schema=list(CSV_COLUMNS))
    )
    frame = frame.with_row_index("_order").with_columns(
        _is_teacher=pl.lit(teacher is not None) & (pl.col("_order") == 0)
    )
    frame = frame.sort(
        ["_is_teacher", "accuracy_mean", "knn_agreement_mean", "perplexity_mean", "model"],
        descending=[True, True, True, False, False],
        nulls_last=True,
    )
    return frame.drop("_order", "_is_teacher")


def leaderboard_rows(
    reports: Iterable[Mapping[str, Any]], teacher: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Flat rows (dicts keyed by CSV_COLUMNS): the teacher first (when given), then the models by mean
    accuracy, best first."""
    return leaderboard_frame(reports, teacher).to_dicts()


def build_leaderboard(
    evaluate_root: str | Path,
    out_dir: str | Path,
    teacher: Mapping[str, Any] | None = None,
    teacher_bins: Any = None,
    train_root: str | Path | None = None,
    curve_metrics: Iterable[str] = ("val/acc", "val/teacher_agreement", "train/loss"),
    sweep_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Gather `evaluate_root/**/metrics.json` (and `sweep_root/evaluate/**/metrics.json`, the sweep's
    students, as `sweep/<model>`), write leaderboard.md/.csv and the PNGs
    `plots/accuracy_vs_params.png`, `plots/embedding_vs_params.png` (when some student has
    embedding metrics), `plots/reliability.png` (first seed of each model, and the
    teacher's bins when given) and, from the dvclive files under `train_root` (and
    `sweep_root/train`), `plots/curves_<metric>.png` per metric and the first seed's files under
    `curves/<metric>/<model>.tsv` (`write_curve_files`) into `out_dir`; returns the rows."""
    from pipeline.evaluate.evaluation import read_calibration_tsv
    from pipeline.evaluate.plots import accuracy_vs_params, reliability_diagram, training_curves

    out_dir = Path(out_dir)
    evaluate_roots = {"": Path(evaluate_root)}
    train_roots = {} if train_root is None else {"": Path(train_root)}
    if sweep_root is not None:
        evaluate_roots[SWEEP] = Path(sweep_root) / "evaluate"
        train_roots[SWEEP] = Path(sweep_root) / "train"
    reports = [
        report
        for prefix, root in evaluate_roots.items()
        for report in collect_metrics(root, prefix, required=not prefix)
    ]
    rows = leaderboard_rows(reports, teacher)
    write_leaderboard(rows, out_dir)
    students = [r for r in rows if teacher is None or r is not rows[0]]
    reference = None
    if teacher is not None and rows[0]["params"]:
        reference = ("teacher", rows[0]["params"], rows[0]["accuracy_mean"])
    scored = [r for r in students if r["accuracy_mean"] is not None]
    if scored or not lm_columns.has_lm(students):  # an LM board has no accuracy to plot
        accuracy_vs_params(
            [r["model"] for r in scored],
            [r["params"] for r in scored],
            [r["accuracy_mean"] for r in scored],
            [r["accuracy_std"] for r in scored],
            out_dir / "plots" / "accuracy_vs_params.png",
            reference,
        )
    embedding_columns.embedding_plot(students, reference, out_dir / "plots" / "embedding_vs_params.png")
    bins = {"teacher": teacher_bins} if teacher_bins is not None else {}
    for prefix, root in evaluate_roots.items():
        for table in sorted(root.glob("*/calibration.tsv")):
            for label, seed_bins in read_calibration_tsv(table.read_text()).items():
                member = label.rpartition("/")[0]  # "seed_0" or "<member>/seed_0"
                bins.setdefault("/".join(filter(None, (prefix, table.parent.name, member))), seed_bins)
    reliability_diagram(
        bins, out_dir / "plots" / "reliability.png", title="Reliability on the test split (first seed)"
    )
    if train_roots:
        for metric in curve_metrics:
            training_curves(train_roots, metric, out_dir / "plots" / f"curves_{metric.replace('/', '_')}.png")
        write_curve_files(train_roots, out_dir / "curves", curve_metrics)
    return rows
