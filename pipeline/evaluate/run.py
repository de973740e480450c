"""Evaluate the trained models of one student directory and write their files.

Per model (`data/train/<student>/` holds one, or one per cohort member):
`data/evaluate/<model>/metrics.json` (what `dvc metrics show|diff` reads), `reliability.png`
(one curve per seed) and `calibration.tsv` (the bins behind it). Latency is read off the exported
`data/export/<model>/model.onnx`, and the int8 accuracy change off its `parity.json`: the evaluate
stage depends on the export stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.errors import DistilleryError
from pipeline.evaluate.evaluation import EvalSplit, EvaluationError, calibration_tsv, evaluate_model, metrics_report
from pipeline.evaluate.latency import onnx_latency_ms
from pipeline.evaluate.params import EvaluateParams
from pipeline.evaluate.plots import reliability_diagram
from pipeline.evaluate.recipe import recipe_summary, recipe_temperature
from pipeline.io import atomic_write_json, atomic_write_text


class MissingExportError(DistilleryError):
    """The model was not exported, so its ONNX latency cannot be measured."""


def exported_model(export_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(path of model.onnx, parsed parity.json) of one exported model, or MissingExportError."""
    export_dir = Path(export_dir)
    onnx_path, parity_path = export_dir / "model.onnx", export_dir / "parity.json"
    if not onnx_path.exists() or not parity_path.exists():
        raise MissingExportError(f"{export_dir}: no model.onnx + parity.json; run `dvc repro export` first "
                                 "(evaluate times the exported model)")
    return onnx_path, json.loads(parity_path.read_text())


def evaluate_trained_model(
    model: str,
    seed_dirs: Sequence[Path],
    data: EvalSplit,
    params: EvaluateParams,
    recipe: Mapping[str, Any],
    export_dir: str | Path | None,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Evaluate every seed of `model`, time its exported ONNX (when `export_dir` is given), and
    write metrics.json, reliability.png and calibration.tsv into `out_dir`; returns the metrics."""
    from pipeline.students.registry import count_parameters
    from pipeline.students.trained import load_trained_student

    modules = {seed_dir.name: load_trained_student(seed_dir) for seed_dir in seed_dirs}
    temperature = recipe_temperature(recipe)
    evaluation = evaluate_model(modules, data, temperature, params.ece_bins, params.top_k, params.batch_size)
    latency, int8 = None, None
    if export_dir is not None:
        onnx_path, parity = exported_model(export_dir)
        latency = onnx_latency_ms(onnx_path, params.latency.batch_sizes, params.latency.providers,
                                  params.latency.warmup, params.latency.repeats, params.latency.intra_op_threads)
        int8 = parity.get("int8")
    report = metrics_report(model, evaluation, data, count_parameters(next(iter(modules.values()))),
                            recipe_summary(recipe), temperature, latency, int8)
    out_dir = Path(out_dir)
    reliability_diagram(evaluation.bins, out_dir / "reliability.png", title=f"{model}: reliability on {data.name}")
    atomic_write_text(out_dir / "calibration.tsv", calibration_tsv(evaluation.bins))
    atomic_write_json(out_dir / "metrics.json", report)
    return report


def evaluate_student_dir(
    student_dir: str | Path,
    data: EvalSplit,
    params: EvaluateParams,
    recipe: Mapping[str, Any],
    export_root: str | Path | None,
    out_root: str | Path,
) -> dict[str, dict[str, Any]]:
    """Evaluate every model under `data/train/<student>/` (one, or one per cohort member) into
    `out_root/<model>/`, timing `export_root/<model>/model.onnx`; returns model name -> metrics."""
    from pipeline.students.trained import list_trained

    models = list_trained(student_dir)
    if not models:
        raise EvaluationError(f"{student_dir}: no trained seeds (seed_<k>/student.json); run `dvc repro train` first")
    return {
        name: evaluate_trained_model(name, seeds, data, params, recipe,
                                     None if export_root is None else Path(export_root) / name, Path(out_root) / name)
        for name, seeds in models.items()
    }
