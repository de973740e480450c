"""A tiny Distillery project on disk, as the stages leave it, for the reliability tests.

96 rows of (1, 4, 4) inputs and 4 classes; an ONNX teacher written with onnx.helper (no torch
export, so it is fast) with outputs `logits` (B, 4), `embed` (B, 8) and `conv` (B, 1, 4, 4); the
`distillery` stages are driven through `stages.cli.main`, exactly as the command line does.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from pipeline.data.prepared import make_prepared, write_prepared

INPUT_SHAPE = (1, 4, 4)
NUM_CLASSES = 4
NUM_ROWS = 96
NAN_ROWS = (5, 9)  # rows whose first input is negative: the `nan` teacher takes its square root


def teacher_onnx(
    path: Path,
    batch: Any = "batch",
    input_shape=INPUT_SHAPE,
    elem_type=TensorProto.FLOAT,
    output_names=("logits", "embed", "conv"),
    nan_on_negative_input: bool = False,
    num_classes: int = NUM_CLASSES,
) -> Path:
    """Write a tiny teacher: flat = Flatten(x); logits = flat W; embed = tanh(flat V); conv = relu(x).

    `output_names` renames the three outputs (in that order); `nan_on_negative_input` computes the
    logits from sqrt(flat), so a row with a negative input gets NaN logits; `num_classes` logits.
    """
    rng = np.random.default_rng(0)
    size = int(np.prod(input_shape))
    initializers = [
        numpy_helper.from_array(rng.normal(size=(size, NUM_CLASSES)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=(size, 8)).astype(np.float32), "V"),
    ]
    x = "input"
    nodes = []
    if elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["input"], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    source = "flat"
    if nan_on_negative_input:
        nodes.append(helper.make_node("Sqrt", ["flat"], ["root"]))
        source = "root"
    logits, embed, conv = output_names
    initializers[0] = numpy_helper.from_array(rng.normal(size=(size, num_classes)).astype(np.float32), "W")
    nodes += [
        helper.make_node("MatMul", [source, "W"], [logits]),
        helper.make_node("MatMul", ["flat", "V"], ["embed_pre"]),
        helper.make_node("Tanh", ["embed_pre"], [embed]),
        helper.make_node("Relu", [x], [conv]),
    ]
    outputs = [
        helper.make_tensor_value_info(logits, TensorProto.FLOAT, [batch, num_classes]),
        helper.make_tensor_value_info(embed, TensorProto.FLOAT, [batch, 8]),
        helper.make_tensor_value_info(conv, TensorProto.FLOAT, [batch, *input_shape]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_teacher",
        [helper.make_tensor_value_info("input", elem_type, [batch, *input_shape])],
        outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnx 1.23 writes IR 14, too new for ONNX Runtime 1.31 (docs/data_and_teacher.md)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def prepared_arrays(seed: int = 0, negative_rows=()) -> tuple[np.ndarray, ...]:
    """(sample_id, split names, label, inputs) of the tiny dataset; `negative_rows` get a -1 first input."""
    rng = np.random.default_rng(seed)
    sample_id = 5000 + 7 * rng.permutation(NUM_ROWS)
    split = np.array(["train"] * 48 + ["val"] * 16 + ["test"] * 16 + ["unlabelled"] * 16)
    inputs = rng.random((NUM_ROWS, *INPUT_SHAPE)).astype(np.float32)
    inputs.reshape(NUM_ROWS, -1)[list(negative_rows), 0] = -1.0
    label = rng.integers(0, NUM_CLASSES, NUM_ROWS)
    label[split == "unlabelled"] = -1
    return sample_id, split, label, inputs


CLASS_NAMES = ("ant", "bee", "cat", "dog")
"""The class names of the named dataset: sorted, so name i is class i of `prepared_arrays`."""


def user_ids(sample_id: np.ndarray) -> np.ndarray:
    """The named dataset's string ids: `img-005035` for sample id 5035."""
    return np.array([f"img-{int(i):06d}" for i in sample_id])


def write_named_npz(path: Path, seed: int = 0, negative_rows=()) -> Path:
    """The tiny dataset as a user with string ids and class names has it: an npz with `x`, `y` (class
    names, "" = no label), `ids` (`img-005035`) and `split` (the user's split)."""
    sample_id, split, label, inputs = prepared_arrays(seed, negative_rows)
    names = np.array(["", *CLASS_NAMES])[label + 1]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=inputs, y=names, ids=user_ids(sample_id), split=split)
    return path


def named_prepare_params(npz: Path) -> dict[str, Any]:
    """The `prepare:` section reading `write_named_npz`'s file with its split."""
    return {"dataset": {"kind": "npz", "path": str(npz), "split_array": "split"}}


def write_dataset(directory: Path, seed: int = 0, negative_rows=()) -> Path:
    """The prepared dataset as `distillery prepare` leaves it."""
    write_prepared(make_prepared(*prepared_arrays(seed, negative_rows), NUM_CLASSES), directory)
    return directory


def student_recipe(root: Path, **overrides) -> dict[str, Any]:
    """A cheap student: MLP [8], one epoch, CE + Hinton KD + a feature term on `embed`."""
    recipe = {
        "arch": {"kind": "mlp", "hidden": [8]},
        "epochs": 1,
        "seeds": [0],
        "batch_size": 16,
        "cache": str(root / "cache" / "store"),
        "loss": {
            "ce": {"kind": "ce", "weight": 0.5},
            "kd": {"kind": "hinton", "weight": 0.5},
            "hint": {"kind": "feature", "weight": 1.0, "student_tap": "embed", "teacher_tap": "embed"},
        },
    }
    recipe.update(overrides)
    return recipe


def base_params(root: Path) -> dict[str, Any]:
    """params.yaml of the tiny project: small cache chunks, a cheap student, quick latency and parity."""
    return {
        "teacher": {"provider": "cpu"},
        "cache": {"rows_per_chunk": 16, "chunks_per_shard": 2, "batch_size": 16, "kl_sample_rows": 64},
        "students": {"kd": student_recipe(root)},
        "evaluate": {
            "latency": {"batch_sizes": [1], "providers": ["CPUExecutionProvider"], "warmup": 1, "repeats": 2}
        },
        "export": {"parity_batch_sizes": [1, 7]},
    }


def write_params(path: Path, params: dict[str, Any]) -> Path:
    """Write `params` as YAML to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage_argv(root: Path, stage: str, params: Path | None = None, student: str = "kd") -> list[str]:
    """The command line of `stage` on the project at `root` (every path under `root`)."""
    params = str(params or root / "params.yaml")
    if stage == "prepare":
        return ["prepare", "--params", params, "--out", str(root / "prepared")]
    if stage == "cache":
        return [
            "cache",
            "--params",
            params,
            "--prepared",
            str(root / "prepared"),
            "--teacher",
            str(root / "teacher" / "model.onnx"),
            "--out",
            str(root / "cache"),
            "--scratch",
            str(root / "scratch" / "cache"),
            "--no-progress",
        ]
    if stage == "train":
        return [
            "train",
            "--student",
            student,
            "--params",
            params,
            "--prepared",
            str(root / "prepared"),
            "--out",
            str(root / "train" / student),
            "--scratch",
            str(root / "scratch" / "train" / student),
            "--no-progress",
        ]
    if stage == "export":
        return [
            "export",
            "--student",
            student,
            "--params",
            params,
            "--train-dir",
            str(root / "train"),
            "--prepared",
            str(root / "prepared"),
            "--out",
            str(root / "export"),
        ]
    if stage == "evaluate":
        argv = [
            "evaluate",
            "--student",
            student,
            "--params",
            params,
            "--train-dir",
            str(root / "train"),
            "--prepared",
            str(root / "prepared"),
            "--export-dir",
            str(root / "export"),
            "--out",
            str(root / "evaluate" / student),
        ]
        if _accepts("evaluate", "--root-cache"):  # chains: the root teacher's cache
            argv += ["--root-cache", str(root / "cache" / "store")]
        return argv
    if stage == "leaderboard":
        return [
            "leaderboard",
            "--params",
            params,
            "--evaluate-dir",
            str(root / "evaluate"),
            "--train-dir",
            str(root / "train"),
            "--cache",
            str(root / "cache" / "store"),
            "--teacher",
            str(root / "teacher" / "model.onnx"),
            "--out",
            str(root / "leaderboard"),
        ]
    raise ValueError(f"no command line for stage {stage!r}")


def _accepts(stage: str, option: str) -> bool:
    """Whether `distillery <stage>` takes `option`."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(f"stages.{stage}").add_arguments(parser)
    return option in parser._option_string_actions


def build_project(root: Path, upto: str = "evaluate") -> Path:
    """prepared + teacher + params, then the stages `cache`, `train`, `export`, `evaluate` (up to
    `upto`) run through the command line; returns `root`."""
    from stages.cli import main

    write_dataset(root / "prepared")
    teacher_onnx(root / "teacher" / "model.onnx")
    write_params(root / "params.yaml", base_params(root))
    for stage in ("cache", "train", "export", "evaluate"):
        code = main(stage_argv(root, stage))
        assert code == 0, f"distillery {stage} failed on the tiny project"
        if stage == upto:
            break
    return root


def cache_without_row(project: Path, row: int):
    """Replace the project's cache by one that lacks row `row` of the prepared data but carries its
    fingerprint (so only the ids tell them apart); returns the prepared data."""
    from pipeline.cache.params import CacheParams
    from pipeline.cache.writer import build_cache
    from pipeline.data.prepared import load_prepared
    from pipeline.teacher.session import open_teacher
    from tests.cache.helpers import Rows

    prepared = load_prepared(project / "prepared")
    keep = np.arange(len(prepared)) != row
    rows = Rows(
        prepared.sample_id[keep],
        prepared.split[keep],
        prepared.label[keep],
        prepared.inputs[keep],
        prepared.fingerprint,
    )
    shutil.rmtree(project / "cache" / "store")
    build_cache(
        rows,
        open_teacher(project / "teacher" / "model.onnx", provider="cpu"),
        "a" * 64,
        prepared.fingerprint,
        CacheParams(rows_per_chunk=16, chunks_per_shard=2, batch_size=16, kl_sample_rows=64),
        project / "cache" / "store",
        project / "scratch" / "ids",
        progress=False,
    )
    return prepared


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a built project whose params point at the copy's own cache."""
    shutil.copytree(source, target)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["students"]["kd"]["cache"] = str(target / "cache" / "store")
    write_params(target / "params.yaml", params)
    return target
