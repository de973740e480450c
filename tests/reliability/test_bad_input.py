"""Every bad input, through the real command line: exit code 1 and one line
`distillery <stage>: <Error>: <message>` naming the thing and the fix, no traceback, and nothing
already written is lost."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto

from stages.cli import main
from tests.reliability.conftest import refused
from tests.reliability.project import (
    NAN_ROWS,
    NUM_CLASSES,
    base_params,
    cache_without_row,
    copy_project,
    prepared_arrays,
    stage_argv,
    student_recipe,
    teacher_onnx,
    write_dataset,
    write_params,
)

ROOT = Path(__file__).resolve().parents[2]


# --- the teacher ONNX (`distillery teacher` with `teacher.onnx: <your file>`) ---------------------


def _teacher_stage(tmp_path, built_project, onnx_path) -> list[str]:
    params = write_params(tmp_path / "params.yaml", {"teacher": {"onnx": str(onnx_path), "provider": "cpu"}})
    return [
        "teacher",
        "--params",
        str(params),
        "--prepared",
        str(built_project / "prepared"),
        "--out",
        str(tmp_path / "teacher"),
    ]


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is not an ONNX protobuf \x00\xff" * 8)
    return path


TEACHER_CASES = {
    "teacher ONNX missing": lambda p: p / "nowhere.onnx",
    "teacher ONNX unreadable (not an ONNX file)": lambda p: _garbage(p / "garbage.onnx"),
    "teacher ONNX without the named outputs": lambda p: teacher_onnx(
        p / "t.onnx", output_names=("scores", "emb", "map")
    ),
    "teacher ONNX with a fixed batch size of 1": lambda p: teacher_onnx(p / "t.onnx", batch=1),
    "teacher ONNX with a wrong input shape": lambda p: teacher_onnx(p / "t.onnx", input_shape=(1, 5, 5)),
    "teacher ONNX with a wrong input dtype (float64)": lambda p: teacher_onnx(
        p / "t.onnx", elem_type=TensorProto.DOUBLE
    ),
    "teacher ONNX with another number of classes than the dataset": lambda p: teacher_onnx(
        p / "t.onnx", num_classes=5
    ),
}


@pytest.mark.parametrize(
    "item",
    list(TEACHER_CASES),
    ids=[
        "missing",
        "unreadable",
        "no-named-outputs",
        "fixed-batch-1",
        "wrong-input-shape",
        "wrong-input-dtype",
        "other-class-count",
    ],
)
def test_a_bad_teacher_onnx_is_refused_naming_the_file_and_the_fix(
    item, tmp_path, built_project, capsys, record
):
    onnx_path = TEACHER_CASES[item](tmp_path)
    line = refused(capsys, _teacher_stage(tmp_path, built_project, onnx_path))
    assert "TeacherModelError" in line or "TeacherInputError" in line
    assert str(onnx_path) in line
    if "outputs" in item:
        assert all(name in line for name in ("scores", "emb", "map"))  # lists the outputs it has
    if "batch" in item:
        assert "batch" in line
    assert not (tmp_path / "teacher" / "model.onnx").exists()  # nothing copied
    record(item, line)


def _external_teacher(directory: Path, location: str) -> Path:
    """The tiny teacher with its weights moved to the external data file `location`, which is then
    not where the model says (removed, or outside the model's directory)."""
    path = teacher_onnx(directory / "t.onnx")
    onnx.save(
        onnx.load(str(path)), str(path), save_as_external_data=True, location="t.onnx.data", size_threshold=0
    )
    (directory / "t.onnx.data").unlink()
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("location", ["t.onnx.data", "../outside.data"], ids=["missing", "outside"])
def test_a_teacher_whose_external_weights_are_not_beside_it_is_refused_with_the_fix(
    location, tmp_path, built_project, capsys, record
):
    onnx_path = _external_teacher(tmp_path, location)
    line = refused(capsys, _teacher_stage(tmp_path, built_project, onnx_path))
    assert "ExternalDataError" in line and str(onnx_path) in line and repr(location) in line
    assert (
        "copy it beside t.onnx" if location == "t.onnx.data" else "keep the data beside the .onnx"
    ) in line
    assert not (tmp_path / "teacher" / "model.onnx").exists()  # nothing copied
    what = "missing" if location == "t.onnx.data" else "outside the model's directory"
    record(f"teacher ONNX whose external weight data file is {what}", line)


def test_a_bad_teacher_onnx_is_refused_by_the_cache_stage_too(tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    teacher_onnx(project / "teacher" / "model.onnx", input_shape=(1, 5, 5))
    before = (project / "cache" / "store" / "cache.json").read_bytes()
    line = refused(capsys, stage_argv(project, "cache"))
    assert "TeacherInputError" in line and "1, 5, 5]" in line
    assert (project / "cache" / "store" / "cache.json").read_bytes() == before  # the old cache is intact
    record("teacher ONNX with a wrong input shape, at `distillery cache`", line)


def test_a_teacher_with_another_class_count_is_refused_by_the_cache_stage(
    tmp_path, built_project, capsys, record
):
    project = copy_project(built_project, tmp_path / "p")
    teacher_onnx(project / "teacher" / "model.onnx", num_classes=5)
    line = refused(capsys, stage_argv(project, "cache"))
    assert "TeacherOutputError" in line and "5 logits per row but the dataset has 4 classes" in line
    record("teacher ONNX with another number of classes than the dataset, at `distillery cache`", line)


def test_nan_teacher_outputs_name_the_rows(tmp_path, capsys, record):
    write_dataset(tmp_path / "prepared", negative_rows=NAN_ROWS)
    teacher_onnx(tmp_path / "teacher" / "model.onnx", nan_on_negative_input=True)
    write_params(tmp_path / "params.yaml", base_params(tmp_path))
    line = refused(capsys, stage_argv(tmp_path, "cache"))
    sample_id = prepared_arrays()[0]
    assert "TeacherOutputError" in line and "NaN/Inf" in line and "'logits'" in line
    assert all(str(sample_id[row]) in line for row in NAN_ROWS)
    assert not (tmp_path / "cache" / "store").exists()  # no half cache where a finished one goes
    record("NaN/Inf in the teacher's outputs", line)


# --- the dataset (`distillery prepare` on your own npz) -------------------------------------------


def _prepare_npz(tmp_path, ids, labels) -> list[str]:
    _, _, _, inputs = prepared_arrays()
    np.savez(tmp_path / "data.npz", x=inputs, y=labels, ids=ids)
    params = write_params(
        tmp_path / "params.yaml",
        {
            "prepare": {
                "dataset": {"kind": "npz", "path": str(tmp_path / "data.npz"), "num_classes": NUM_CLASSES}
            }
        },
    )
    return ["prepare", "--params", str(params), "--out", str(tmp_path / "prepared")]


def test_labels_out_of_range_are_refused_naming_rows(tmp_path, capsys, record):
    ids, _, labels, _ = prepared_arrays()
    labels = np.maximum(labels, 0)
    labels[[3, 11]] = [NUM_CLASSES, -5]
    line = refused(capsys, _prepare_npz(tmp_path, ids, labels))
    assert "LabelRangeError" in line and "3, 11" in line and "num_classes" in line
    assert not (tmp_path / "prepared").exists()
    record("labels out of range", line)


def test_duplicate_sample_ids_are_refused_naming_them(tmp_path, capsys, record):
    ids, _, labels, _ = prepared_arrays()
    ids = ids.copy()
    ids[7] = ids[2]
    line = refused(capsys, _prepare_npz(tmp_path, ids, np.maximum(labels, 0)))
    assert "DuplicateSampleIdError" in line and str(ids[2]) in line
    record("duplicate sample ids", line)


# --- the cache against the dataset and the teacher -----------------------------------------------


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_cache_built_on_other_data_is_refused(stage, tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    shutil.rmtree(project / "prepared")
    write_dataset(project / "prepared", seed=1)  # the data changed after the cache was built
    before = (project / stage / "kd").exists() and sorted(p.name for p in (project / stage / "kd").rglob("*"))
    line = refused(capsys, stage_argv(project, stage))
    assert "StaleCacheError" in line and "dvc repro cache" in line
    assert (
        (project / stage / "kd").exists() and sorted(p.name for p in (project / stage / "kd").rglob("*"))
    ) == before
    record(f"stale cache (data changed), at `distillery {stage}`", line)


def test_a_cache_from_another_teacher_is_refused_where_the_teacher_file_is_used(
    tmp_path, built_project, capsys, record
):
    project = copy_project(built_project, tmp_path / "p")
    teacher_onnx(project / "teacher" / "model.onnx", output_names=("logits", "embed", "feature_map"))
    for stage in ("leaderboard",):
        line = refused(capsys, stage_argv(project, stage))
        assert "StaleCacheError" in line and "teacher" in line and "dvc repro cache" in line
        record(f"stale cache (teacher changed), at `distillery {stage}`", line)
    line = refused(
        capsys,
        [
            "inspect",
            str(project / "cache" / "store"),
            "--teacher",
            str(project / "teacher" / "model.onnx"),
            "--prepared",
            str(project / "prepared"),
        ],
    )
    assert "StaleCacheError" in line
    record("stale cache (teacher changed), at `distillery inspect --teacher`", line)


def test_dataset_ids_that_do_not_match_the_cache_are_named(tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    prepared = cache_without_row(project, 10)  # a cache missing one row, carrying the dataset's fingerprint
    line = refused(capsys, stage_argv(project, "train"))
    assert "Error" in line and str(prepared.sample_id[10]) in line
    record("dataset ids that do not match the cache", line)


def test_a_half_written_cache_is_never_taken_for_a_finished_one(tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    metadata = project / "cache" / "store" / "cache.json"
    metadata.write_text(metadata.read_text().replace('"complete": true', '"complete": false'))
    line = refused(capsys, stage_argv(project, "train"))
    assert "IncompleteCacheError" in line
    record("a half-written cache (no completion mark) given to `distillery train`", line)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flipped byte", "truncated"])
def test_a_corrupted_cache_chunk_is_detected_naming_array_and_rows(
    how, tmp_path, built_project, capsys, record
):
    project = copy_project(built_project, tmp_path / "p")
    shard = project / "cache" / "store" / "logits" / "c" / "1" / "0"  # rows 32..63
    if how == "flipped byte":
        _flip_byte(shard, 25)
    else:
        shard.write_bytes(shard.read_bytes()[:-9])
    line = refused(capsys, stage_argv(project, "train"))
    assert "CacheCorruptError" in line and "'logits'" in line and "32..63" in line
    assert not (project / "scratch" / "train" / "kd" / "seed_0").exists()
    what = "a flipped byte in a logits shard" if how == "flipped byte" else "a truncated logits shard"
    record(f"{what} of a finished Zarr cache, at `distillery train`", line)


# --- params ----------------------------------------------------------------------------------------


def _train_argv(project: Path, params: Path, tmp_path: Path, student: str = "kd") -> list[str]:
    """`distillery train` on the built project's data with `params`, writing under `tmp_path`."""
    return [
        "train",
        "--student",
        student,
        "--params",
        str(params),
        "--prepared",
        str(project / "prepared"),
        "--out",
        str(tmp_path / "out"),
        "--scratch",
        str(tmp_path / "scratch"),
        "--no-progress",
    ]


PARAMS_CASES = {
    "params: unknown key": (
        lambda r: student_recipe(r, epocs=3),
        r"students\.kd\.epocs: unknown key; did you mean 'epochs'",
    ),
    "params: wrong type": (
        lambda r: student_recipe(r, epochs="many"),
        r"students\.kd\.epochs: expected an integer",
    ),
    "params: unknown loss kind": (
        lambda r: student_recipe(r, loss={"kd": {"kind": "hintonn", "weight": 1.0}}),
        r"students\.kd\.loss\.kd.*hintonn.*hinton",
    ),
    "params: unknown student architecture": (
        lambda r: student_recipe(r, arch={"kind": "transformer"}),
        r"students\.kd\.arch.*transformer.*mlp",
    ),
}


@pytest.mark.parametrize(
    "item", list(PARAMS_CASES), ids=["unknown-key", "wrong-type", "unknown-loss", "unknown-arch"]
)
def test_a_params_typo_names_its_key_path(item, tmp_path, built_project, capsys, record):
    import re

    make, pattern = PARAMS_CASES[item]
    params = base_params(built_project)
    params["students"]["kd"] = make(built_project)
    path = write_params(tmp_path / "params.yaml", params)
    line = refused(capsys, _train_argv(built_project, path, tmp_path))
    assert "ParamsError" in line and re.search(pattern, line), line
    assert not (tmp_path / "out").exists()
    record(item, line)


def test_an_unknown_student_name_lists_the_valid_ones(tmp_path, built_project, capsys, record):
    line = refused(capsys, _train_argv(built_project, built_project / "params.yaml", tmp_path, student="kdd"))
    assert "UnknownStudentError" in line and "kd" in line.split("kdd", 1)[1]
    record("params: unknown student name (`--student kdd`)", line)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_a_feature_tap_that_does_not_exist_is_refused_before_training_naming_the_valid_taps(
    side, tmp_path, built_project, capsys, record
):
    params = base_params(built_project)
    params["students"]["kd"]["loss"]["hint"][f"{side}_tap"] = "nope"
    path = write_params(tmp_path / "params.yaml", params)
    line = refused(capsys, _train_argv(built_project, path, tmp_path))
    valid = "conv (1, 4, 4), embed (8,)" if side == "teacher" else "embed, hidden1"
    assert "MissingTapError" in line and f"{side} tap 'nope'" in line and valid in line
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "scratch").rglob("checkpoint.json"))  # refused before the first step
    record(f"a feature tap the {side} does not have (`{side}_tap: nope`)", line)


# --- checkpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["export", "evaluate"])
def test_a_checkpoint_of_another_architecture_is_refused(stage, tmp_path, built_project, capsys, record):
    import json

    project = copy_project(built_project, tmp_path / "p")
    config_path = project / "train" / "kd" / "seed_0" / "student.json"
    config = json.loads(config_path.read_text())
    config["arch"] = {"kind": "mlp", "hidden": [12]}  # the weights are of hidden [8]
    config_path.write_text(json.dumps(config))
    old = {p.name: p.read_bytes() for p in (project / stage / "kd").iterdir() if p.is_file()}
    line = refused(capsys, stage_argv(project, stage))
    assert "TrainedStudentError" in line and "does not fit this architecture" in line
    assert {
        p.name: p.read_bytes()
        for p in (project / stage / "kd").iterdir()
        if p.is_file() and p.name != "parity.json"
    } == {k: v for k, v in old.items() if k != "parity.json"}
    record(f"a checkpoint from a different architecture, at `distillery {stage}`", line)


# --- the real executable ----------------------------------------------------------------------------


def test_the_installed_command_prints_one_line_and_exits_1(tmp_path, built_project, record):
    params = base_params(built_project)
    params["students"]["kd"]["batch_sise"] = 8
    path = write_params(tmp_path / "params.yaml", params)
    command = Path(sys.executable).with_name("distillery")
    result = subprocess.run(
        [
            str(command),
            "train",
            "--student",
            "kd",
            "--params",
            str(path),
            "--prepared",
            str(built_project / "prepared"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == result.stderr.strip()
    assert result.stderr.startswith("distillery train: ParamsError: students.kd.batch_sise: unknown key")
    record("params: unknown key, through the installed `distillery` executable", result.stderr.strip())


def test_a_misspelt_section_name_is_refused(tmp_path, built_project, capsys, record):
    params = base_params(built_project)
    params["evalute"] = params.pop("evaluate")
    path = write_params(tmp_path / "params.yaml", params)
    argv = stage_argv(built_project, "evaluate", params=path)
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    line = refused(capsys, argv)
    assert "ParamsError" in line and "evalute: unknown section; did you mean 'evaluate'?" in line
    assert not (tmp_path / "out").exists()
    record("params: a misspelt section name (`evalute:`)", line)


@pytest.mark.parametrize(
    "text",
    [
        "students:\n  kd:\n    epochs: 1\n   seeds: [0]\n",
        "students: !!python/object/apply:os.system ['echo pwned']\n",
    ],
    ids=["bad-indentation", "python-tag"],
)
def test_params_that_are_not_plain_yaml_are_refused(text, tmp_path, built_project, capsys, record):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    line = refused(capsys, _train_argv(built_project, path, tmp_path))
    assert "ParamsError" in line and "not valid params YAML" in line
    kind = "a Python object tag (the safe loader refuses it)" if "python" in text else "bad indentation"
    record(f"params: not valid YAML, {kind}", line)


def test_pickled_weights_are_refused_not_unpickled(tmp_path, built_project, capsys, record):
    import torch

    project = copy_project(built_project, tmp_path / "p")
    weights = project / "train" / "kd" / "seed_0" / "model.safetensors"
    torch.save({"embed.weight": torch.zeros(2)}, str(weights))  # a pickle under the safetensors name
    line = refused(capsys, stage_argv(project, "export"))
    assert "TrainedStudentError" in line and "never unpickled" in line
    record("a checkpoint that is a torch.save pickle renamed model.safetensors, at `distillery export`", line)


def test_a_damaged_training_checkpoint_says_what_to_delete(tmp_path, built_project, capsys, record):
    from tests.reliability.test_faults import _killed

    params = base_params(built_project)
    params["students"]["kd"].update(epochs=2, checkpoint_every_steps=3)
    path = write_params(tmp_path / "params.yaml", params)
    argv = _train_argv(built_project, path, tmp_path)
    _killed("step:5", argv)
    state = next((tmp_path / "scratch" / "seed_0").glob("state-*.safetensors"))
    state.write_bytes(state.read_bytes()[:100])
    line = refused(capsys, argv)
    assert "CheckpointError" in line and f"delete {tmp_path / 'scratch' / 'seed_0'}" in line
    record("a training checkpoint damaged on disk, on resume at `distillery train`", line)


def test_a_missing_zarr_shard_file_is_detected_by_the_manifest(tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    (project / "cache" / "store" / "features" / "embed" / "c" / "2" / "0").unlink()  # rows 64..95
    line = refused(capsys, stage_argv(project, "train"))
    assert "CacheCorruptError" in line and "'features/embed'" in line and "64..95" in line
    record("a shard file deleted from a finished Zarr cache, at `distillery train`", line)


def test_a_corrupted_parquet_page_is_detected_naming_array_and_rows(tmp_path, built_project, capsys, record):
    import pyarrow.parquet as pq

    project = copy_project(built_project, tmp_path / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["cache"]["store"] = "parquet"
    write_params(project / "params.yaml", params)
    shutil.rmtree(project / "cache" / "store")
    assert main(stage_argv(project, "cache")) == 0
    path = project / "cache" / "store" / "part-000001.parquet"  # rows 32..63
    meta = pq.ParquetFile(path).metadata.row_group(0)
    column = next(
        meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.startswith("logits")
    )
    _flip_byte(path, column.data_page_offset + column.total_compressed_size - 3)
    line = refused(capsys, stage_argv(project, "train"))
    assert "CacheCorruptError" in line and "'logits'" in line and "32..63" in line
    record("a flipped byte in a finished Parquet cache's logits page, at `distillery train`", line)
