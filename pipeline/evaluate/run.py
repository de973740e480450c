"""Evaluate the trained models of one student directory and write its three files.

`data/train/<student>/` holds one model, or one per member of a cohort. Whatever it holds, the
student's files have fixed paths (so dvc.yaml can name them): `data/evaluate/<student>/metrics.json`
(what `dvc metrics show|diff` reads: the model's report, or `{"members": {model: report}}` for a
cohort), `reliability.png` (one curve per model and seed) and `calibration.tsv` (the bins behind it,
labelled `seed_<k>` or `<member>/seed_<k>`). Latency is read off the exported
`data/export/<model>/model.onnx`, and the int8 accuracy change off its `parity.json`: the evaluate
stage depends on the export stage.

Chains (pipeline/evaluate/lineage.py): a student's agreement and KL are measured against the cache
it learned from (its `cache`, maybe another student's); `root_agreement` is its agreement with the
root teacher (`data/cache/store`), so chain students and directly distilled ones compare on one
scale, and `teacher` names what it learned from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DistilleryError
from pipeline.evaluate.evaluation import (
    EvalSplit,
    EvaluationError,
    calibration_tsv,
    evaluate_model,
    metrics_report,
    predict_logits,
)
from pipeline.evaluate.latency import latency_of
from pipeline.evaluate.metrics import CalibrationBins, agreement
from pipeline.evaluate.params import EvaluateParams
from pipeline.evaluate.plots import reliability_diagram
from pipeline.evaluate.recipe import model_recipe, recipe_summary, recipe_temperature
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.text.tokenizer import TokenizedText


class MissingExportError(DistilleryError):
    """The model was not exported, so its ONNX latency cannot be measured."""


class StaleExportError(DistilleryError):
    """model.onnx was exported from other weights than the checkpoint being evaluated."""


def exported_model(export_dir: str | Path, seed_dirs: Sequence[Path] = ()) -> tuple[Path, dict[str, Any]]:
    """(path of model.onnx, parsed parity.json) of one exported model, or MissingExportError; with
    `seed_dirs` (the trained seeds evaluated), StaleExportError unless the export was made from the
    current weights of one of them (parity.json's `checkpoint_sha256`, written by export)."""
    from pipeline.students.trained import weights_sha256

    export_dir = Path(export_dir)
    onnx_path, parity_path = export_dir / "model.onnx", export_dir / "parity.json"
    if not onnx_path.exists() or not parity_path.exists():
        raise MissingExportError(
            f"{export_dir}: no model.onnx + parity.json; run `dvc repro export` first "
            "(evaluate times the exported model)"
        )
    parity = json.loads(parity_path.read_text())
    if seed_dirs and parity.get("checkpoint_sha256") not in {weights_sha256(d) for d in seed_dirs}:
        student = parity.get("student") or export_dir.name
        raise StaleExportError(
            f"{onnx_path} was exported from other weights than those in {seed_dirs[0].parent} "
            f"(trained again since); re-run `distillery export --student {student}` (or `dvc repro "
            "export`), then evaluate"
        )
    return onnx_path, parity


def evaluate_trained_model(
    model: str,
    seed_dirs: Sequence[Path],
    data: EvalSplit,
    params: EvaluateParams,
    recipe: Mapping[str, Any],
    export_dir: str | Path | None,
    root: EvalSplit | None = None,
    teacher: str | None = None,
    bias: tuple[EvalSplit, Sequence[int]] | None = None,
    encode: tuple[str | Path, TokenizedText] | None = None,
) -> tuple[dict[str, Any], dict[str, CalibrationBins]]:
    """Evaluate every seed of `model` (its recipe: `recipe`) and time its exported ONNX (when
    `export_dir` is given); returns (metrics report, calibration bins per seed).

    root: the split joined to the root teacher's cache when the student learned from another cache
    (a chain); `root_agreement` is then measured on it, else it equals `agreement`.
    teacher: what the model learned from (`lineage.learned_from`), written as `teacher`.
    bias: (val split, classes): add `bias_correction` (pipeline/evaluate/bias_correction.py).
    With `params.embedding`, add the embedding metrics against the split's cached teacher tap, and
    with `encode` = (teacher ONNX, its tokenised sentences) and an export, the encode speed of both
    (`embedding_block`)."""
    from pipeline.students.registry import count_parameters
    from pipeline.students.trained import load_trained_student

    modules = {seed_dir.name: load_trained_student(seed_dir) for seed_dir in seed_dirs}
    temperature = recipe_temperature(recipe)
    evaluation = evaluate_model(modules, data, temperature, params.ece_bins, params.top_k, params.batch_size)
    latency, int8, onnx_path = None, None, None
    if export_dir is not None:
        onnx_path, parity = exported_model(export_dir, seed_dirs)
        latency = latency_of(onnx_path, params.latency)
        int8 = parity.get("int8")
    report = metrics_report(
        model,
        evaluation,
        data,
        count_parameters(next(iter(modules.values()))),
        recipe_summary(recipe),
        temperature,
        latency,
        int8,
    )
    if data.teacher_logits is None:  # a teacher without logits: no agreement to report
        root_values = []
    elif root is None:
        root_values = [seed["agreement"] for seed in evaluation.per_seed.values()]
    else:
        root_values = [
            agreement(predict_logits(module, root.inputs, params.batch_size), root.teacher_logits)
            for module in modules.values()
        ]
    report = _with_lineage(report, teacher, root_values)
    if params.embedding is not None:
        report.update(embedding_block(modules, data, params, onnx_path, encode))
    if bias is not None:
        from pipeline.evaluate.bias_correction import BiasCorrectionParams, correct_model

        report["bias_correction"] = correct_model(
            modules,
            bias[0],
            data,
            bias[1],
            params.bias_correction or BiasCorrectionParams(),
            params.batch_size,
        )
    return report, evaluation.bins


def embedding_block(
    modules: Mapping[str, Any],
    data: EvalSplit,
    params: EvaluateParams,
    student_onnx: str | Path | None = None,
    encode: tuple[str | Path, TokenizedText] | None = None,
) -> dict[str, Any]:
    """{"mean_cosine", "knn_agreement", "similarity_spearman": {"mean", "std"} over seeds (mean
    cosine only when the widths agree), "embedding": {"teacher_tap", "student_tap", "k", "rows",
    "per_seed"[, "encode"]}} of each seed's student tap against `data.teacher_features`; "encode"
    (`encode_speed`) when both the student's ONNX file and `encode` are given."""
    from pipeline.evaluate.embedding_eval import embedding_report, encode_speed, student_embeddings

    settings = params.embedding
    student_tap = settings.student_tap or settings.teacher_tap
    if settings.teacher_tap not in data.teacher_features:
        raise EvaluationError(
            f"split {data.name!r} was joined without the teacher tap {settings.teacher_tap!r}; "
            "join it with features=(teacher_tap,)"
        )
    per_seed = {
        seed: student_embeddings(module, data.inputs, student_tap, params.batch_size)
        for seed, module in modules.items()
    }
    spread, scores = embedding_report(per_seed, data.teacher_features[settings.teacher_tap], settings.k)
    block: dict[str, Any] = {
        "teacher_tap": settings.teacher_tap,
        "student_tap": student_tap,
        "k": settings.k,
        "rows": len(data.sample_id),
        "per_seed": scores,
    }
    if student_onnx is not None and encode is not None:
        block["encode"] = encode_speed(
            student_onnx, encode[0], encode[1], settings.encode_batch_sizes, settings.encode_sentences
        )
    return {**spread, "embedding": block}


def _with_lineage(
    report: dict[str, Any], teacher: str | None, root_values: Sequence[float]
) -> dict[str, Any]:
    """`report` with `teacher` after `recipe` and `root_agreement` {"mean", "std"} after `agreement`
    (none without `root_values`: a teacher without logits)."""
    values = np.asarray(root_values, dtype=np.float64)
    if not len(values):
        return {**report, **({"teacher": teacher} if teacher is not None else {})}
    spread = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    result: dict[str, Any] = {}
    for key, value in report.items():
        result[key] = value
        if key == "recipe" and teacher is not None:
            result["teacher"] = teacher
        if key == "agreement":
            result["root_agreement"] = spread
    return result


def evaluate_student_dir(
    student_dir: str | Path,
    data: EvalSplit,
    params: EvaluateParams,
    recipe: Mapping[str, Any],
    export_root: str | Path | None,
    out_dir: str | Path,
    root: EvalSplit | None = None,
    teacher: str | None = None,
    bias: tuple[EvalSplit, Sequence[int]] | None = None,
    encode: tuple[str | Path, TokenizedText] | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate every model under `data/train/<student>/` (timing `export_root/<model>/model.onnx`)
    and write metrics.json, reliability.png and calibration.tsv into `out_dir`
    (`data/evaluate/<student>`); returns model name -> metrics report. `recipe` is the raw
    `students.<student>` mapping (a cohort's members are resolved from it); `root`, `teacher` and
    `encode` as in `evaluate_trained_model`."""
    from pipeline.students.trained import list_trained

    student_dir, out_dir = Path(student_dir), Path(out_dir)
    models = list_trained(student_dir)
    if not models:
        raise EvaluationError(
            f"{student_dir}: no trained seeds (seed_<k>/student.json); run `dvc repro train` first"
        )
    reports, bins = {}, {}
    for name, seeds in models.items():
        export_dir = None if export_root is None else Path(export_root) / name
        reports[name], seed_bins = evaluate_trained_model(
            name, seeds, data, params, model_recipe(recipe, name), export_dir, root, teacher, bias, encode
        )
        member = name.partition("/")[2]
        bins.update({f"{member}/{seed}" if member else seed: b for seed, b in seed_bins.items()})
    reliability_diagram(
        bins, out_dir / "reliability.png", title=f"{student_dir.name}: reliability on {data.name}"
    )
    atomic_write_text(out_dir / "calibration.tsv", calibration_tsv(bins))
    single = len(reports) == 1 and next(iter(reports)) == student_dir.name
    atomic_write_json(
        out_dir / "metrics.json", next(iter(reports.values())) if single else {"members": reports}
    )
    return reports
