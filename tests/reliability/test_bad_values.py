"""Bad values, through the real command line: the dataset, params values, command-line arguments,
a damaged checkpoint and a stale export each end in one line naming the thing and the fix, never a
traceback, and nothing already written is lost (issue 12, items 10, 11 and 12)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reliability.conftest import refused
from tests.reliability.project import (
    NUM_CLASSES,
    base_params,
    copy_project,
    prepared_arrays,
    stage_argv,
    write_params,
)

# --- the dataset (`distillery prepare` on your own files) ----------------------------------------


def _prepare(tmp_path: Path, dataset: dict, **prepare) -> list[str]:
    params = write_params(
        tmp_path / "params.yaml", {"prepare": {"dataset": {"num_classes": NUM_CLASSES, **dataset}, **prepare}}
    )
    return ["prepare", "--params", str(params), "--out", str(tmp_path / "prepared")]


def _npz(tmp_path: Path, **arrays) -> dict:
    np.savez(tmp_path / "data.npz", **arrays)
    return {"kind": "npz", "path": str(tmp_path / "data.npz")}


def _parquet(tmp_path: Path, inputs: pa.Array) -> dict:
    ids, _, labels, _ = prepared_arrays()
    table = pa.table(
        {"id": ids[: len(inputs)], "label": np.maximum(labels, 0)[: len(inputs)], "input": inputs}
    )
    pq.write_table(table, tmp_path / "data.parquet")
    return {"kind": "parquet", "path": str(tmp_path / "data.parquet")}


def _arrays():
    ids, _, labels, inputs = prepared_arrays()
    return ids, np.maximum(labels, 0), inputs


DATASET_CASES = {
    "a dataset with zero rows": (
        lambda p: _npz(p, x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64), ids=np.zeros(0, np.int64)),
        {},
        "EmptyDatasetError",
    ),
    "string inputs": (
        lambda p: _npz(p, x=np.full((96, 4), "a"), y=_arrays()[1], ids=_arrays()[0]),
        {},
        "InputTypeError",
    ),
    "labels shaped (N, 1)": (
        lambda p: _npz(p, x=_arrays()[2], y=_arrays()[1][:, None], ids=_arrays()[0]),
        {},
        "LabelTypeError",
    ),
    "inputs that are empty lists (Parquet)": (
        lambda p: _parquet(p, pa.array([[] for _ in range(96)], pa.list_(pa.float32()))),
        {},
        "InputShapeError",
    ),
    "a negative `input_shape`": (
        lambda p: {
            **_parquet(p, pa.array([[0.5] * 4] * 96, pa.list_(pa.float32()))),
            "input_shape": [-4],
        },
        {},
        "ParamsError",
    ),
    "a file that is not Parquet given as Parquet": (
        lambda p: (
            (p / "data.parquet").write_text("id,label,input\n1,2,3\n")
            and {"kind": "parquet", "path": str(p / "data.parquet")}
        ),
        {},
        "DatasetFormatError",
    ),
    "`omit_classes` naming a class the dataset does not have": (
        lambda p: _npz(p, x=_arrays()[2], y=_arrays()[1], ids=_arrays()[0]),
        {"omit_classes": [7]},
        "UnknownClassError",
    ),
}


@pytest.mark.parametrize(
    "item",
    list(DATASET_CASES),
    ids=["zero-rows", "string-inputs", "labels-n1", "empty-lists", "negative-shape", "not-parquet", "omit"],
)
def test_a_bad_dataset_is_one_line_at_prepare(item, tmp_path, capsys, record):
    make, prepare, error = DATASET_CASES[item]
    line = refused(capsys, _prepare(tmp_path, make(tmp_path), **prepare))
    assert f"{error}: " in line, line
    assert not (tmp_path / "prepared").exists()
    record(f"{item}, at `distillery prepare`", line.replace(str(tmp_path), "<tmp>"))


@pytest.mark.parametrize("damage", ["truncated", "meta"])
def test_a_damaged_prepared_dataset_is_one_line_at_train(damage, tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    if damage == "truncated":
        data = project / "prepared" / "shards" / "part-00000.arrow"
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        (project / "prepared" / "meta.json").write_text('{"input_shape": [1, 4')
    line = refused(capsys, stage_argv(project, "train"))
    assert "PreparedDataError" in line and "re-run `distillery prepare`" in line
    what = (
        "a truncated data/prepared/shards/part-00000.arrow"
        if damage == "truncated"
        else "a damaged meta.json"
    )
    record(f"{what}, at `distillery train`", line.replace(str(tmp_path), "<tmp>"))


# --- params values ---------------------------------------------------------------------------------


def _student(params: dict, **changes) -> dict:
    params["students"]["kd"].update(changes)
    return params


def _weights(params: dict, value) -> dict:
    for term in params["students"]["kd"]["loss"].values():
        term["weight"] = value
    return params


VALUE_CASES = {
    "a negative seed (`seeds: [-1]`)": (lambda p: _student(p, seeds=[-1]), r"students\.kd\.seeds\.0: .*>= 0"),
    "a negative `hidden:` size": (
        lambda p: _student(p, arch={"kind": "mlp", "hidden": [-3]}),
        r"students\.kd\.arch\.hidden\.0: .*>= 1",
    ),
    "`hidden: [0]`": (lambda p: _student(p, arch={"kind": "mlp", "hidden": [0]}), r"arch\.hidden\.0: .*>= 1"),
    "an absurd `hidden:` size (10^9)": (
        lambda p: _student(p, arch={"kind": "mlp", "hidden": [10**9]}),
        r"students\.kd\.arch\.hidden\.0: .*<= 65536",
    ),
    "a NaN loss weight": (
        lambda p: _student(p, loss={"kd": {"kind": "hinton", "weight": math.nan}}),
        r"students\.kd\.loss\.kd\.weight: expected a finite number, got nan",
    ),
    "an infinite loss weight": (
        lambda p: _student(p, loss={"kd": {"kind": "hinton", "weight": math.inf}}),
        r"students\.kd\.loss\.kd\.weight: expected a finite number, got inf",
    ),
    "every loss weight 0": (lambda p: _weights(p, 0.0), r"students\.kd: every loss term has weight 0"),
    "a latency batch size of 0": (
        lambda p: p["evaluate"]["latency"].update(batch_sizes=[0]) or p,
        r"evaluate\.latency\.batch_sizes\.0: must be > 0, got 0",
    ),
}


@pytest.mark.parametrize(
    "item",
    list(VALUE_CASES),
    ids=[
        "seed",
        "hidden-negative",
        "hidden-0",
        "hidden-huge",
        "nan-weight",
        "inf-weight",
        "zero-weights",
        "lat0",
    ],
)
def test_a_bad_params_value_is_refused_naming_its_key(item, tmp_path, built_project, capsys, record):
    import re

    make, pattern = VALUE_CASES[item]
    path = write_params(tmp_path / "params.yaml", make(base_params(built_project)))
    stage = "evaluate" if "latency" in item else "train"
    argv = stage_argv(built_project, stage, params=path)
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    if stage == "train":
        argv[argv.index("--scratch") + 1] = str(tmp_path / "scratch")
    line = refused(capsys, argv)
    assert "ParamsError" in line and re.search(pattern, line), line
    assert not (tmp_path / "out").exists() and not (tmp_path / "scratch").exists()
    record(f"params: {item}", line)


def test_duplicate_keys_in_params_are_refused_as_dvc_does(tmp_path, built_project, capsys, record):
    text = (built_project / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("students:\n", "students:\n  kd:\n    epochs: 3\n", 1))  # a second `kd:`
    line = refused(capsys, stage_argv(built_project, "train", params=path))
    assert "ParamsError" in line and "duplicate key 'kd' (first at line" in line
    record("params: a duplicate student key", line.replace(str(tmp_path), "<tmp>"))


def test_device_cuda_without_cuda_is_one_line(tmp_path, built_project, capsys, record):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = write_params(tmp_path / "params.yaml", _student(base_params(built_project), device="cuda"))
    argv = stage_argv(built_project, "train", params=path)
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    line = refused(capsys, argv)
    assert "DeviceError: students.kd.device: cuda" in line and "device: auto" in line
    assert not (tmp_path / "out").exists()
    record("`device: cuda` on a machine without CUDA", line)


def test_a_cluster_address_that_is_not_a_url_is_refused(tmp_path, built_project, capsys, record):
    params = base_params(built_project)
    params["cluster"] = {"kind": "address", "address": "not a url"}
    params["sweep"] = {"students": ["kd"]}
    path = write_params(tmp_path / "params.yaml", params)
    argv = ["sweep", "--params", str(path), "--prepared", str(built_project / "prepared"), "--out",
            str(tmp_path / "out"), "--report", str(tmp_path / "report.json")]  # fmt: skip
    line = refused(capsys, argv)
    assert "ParamsError: cluster.address: 'not a url' is not a Dask scheduler address" in line
    record("`cluster.address` that is not a URL", line)


# --- the command line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, item",
    [
        (["--threads", "-2"], "`distillery train --threads -2`"),
        (["--seeds", "-1"], "`distillery train --seeds -1`"),
    ],
    ids=["threads", "seeds"],
)
def test_a_bad_number_on_the_command_line_is_one_line(extra, item, tmp_path, built_project, capsys, record):
    argv = [*stage_argv(built_project, "train"), *extra]
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    line = refused(capsys, argv, code=2)
    assert line.startswith(f"distillery train: UsageError: argument {extra[0]}: ")
    record(item, line)


def test_inspect_with_bad_arguments_is_one_line(tmp_path, built_project, capsys, record):
    cache = str(built_project / "cache" / "store")
    line = refused(capsys, ["inspect", cache, "--sample-rows", "-5"], code=2)
    assert "UsageError: argument --sample-rows: -5 is not a positive integer" in line
    record("`distillery inspect --sample-rows -5`", line)
    nowhere = "/proc/nope" if Path("/proc/self").exists() else str(tmp_path / "a-file" / "out")
    (tmp_path / "a-file").write_text("")
    line = refused(capsys, ["inspect", cache, "--out", nowhere])
    assert "Error: " in line and nowhere in line
    record("`distillery inspect --out /proc/nope` (a directory that cannot be made)", line)


# --- a damaged checkpoint.json and a stale export ---------------------------------------------------


def test_a_damaged_checkpoint_json_says_what_to_delete(tmp_path, built_project, capsys, record):
    from tests.reliability.test_faults import _checkpointing_train, _killed

    argv = _checkpointing_train(built_project, tmp_path)
    _killed("step:5", argv)
    checkpoint = tmp_path / "scratch" / "seed_0" / "checkpoint.json"
    checkpoint.write_text(checkpoint.read_text()[:50])
    line = refused(capsys, argv)
    assert (
        "CheckpointError" in line
        and "checkpoint.json" in line
        and f"delete {tmp_path / 'scratch' / 'seed_0'}" in line
    )
    record("a damaged checkpoint.json, on resume at `distillery train`", line.replace(str(tmp_path), "<tmp>"))


def test_evaluate_refuses_an_export_of_other_weights(tmp_path, built_project, capsys, record):
    """`distillery evaluate` by hand after the student was trained again but not re-exported: the
    leaderboard would put the old model's size and latency beside the new model's accuracy."""
    project = copy_project(built_project, tmp_path / "p")
    params = json.loads(json.dumps(base_params(project)))
    params["students"]["kd"]["arch"]["hidden"] = [12]
    write_params(project / "params.yaml", params)
    shutil.rmtree(project / "scratch", ignore_errors=True)
    from stages.cli import main

    assert main(stage_argv(project, "train")) == 0  # trained again; the export is the old model
    old_metrics = (project / "evaluate" / "kd" / "metrics.json").read_bytes()
    line = refused(capsys, stage_argv(project, "evaluate"))
    assert "StaleExportError" in line and "distillery export --student kd" in line
    assert (project / "evaluate" / "kd" / "metrics.json").read_bytes() == old_metrics
    record("`distillery evaluate` by hand on a model.onnx exported before the student was retrained", line)
    assert main(stage_argv(project, "export")) == 0
    assert main(stage_argv(project, "evaluate")) == 0
