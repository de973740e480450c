"""The leaderboard's embedding columns (issue 18): how close each student's sentence embedding is to
the teacher's and how much faster it encodes, read off the metrics.json that evaluate writes with
`evaluate.embedding` (pipeline/evaluate/embedding_eval.py). Empty for every other student."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EMBEDDING_SPREAD = ("mean_cosine", "knn_agreement", "similarity_spearman")
"""Embedding metrics reported as mean ± std over seeds."""

ENCODE_BATCHES = (1, 64)
"""The batch sizes whose encode speed the leaderboard shows (evaluate.embedding.encode_batch_sizes)."""

EMBEDDING_COLUMNS = (
    *(f"{m}_{s}" for m in EMBEDDING_SPREAD for s in ("mean", "std")),
    *(f"encode_{who}_b{b}" for b in ENCODE_BATCHES for who in ("student", "teacher")),
    *(f"encode_speedup_b{b}" for b in ENCODE_BATCHES),
)
"""CSV columns, after the classification ones: encode_<student|teacher>_b<B> in sentences/s (one
thread, both measured in the same run), encode_speedup_b<B> their ratio."""

EMBEDDING_MARKDOWN = (
    ("mean_cosine", "cos to teacher"),
    ("knn_agreement", "kNN agr."),
    ("similarity_spearman", "sim. Spearman"),
    *((f"encode_b{b}", f"sent/s b{b}: student / teacher (×)") for b in ENCODE_BATCHES),
)
"""Markdown columns (key, header), shown only when some row has an embedding metric."""

EMBEDDING_NOTE = (
    " Embedding (a sentence encoder's students): cos to teacher = mean cosine of the student's and "
    "the teacher's embedding of each test sentence; kNN agr. = the mean share of each sentence's "
    "k nearest neighbours (by cosine, k in metrics.json, 10 by default) both models agree on; sim. "
    "Spearman = rank correlation of all pairwise similarities; sent/s = sentences encoded per second "
    "by the exported student and by the exported teacher (ONNX Runtime CPU, one thread, batch 1 and "
    "64, measured in the same run), × = their ratio (docs/evaluation.md)."
)


def embedding_cells(report: Mapping[str, Any]) -> dict[str, Any]:
    """The EMBEDDING_COLUMNS of one metrics.json payload (None where not measured)."""
    row: dict[str, Any] = dict.fromkeys(EMBEDDING_COLUMNS)
    for metric in EMBEDDING_SPREAD:
        value = report.get(metric)
        if isinstance(value, Mapping):
            row[f"{metric}_mean"], row[f"{metric}_std"] = value.get("mean"), value.get("std")
    encode = (report.get("embedding") or {}).get("encode") or {}
    for b in ENCODE_BATCHES:
        for who in ("student", "teacher"):
            row[f"encode_{who}_b{b}"] = (encode.get(who) or {}).get(f"sentences_per_s_b{b}")
        row[f"encode_speedup_b{b}"] = encode.get(f"speedup_b{b}")
    return row


def has_embedding(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any row has an embedding metric (then the Markdown table shows those columns)."""
    return any(row.get(f"{m}_mean") is not None for row in rows for m in EMBEDDING_SPREAD)


def embedding_cell(row: Mapping[str, Any], key: str) -> str:
    """The Markdown text of one embedding column: metrics to 4 decimals; encode speed as
    `812 / 47 (17.3×)` (student and teacher sentences/s, their ratio)."""
    if key in EMBEDDING_SPREAD:
        value = row.get(f"{key}_mean")
        return "-" if value is None else f"{value:.4f}"
    batch = key.removeprefix("encode_")
    student, teacher = row.get(f"encode_student_{batch}"), row.get(f"encode_teacher_{batch}")
    speedup = row.get(f"encode_speedup_{batch}")
    if speedup is None:
        return "-"
    if student is None or teacher is None:
        return f"{speedup:.2f}×"
    return f"{student:,.0f} / {teacher:,.0f} ({speedup:.1f}×)"


def embedding_plot(
    students: Sequence[Mapping[str, Any]], reference: tuple[str, float, Any] | None, path: str | Path
) -> Path | None:
    """`plots/embedding_vs_params.png` (kNN agreement and mean cosine against parameters, the
    teacher's size as a line) when some student row has embedding metrics; else nothing (None)."""
    if not has_embedding(students):
        return None
    from pipeline.evaluate.plots import quality_vs_params

    return quality_vs_params(
        [r["model"] for r in students],
        [r["params"] for r in students],
        {m: [r[f"{m}_mean"] for r in students] for m in ("knn_agreement", "mean_cosine")},
        path,
        None if reference is None else (reference[0], reference[1]),
    )
