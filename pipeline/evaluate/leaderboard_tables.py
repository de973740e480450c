"""The leaderboard's rows as files: Markdown (rounded, as a person reads them), CSV (raw numbers, mean and
std in separate columns, written by polars) and the DVC metrics JSON (`dvc metrics show`). The rows
come from `pipeline.evaluate.leaderboard.leaderboard_rows`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.evaluate import embedding_columns, lm_columns
from pipeline.io import atomic_write_text

SPREAD_METRICS = ("accuracy", "top5", "nll", "ece", "agreement", "root_agreement", "kl_T1", "kl_T")
"""Metrics reported as mean ± std over seeds."""

LATENCY_KEYS = ("cpu_b1", "cpu_b64", "cuda_b1", "cuda_b64")

BIAS_COLUMNS = (
    "bias_corrected_accuracy_mean",
    "bias_corrected_accuracy_std",
    "omitted_class_accuracy_before",
    "omitted_class_accuracy_after",
)
"""Hinton's omitted-class correction (pipeline/evaluate/bias_correction.py): overall test accuracy after
it, and the omitted classes' mean test accuracy before and after; empty when it did not run."""

CSV_COLUMNS = (
    "model",
    "recipe",
    "teacher",
    "params",
    "seeds",
    "temperature",
    *(f"{m}_{s}" for m in SPREAD_METRICS for s in ("mean", "std")),
    *(f"latency_ms_{k}" for k in LATENCY_KEYS),
    "int8_accuracy_change",
    "weakest_class",
    "weakest_class_accuracy",
    *BIAS_COLUMNS,
    *embedding_columns.EMBEDDING_COLUMNS,
    *lm_columns.LM_COLUMNS,
)

MARKDOWN_COLUMNS = (
    ("model", "student"),
    ("recipe", "family / recipe"),
    ("params", "params"),
    ("accuracy", "acc (mean ± std)"),
    ("top5", "top-5"),
    ("nll", "NLL"),
    ("ece", "ECE"),
    ("teacher", "learned from"),
    ("agreement", "agreement"),
    ("root_agreement", "root agr."),
    ("kl_T1", "KL T=1"),
    ("kl_T", "KL T"),
    ("latency_ms_cpu_b1", "CPU ms b1"),
    ("latency_ms_cpu_b64", "CPU ms b64"),
    ("latency_ms_cuda_b1", "CUDA ms b1"),
    ("int8_accuracy_change", "int8 Δacc"),
    ("weakest_class", "weakest class"),
)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV text with the CSV_COLUMNS header (empty cell = not measured), written by polars."""
    frame = (
        pl.DataFrame(
            [{k: row.get(k) for k in CSV_COLUMNS} for row in rows],
            schema=list(CSV_COLUMNS),
            infer_schema_length=None,
            orient="row",
        )
        if rows
        else pl.DataFrame(schema=list(CSV_COLUMNS))
    )
    return frame.write_csv(line_terminator="\n")


def _cell(row: Mapping[str, Any], key: str) -> str:
    if key in dict(embedding_columns.EMBEDDING_MARKDOWN):
        return embedding_columns.embedding_cell(row, key)
    if key in dict(lm_columns.LM_MARKDOWN):
        return lm_columns.lm_cell(row, key)
    if key in SPREAD_METRICS:
        mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
        if mean is None:
            return "-"
        return (
            f"{mean:.4f} ± {std:.4f}" if key == "accuracy" and (row.get("seeds") or 1) > 1 else f"{mean:.4f}"
        )
    value = row.get(key)
    if value is None:
        return "-"
    if key == "params":
        return f"{int(value):,}"
    if key == "int8_accuracy_change":
        return f"{value:+.4f}"
    if key == "weakest_class":
        return f"{str(value).replace('|', chr(92) + '|')} {row['weakest_class_accuracy']:.3f}"
    if key in BIAS_COLUMNS:
        return f"{value:.4f}"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def to_markdown(rows: list[dict[str, Any]], title: str = "Leaderboard") -> str:
    """The rows as a Markdown table under a heading, with a line on how to read it."""
    columns = MARKDOWN_COLUMNS
    if any(row.get("bias_corrected_accuracy_mean") is not None for row in rows):  # only then: no empty column
        columns += (
            ("bias_corrected_accuracy_mean", "acc, bias fixed"),
            ("omitted_class_accuracy_before", "omitted cls acc"),
            ("omitted_class_accuracy_after", "… bias fixed"),
        )
    embedding = embedding_columns.has_embedding(rows)
    if embedding:
        columns += embedding_columns.EMBEDDING_MARKDOWN
    lm = lm_columns.has_lm(rows)
    lm_only = lm and all(row.get("accuracy_mean") is None for row in rows)  # the LM scenario's board
    if lm:
        columns = lm_columns.LM_ONLY_MARKDOWN if lm_only else columns + lm_columns.LM_MARKDOWN
    header = "| " + " | ".join(label for _, label in columns) + " |"
    rule = (
        "|"
        + "|".join(" --- " if key in ("model", "recipe", "teacher") else " ---: " for key, _ in columns)
        + "|"
    )
    body = ["| " + " | ".join(_cell(row, key) for key, _ in columns) + " |" for row in rows]
    note = (
        "Test split. acc: mean ± sample std over seeds (other metrics: mean). NLL in nats; ECE with 15 "
        "bins; learned from: the root teacher, the student whose cache it learned from (a chain), or labels; "
        "agreement: same argmax as the teacher it learned from; root agr.: as the root teacher; "
        "KL(teacher it learned from || student) in nats without T²; weakest class: the class with the "
        "lowest mean accuracy, by the dataset's class names; latency: "
        "median ONNX Runtime ms per batch, one intra-op thread; n/a = provider not available here. "
        "See docs/evaluation.md."
    )
    if embedding:
        note += embedding_columns.EMBEDDING_NOTE
    if lm:
        note = ("Test split." if lm_only else note) + lm_columns.LM_NOTE
    if any(key == "bias_corrected_accuracy_mean" for key, _ in columns):
        note += (
            " Bias fixed: Hinton's correction of the classes left out of the transfer set (output bias "
            "chosen on val); omitted cls acc: their mean test accuracy, before and after (docs/scenario.md)."
        )
    return "\n".join([f"# {title}", "", note, "", header, rule, *body, ""])


def metrics_by_model(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Model name -> its numeric columns (the CSV's, unmeasured ones left out): the DVC metrics file
    `dvc metrics show` / `dvc metrics diff` read, one entry per model of the leaderboard."""
    return {
        str(row["model"]): {
            key: row[key]
            for key in CSV_COLUMNS
            if isinstance(row.get(key), (int, float))
            and not isinstance(row.get(key), bool)
            and math.isfinite(row[key])  # a NaN is not JSON
        }
        for row in rows
    }


def write_leaderboard(rows: list[dict[str, Any]], directory: str | Path) -> tuple[Path, Path, Path]:
    """Write `leaderboard.md`, `leaderboard.csv` and `metrics.json` (`metrics_by_model`) into
    `directory`, each atomically."""
    directory = Path(directory)
    return (
        atomic_write_text(directory / "leaderboard.md", to_markdown(rows)),
        atomic_write_text(directory / "leaderboard.csv", to_csv(rows)),
        atomic_write_text(directory / "metrics.json", json.dumps(metrics_by_model(rows), indent=1) + "\n"),
    )
