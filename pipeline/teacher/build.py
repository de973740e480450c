"""What the `teacher` stage does: build the built-in teacher or adopt the user's ONNX file, then
measure it (accuracy per split through ONNX Runtime, size, provider, parity with torch)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import torch

from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.cache.teacher_outputs import probe_row_shapes, shown_ids_of
from pipeline.data.prepare import TEACHER_TRAIN_DIR
from pipeline.data.prepared import PreparedData, load_prepared
from pipeline.io import atomic_copy
from pipeline.teacher.builtin import parameter_count, train_builtin_teacher
from pipeline.teacher.export import check_onnx_parity, export_onnx, parity_batches
from pipeline.teacher.external_data import external_data_files
from pipeline.teacher.inputs import fields_of
from pipeline.teacher.params import TeacherParams
from pipeline.teacher.session import (
    TeacherModelError,
    TeacherSession,
    onnx_parameter_count,
    open_teacher,
    teacher_sha256,
)


def teacher_training_data(prepared_dir: str | Path, data: PreparedData, train_on: str) -> PreparedData:
    """The rows the built-in teacher learns from: with train_on "full_train", the train split as it
    was before the label budget and omitted classes (`prepared_dir/teacher_train`, written by prepare
    only when those took rows away); otherwise (or when absent) `data` itself."""
    full_train = Path(prepared_dir) / TEACHER_TRAIN_DIR
    if train_on == "full_train" and full_train.exists():
        return load_prepared(full_train)
    return data


def teacher_logits(session: TeacherSession, data: PreparedData, batch_size: int = 512) -> np.ndarray:
    """(N, C) float32 raw logits of every row of `data`, run in batches of `batch_size`."""
    fields, count = fields_of(data), len(data.sample_id)
    parts = [
        session.run(session.feed(fields, slice(begin, min(begin + batch_size, count))).arrays)[
            session.logits_name
        ]
        for begin in range(0, count, batch_size)
    ]
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def accuracy_per_split(
    session: TeacherSession, data: PreparedData, batch_size: int = 512
) -> dict[str, float]:
    """Split name -> top-1 accuracy of the teacher on that split's labelled rows (splits without
    labelled rows are left out; none for a teacher without logits)."""
    if session.logits_name is None or not (data.label != UNLABELLED).any():  # e.g. an LM's sentences
        return {}
    logits = teacher_logits(session, data, batch_size)
    predicted = logits.argmax(axis=1)
    accuracy = {}
    for code, name in enumerate(SPLITS):
        rows = (data.split == code) & (data.label != UNLABELLED)
        if rows.any():
            accuracy[name] = round(float((predicted[rows] == data.label[rows]).mean()), 6)
    return accuracy


def _open(path: Path, params: TeacherParams, data: PreparedData) -> TeacherSession:
    session = open_teacher(path, **params.session_options())
    fields = fields_of(data)
    session.check_fields(fields, shown_ids_of(data))
    row_shapes = probe_row_shapes(session, data)  # two batch sizes: every output follows the batch
    shapes = session.every_output_shape(session.feed(fields, slice(0, 1)).arrays)
    if session.logits_name is None:
        return session
    logits_shape = shapes[session.logits_name]
    if len(logits_shape) == 2:  # (sequence, V): an LM teacher's logits per token, of one position each
        logits_shape = row_shapes.get("logits", logits_shape)
    if logits_shape != (data.num_classes,):
        raise TeacherModelError(wrong_logits_message(path, session.logits_name, shapes, data.num_classes))
    return session


def wrong_logits_message(
    path: Path, logits_name: str, shapes: dict[str, tuple[int, ...]], num_classes: int
) -> str:
    """The one line for a `logits_name` output whose per-row shape is not (num_classes,): every output
    with its shape, and the likely fix (another output of that width, else a num_classes that fits)."""

    def batch_shape(shape: tuple[int, ...]) -> str:
        return "(batch" + "".join(f", {d}" for d in shape) + ")"

    listing = ", ".join(f"{name} {batch_shape(shape)}" for name, shape in shapes.items())
    wanted = batch_shape((num_classes,))
    fits = [name for name, shape in shapes.items() if shape == (num_classes,) and name != logits_name]
    shape = shapes[logits_name]
    if fits:
        only = "the only output" if len(fits) == 1 else "an output"
        fix = f"set teacher.logits_name: {fits[0]} ({only} of shape {wanted})"
    elif len(shape) == 1 and shape[0] > 1:
        fix = (
            f"use a teacher trained on these classes, or set prepare.dataset.num_classes to {shape[0]} "
            "if the dataset has classes its labels do not show"
        )
    else:
        fix = (
            f"set teacher.logits_name to the output of raw class scores {wanted}, or re-export the "
            "teacher with one"
        )
    return (
        f"{path}: output {logits_name!r} (teacher.logits_name) has shape {batch_shape(shape)} but the "
        f"dataset has {num_classes} classes, so the logits need shape {wanted}; the model's outputs: "
        f"{listing}; {fix}"
    )


def _summary(session: TeacherSession, path: Path, data: PreparedData) -> dict:
    started = time.perf_counter()
    accuracy = accuracy_per_split(session, data)
    return {
        "test_accuracy": accuracy.get("test"),
        "accuracy": accuracy,
        "provider": session.provider,
        "sha256": teacher_sha256(path),
        "outputs": {name: session.output_dims[name] for name in session.output_names},
        "inference_seconds": round(time.perf_counter() - started, 3),
        "dataset_fingerprint": data.fingerprint,
    }


def build_builtin_teacher(
    data: PreparedData,
    teacher_train: PreparedData,
    params: TeacherParams,
    out_path: str | Path,
    progress: bool = True,
) -> dict:
    """Train the built-in CNN on `teacher_train`'s labelled train rows, export it to `out_path`
    (atomic), gate it on ORT-vs-torch parity (`params.parity`, on rows of `data`, each output
    within atol + rtol of its own largest magnitude), and return its metrics measured on `data`."""
    out_path = Path(out_path)
    trained = train_builtin_teacher(teacher_train, params.builtin, progress=progress)
    example = torch.from_numpy(np.array(data.inputs[:2]))
    export_onnx(trained.module, example, out_path, trained.module.output_names, params.input_name)
    parity = check_onnx_parity(
        trained.module,
        out_path,
        parity_batches(data.inputs, params.parity.batch_sizes, params.builtin.seed),
        rtol=params.parity.rtol,
        atol=params.parity.atol,
        input_name=params.input_name,
    )
    session = _open(out_path, params, data)
    metrics = {"source": "builtin", **_summary(session, out_path, data)}
    metrics |= {
        "parameters": parameter_count(trained.module),
        "train_rows": trained.train_rows,
        "train_seconds": round(trained.train_seconds, 2),
        "final_train_loss": round(trained.final_train_loss, 6),
        "parity_max_abs_diff": max(o["max_abs_diff"] for o in parity["outputs"].values()),
        "parity": parity,
    }
    return metrics


def adopt_user_teacher(
    source: str | Path, data: PreparedData, params: TeacherParams, out_path: str | Path
) -> dict:
    """Validate the user's ONNX teacher against the prepared data, copy it to `out_path` (atomic;
    its external weight data files first, to the same locations beside it) and return its metrics
    (no torch model, so no parity numbers)."""
    source, out_path = Path(source), Path(out_path)
    _open(source, params, data)  # every validation error names the user's file, not the copy
    for data_file in external_data_files(onnx.load(str(source), load_external_data=False), source):
        atomic_copy(data_file, out_path.parent / data_file.relative_to(source.parent))
    atomic_copy(source, out_path)
    session = _open(out_path, params, data)
    metrics = {"source": "user", "source_path": str(source), **_summary(session, out_path, data)}
    metrics |= {"parameters": onnx_parameter_count(out_path), "parity_max_abs_diff": None}
    return metrics
