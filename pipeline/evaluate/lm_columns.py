"""The leaderboard's language-model columns (issue 17): held-out perplexity, top-1 agreement with the
teacher and KL(teacher || student) per token, read off the metrics.json that evaluate writes for a
causal-LM student (pipeline/evaluate/lm_eval.py). Empty for every other student; a board whose rows
all lack accuracy (an LM scenario's) shows only these columns beside the model's description."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.evaluate.lm_eval import LM_SPREAD
from pipeline.evaluate.report_cells import spread_cells

LM_COLUMNS = (
    *(f"{m}_{s}" for m in LM_SPREAD for s in ("mean", "std")),
    "teacher_perplexity",
    "cache_bytes_per_token",
)
"""CSV columns, after the embedding ones."""

LM_MARKDOWN = (
    ("cache_bytes_per_token", "cache B/token"),
    ("perplexity", "perplexity"),
    ("top1_agreement", "top-1 agr."),
    ("kl_to_teacher", "KL to teacher"),
)
"""Markdown columns (key, header), shown only when some row has an LM metric."""

LM_ONLY_MARKDOWN = (
    ("model", "student"),
    ("recipe", "family / recipe"),
    ("params", "params"),
    ("teacher", "learned from"),
    *LM_MARKDOWN,
)
"""The whole Markdown table when no row has a classification accuracy (the LM scenario)."""

LM_NOTE = (
    " Language model (per token, the real targets of every test sentence): perplexity = exp(mean "
    "NLL) on the true next tokens (mean ± sample std over seeds); top-1 agr. = share of positions "
    "where the student's most likely next token is the teacher's; KL to teacher = KL(teacher || "
    "student) at T = 1 in nats; both against the teacher's ONNX logits, whatever form the student's "
    "cache holds; cache B/token = the student's cache on disk (every file, as compressed) per token it "
    "holds (docs/token_distillation.md)."
)


def lm_cells(report: Mapping[str, Any]) -> dict[str, Any]:
    """The LM_COLUMNS of one metrics.json payload (None where not measured)."""
    row: dict[str, Any] = dict.fromkeys(LM_COLUMNS)
    row.update(spread_cells(report, LM_SPREAD))
    row["teacher_perplexity"] = report.get("teacher_perplexity")
    row["cache_bytes_per_token"] = report.get("cache_bytes_per_token")
    return row


def has_lm(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any row has an LM metric (then the Markdown table shows those columns)."""
    return any(row.get(f"{m}_mean") is not None for row in rows for m in LM_SPREAD)


def lm_cell(row: Mapping[str, Any], key: str) -> str:
    """The Markdown text of one LM column: perplexity `12.34 ± 0.05` (± with several seeds), cache
    bytes a token to 1 decimal, the others to 4 decimals."""
    if key == "cache_bytes_per_token":
        value = row.get(key)
        return "-" if value is None else f"{value:,.1f}"
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None:
        return "-"
    if key == "perplexity":
        return f"{mean:.2f} ± {std:.2f}" if (row.get("seeds") or 1) > 1 else f"{mean:.2f}"
    return f"{mean:.4f}"


def lm_teacher_row(reports: Sequence[Mapping[str, Any]], parameters: int | None) -> dict[str, Any] | None:
    """The teacher's reference row of an LM board: its perplexity on the same test tokens (every LM
    report carries it), agreement 1 and KL 0 by definition; None without an LM report."""
    scored = [r for r in reports if r.get("teacher_perplexity") is not None]
    if not scored:
        return None
    return {
        "model": "teacher",
        "recipe": "the LM teacher (ONNX)",
        "params": parameters,
        "seeds": 1,
        "perplexity": scored[0]["teacher_perplexity"],
        "top1_agreement": 1.0,
        "kl_to_teacher": 0.0,
        "teacher_perplexity": scored[0]["teacher_perplexity"],
    }
