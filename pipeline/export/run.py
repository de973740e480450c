"""Export every model a student directory holds (one, or one per cohort member) with its parity report.

`data/train/<student>/seed_<k>/` -> `data/export/<student>/model.onnx` + `parity.json` (+
`model.int8.onnx` when asked); a cohort's members go to `data/export/<cohort>/<member>/`.
`parity.json` is written last and removed first, so it only ever vouches for the model beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DistilleryError
from pipeline.export.named_inputs import export_named_student
from pipeline.export.params import ExportParams
from pipeline.export.quantize import int8_report, quantize_int8
from pipeline.export.student_onnx import export_student
from pipeline.io import atomic_write_json

MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
PARITY_FILE = "parity.json"


class ExportError(DistilleryError):
    """Nothing to export, or a seed that does not exist."""


def pick_seed(seed_dirs: Sequence[Path], seed: int | None) -> Path:
    """The seed directory to export: `seed_<seed>`, or the lowest-numbered one when seed is None."""
    if not seed_dirs:
        raise ExportError("no trained seeds to export; run `dvc repro train@<student>` first")
    if seed is None:
        return sorted(seed_dirs, key=lambda p: int(p.name.split("_", 1)[1]))[0]
    for seed_dir in seed_dirs:
        if seed_dir.name == f"seed_{seed}":
            return seed_dir
    raise ExportError(
        f"export.seed: {seed} was not trained (have {', '.join(p.name for p in seed_dirs)}); "
        "set export.seed to one of them or null for the first"
    )


def export_seed(
    seed_dir: str | Path,
    out_dir: str | Path,
    params: ExportParams,
    int8_data: tuple[np.ndarray, np.ndarray] | None = None,
    parity_rows: np.ndarray | None = None,
    fields: Any = None,
) -> dict[str, Any]:
    """Export the student in `seed_dir` to `out_dir` and return (and write) its parity report.

    int8_data: labelled rows (inputs (N, *input_shape), labels (N,)) to measure the int8 model's
    accuracy change on; required when params.int8 is true. parity_rows: (N, *input_shape) float32
    real inputs (the prepared data's) the parity batches are drawn from (`export_student`).
    fields: the prepared fields (a PreparedDataset) a student of named inputs reads, padded as at
    train time for its parity batches (pipeline/export/named_inputs.py).
    """
    from pipeline.students.registry import count_parameters
    from pipeline.students.trained import load_trained_student, read_student_config, weights_sha256

    seed_dir, out_dir = Path(seed_dir), Path(out_dir)
    config = read_student_config(seed_dir)
    named = config.get("inputs")
    if named and params.int8:
        raise ExportError(
            f"{seed_dir}: export.int8 is not supported yet for a student of named inputs "
            f"({', '.join(named)}); set export.int8: false"
        )
    if params.int8 and int8_data is None:
        raise ExportError("export.int8 is true but no labelled rows were given to measure its accuracy on")
    if named and fields is None:
        raise ExportError(f"{seed_dir}: the student reads named fields; give the prepared data to export it")
    (out_dir / PARITY_FILE).unlink(missing_ok=True)
    student = load_trained_student(seed_dir)
    report: dict[str, Any] = {
        "student": config.get("student"),
        "seed": config.get("seed"),
        "source": seed_dir.as_posix(),
        "checkpoint_sha256": weights_sha256(seed_dir),  # evaluate refuses a model.onnx of other weights
        "arch": config.get("arch"),
        "params": count_parameters(student),
        "file": MODEL_FILE,
    }
    if named:
        report["parity"] = export_named_student(
            student,
            named,
            fields,
            out_dir / MODEL_FILE,
            parity_batch_sizes=params.parity_batch_sizes,
            rtol=params.rtol,
            atol=params.atol,
            seed=params.parity_seed,
        )
    else:
        report["parity"] = export_student(
            student,
            tuple(config["input_shape"]),
            out_dir / MODEL_FILE,
            parity_batch_sizes=params.parity_batch_sizes,
            rtol=params.rtol,
            atol=params.atol,
            seed=params.parity_seed,
            parity_rows=parity_rows,
        )
    if params.int8:
        quantize_int8(out_dir / MODEL_FILE, out_dir / INT8_FILE)
        report["int8"] = int8_report(out_dir / MODEL_FILE, out_dir / INT8_FILE, *int8_data)
    else:
        (out_dir / INT8_FILE).unlink(missing_ok=True)
    atomic_write_json(out_dir / PARITY_FILE, report)
    return report


def trained_models(student_dir: str | Path) -> dict[str, list[Path]]:
    """`list_trained(student_dir)` (model name -> seed directories), or ExportError when it holds none."""
    from pipeline.students.trained import list_trained

    models = list_trained(student_dir)
    if not models:
        raise ExportError(
            f"{student_dir}: no trained seeds (seed_<k>/student.json); run `dvc repro train` first"
        )
    return models


def int8_rows(prepared) -> tuple[Any, np.ndarray]:
    """The labelled test rows `export.int8` measures its accuracy change on: (inputs (N, *input_shape)
    float32, labels (N,) int64). `prepared`: PreparedData or a PreparedDataset; inputs on the shards
    stay a view that `onnx_logits` reads one batch at a time (a large test split is never gathered)."""
    rows = prepared.rows("test", labelled_only=True)
    inputs = prepared.inputs
    return (inputs.at(rows) if hasattr(inputs, "at") else inputs[rows]), np.asarray(prepared.label)[rows]


def export_student_dir(
    student_dir: str | Path,
    export_root: str | Path,
    params: ExportParams,
    int8_data: tuple[np.ndarray, np.ndarray] | None = None,
    parity_rows: np.ndarray | None = None,
    fields: Any = None,
) -> dict[str, dict[str, Any]]:
    """Export every model under `data/train/<student>/` into `export_root/<model name>/`;
    returns model name -> parity report. int8_data, parity_rows, fields: as `export_seed`."""
    models = trained_models(student_dir)
    return {
        name: export_seed(
            pick_seed(seeds, params.seed), Path(export_root) / name, params, int8_data, parity_rows, fields
        )
        for name, seeds in models.items()
    }
