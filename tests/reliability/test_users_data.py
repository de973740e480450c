"""Users' data as they have it, through the real command line: string sample ids and class names go
through every stage and show up as the user wrote them; labels of any other kind, a teacher tap left
out of the cache, a tap of width 1, the wrong `logits_name`, a section naming a student that is not
there and a split value we do not know are each one line saying what to do."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from stages.cli import main
from tests.reliability.conftest import refused
from tests.reliability.project import (
    CLASS_NAMES,
    NAN_ROWS,
    base_params,
    cache_without_row,
    copy_project,
    named_prepare_params,
    prepared_arrays,
    stage_argv,
    teacher_onnx,
    user_ids,
    write_named_npz,
    write_params,
)


def _named_params(root: Path, npz: Path) -> dict:
    return {"prepare": named_prepare_params(npz), **base_params(root)}


@pytest.fixture(scope="module")
def named_project(tmp_path_factory) -> Path:
    """The tiny project from an npz with string ids (`img-005035`) and class names (ant, bee, cat, dog),
    every stage from prepare to the leaderboard run through the command line (do not modify)."""
    root = tmp_path_factory.mktemp("named")
    write_params(root / "params.yaml", _named_params(root, write_named_npz(root / "user" / "data.npz")))
    teacher_onnx(root / "teacher" / "model.onnx")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for stage in ("prepare", "cache", "train", "export", "evaluate", "leaderboard"):
            assert main(stage_argv(root, stage)) == 0, f"distillery {stage} failed on the named project"
    finally:
        torch.set_num_threads(threads)
    return root


def test_string_ids_and_class_names_are_kept_and_shown_by_every_stage(named_project):
    from pipeline.data.prepared import load_prepared

    prepared = load_prepared(named_project / "prepared")
    sample_id, _, label, _ = prepared_arrays()
    assert prepared.class_names == CLASS_NAMES
    assert prepared.user_id.tolist() == user_ids(sample_id).tolist()  # the user's ids, in their order
    np.testing.assert_array_equal(prepared.label, label)  # names numbered in sorted order
    meta = json.loads((named_project / "prepared" / "meta.json").read_text())
    assert meta["class_names"] == list(CLASS_NAMES) and meta["sample_ids"] == "string"

    metrics = json.loads((named_project / "evaluate" / "kd" / "metrics.json").read_text())
    assert list(metrics["per_class"]) == list(CLASS_NAMES)
    assert all(0.0 <= value["mean"] <= 1.0 for value in metrics["per_class"].values())
    rows = list(csv.DictReader((named_project / "leaderboard" / "leaderboard.csv").open()))
    student = next(row for row in rows if row["model"] == "kd")
    assert student["weakest_class"] in CLASS_NAMES
    assert f"| {student['weakest_class']} " in (named_project / "leaderboard" / "leaderboard.md").read_text()


def test_dataset_ids_that_do_not_match_the_cache_are_named_as_the_user_wrote_them(
    tmp_path, named_project, capsys, record
):
    project = copy_project(named_project, tmp_path / "p")
    prepared = cache_without_row(project, 10)  # a cache missing one row, carrying the dataset's fingerprint
    line = refused(capsys, stage_argv(project, "train"))
    assert "CacheAlignmentError" in line and prepared.user_id[10] in line
    assert str(prepared.sample_id[10]) not in line  # the user's id, not the internal key
    record("dataset string ids that do not match the cache", line)


def test_nan_teacher_outputs_name_the_users_string_ids(tmp_path, capsys, record):
    npz = write_named_npz(tmp_path / "user" / "data.npz", negative_rows=NAN_ROWS)
    write_params(tmp_path / "params.yaml", _named_params(tmp_path, npz))
    assert main(stage_argv(tmp_path, "prepare")) == 0
    teacher_onnx(tmp_path / "teacher" / "model.onnx", nan_on_negative_input=True)
    line = refused(capsys, stage_argv(tmp_path, "cache"))
    wanted = user_ids(prepared_arrays()[0][list(NAN_ROWS)])
    assert "TeacherOutputError" in line and all(name in line for name in wanted), line
    record("NaN/Inf in the teacher's outputs, string sample ids", line)


# --- labels that are neither class indices nor class names ------------------------------------------


def _npz_labels(path: Path, labels) -> Path:
    sample_id, _, _, inputs = prepared_arrays()
    np.savez(path, x=inputs, y=labels, ids=sample_id)
    return path


def _parquet_list_labels(path: Path) -> Path:
    sample_id, _, label, inputs = prepared_arrays()
    flat = inputs.reshape(len(inputs), -1)
    table = pa.table(
        {
            "id": pa.array(sample_id),
            "label": pa.array([[max(int(v), 0), 1] for v in label]),  # two classes per row
            "input": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]),
        }
    )
    pq.write_table(table, path)
    return path


LABEL_CASES = {
    "labels with fractions": (
        lambda p: _npz_labels(p / "d.npz", np.linspace(0, 3, 96)),
        "np.rint(y).astype(int)",
    ),
    "labels that are true/false": (
        lambda p: _npz_labels(p / "d.npz", np.arange(96) % 2 == 0),
        "y.astype(int)",
    ),
    "labels of shape (rows, 1)": (
        lambda p: _npz_labels(p / "d.npz", np.maximum(prepared_arrays()[2], 0)[:, None]),
        "y.reshape(-1)",
    ),
    "labels that are a list per row (Parquet)": (
        lambda p: _parquet_list_labels(p / "d.parquet"),
        "one class",
    ),
}


@pytest.mark.parametrize("item", list(LABEL_CASES), ids=["fractions", "bools", "column", "nested"])
def test_labels_that_are_neither_indices_nor_names_say_how_to_map_them(item, tmp_path, capsys, record):
    make, advice = LABEL_CASES[item]
    path = make(tmp_path)
    kind = "parquet" if path.suffix == ".parquet" else "npz"
    dataset = {"kind": kind, "path": str(path)} | ({"input_shape": [1, 4, 4]} if kind == "parquet" else {})
    write_params(tmp_path / "params.yaml", {"prepare": {"dataset": dataset}})
    line = refused(capsys, stage_argv(tmp_path, "prepare"))
    assert "LabelTypeError" in line and advice in line, line
    assert not (tmp_path / "prepared").exists()
    record(item, line)


def test_an_unknown_split_value_is_named_without_a_numpy_repr(tmp_path, capsys, record):
    sample_id, split, label, inputs = prepared_arrays()
    split = np.where(split == "val", "validation", split)
    np.savez(tmp_path / "d.npz", x=inputs, y=label, ids=sample_id, split=split)
    write_params(
        tmp_path / "params.yaml",
        {"prepare": {"dataset": {"kind": "npz", "path": str(tmp_path / "d.npz"), "split_array": "split"}}},
    )
    line = refused(capsys, stage_argv(tmp_path, "prepare"))  # refused() also refuses any numpy repr
    assert "SplitValueError" in line and "split values 'validation' are not known" in line
    record("a split value we do not know (`validation`)", line)


# --- taps and the teacher's outputs -----------------------------------------------------------------


def test_a_teacher_tap_left_out_of_the_cache_says_to_add_it_to_tap_names(
    tmp_path, built_project, capsys, record
):
    project = copy_project(built_project, tmp_path / "p")
    params = base_params(project)
    params["teacher"]["tap_names"] = ["embed"]  # the teacher also has `conv`
    params["students"]["kd"]["loss"]["hint"].update(student_tap="embed", teacher_tap="conv", project="none")
    write_params(project / "params.yaml", params)
    shutil.rmtree(project / "cache" / "store")
    assert main(stage_argv(project, "cache")) == 0
    line = refused(capsys, stage_argv(project, "train"))
    assert "MissingTapError" in line and "teacher tap 'conv'" in line
    assert "teacher.tap_names" in line and "dvc repro cache" in line
    record("a teacher tap left out of the cache by `teacher.tap_names`", line)


@pytest.mark.parametrize("kind", ["feature", "rkd", "crd"])
def test_a_tap_one_value_wide_is_refused_before_training(kind, tmp_path, built_project, capsys, record):
    params = base_params(built_project)
    recipe = params["students"]["kd"]
    recipe["arch"] = {"kind": "mlp", "hidden": [8, 1]}  # the student's `embed` tap is one number per row
    term = {"kind": kind, "weight": 1.0, "student_tap": "embed", "teacher_tap": "embed"}
    if kind != "rkd":
        term["project"] = "student_to_teacher"
    recipe["loss"] = {"ce": {"kind": "ce", "weight": 1.0}, "hint": term}
    path = write_params(tmp_path / "params.yaml", params)
    argv = stage_argv(built_project, "train", params=path)
    argv[argv.index("--out") + 1], argv[argv.index("--scratch") + 1] = (
        str(tmp_path / "out"),
        str(tmp_path / "s"),
    )
    line = refused(capsys, argv)
    assert "NarrowTapError" in line and f"loss term 'hint' ({kind})" in line and "student tap 'embed'" in line
    assert "hidden1 (8,)" in line  # the wider taps it could use
    assert not (tmp_path / "out").exists()
    record(f"a {kind} term on a tap one value wide", line)


def test_the_wrong_logits_name_lists_every_output_and_suggests_the_right_one(
    tmp_path, built_project, capsys, record
):
    onnx_path = teacher_onnx(tmp_path / "t.onnx")
    params = write_params(
        tmp_path / "params.yaml",
        {"teacher": {"onnx": str(onnx_path), "provider": "cpu", "logits_name": "embed"}},
    )
    argv = ["teacher", "--params", str(params), "--prepared", str(built_project / "prepared")]
    line = refused(capsys, [*argv, "--out", str(tmp_path / "teacher")])
    assert (
        "TeacherModelError" in line and "logits (batch, 4), embed (batch, 8), conv (batch, 1, 4, 4)" in line
    )
    assert "set teacher.logits_name: logits" in line and "num_classes" not in line
    record("`teacher.logits_name` naming an output that is not the class logits", line)


# --- sections naming a student that is not under `students:` ----------------------------------------

REFERENCE_CASES = {
    "chains": ({"chains": {"ta": {"teacher": "kdd"}}}, "chains.ta.teacher: no student named 'kdd'"),
    "label_curve": (
        {"label_curve": {"students": ["kd", "ce_only"]}},
        "label_curve.students: no student named",
    ),
    "sweep": ({"sweep": {"students": ["kd2"]}}, "sweep.students: no student named 'kd2'"),
}


@pytest.mark.parametrize("section", list(REFERENCE_CASES))
def test_a_section_naming_a_student_that_is_not_there_is_one_line_at_any_stage(
    section, tmp_path, built_project, capsys, record
):
    extra, message = REFERENCE_CASES[section]
    path = write_params(tmp_path / "params.yaml", {**base_params(built_project), **extra})
    line = refused(capsys, ["check-params", "--params", str(path), "--out", str(tmp_path / "checked.json")])
    assert "ParamsError" in line and message in line and "valid: kd" in line
    assert not (tmp_path / "checked.json").exists()
    argv = stage_argv(built_project, "evaluate", params=path)  # any stage reading params says the same
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    assert refused(capsys, argv).split(": ", 1)[1] == line.split(": ", 1)[1]
    record(f"`{section}:` naming a student that is not under `students:`", line)


# --- the same through `dvc repro`, where DVC resolves dvc.yaml before any stage runs -------------

DVC_CASES = {
    "chains": "chain_cache@ta",
    "label_curve": "label_curve",
}


@pytest.mark.slow
@pytest.mark.parametrize("section", list(DVC_CASES))
def test_dvc_repro_gives_the_one_line_before_dvc_trips_over_the_missing_student(section, tmp_path, record):
    """Without check_params, DVC itself fails first: `No such file or directory:
    data/train/assistent` (chains) or `Parameters 'students.kd_new' are missing` (a
    label_curve student listed in dvc.yaml, as its comment says to)."""
    import os
    import subprocess
    import sys

    import yaml

    project = Path(__file__).resolve().parents[2]
    binary = Path(sys.executable).parent
    if shutil.which("git") is None or not (binary / "dvc").exists():
        pytest.skip("needs git and dvc")
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=project,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, files.split("\0")):
        if (project / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / name, tmp_path / name)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    if section == "chains":
        params["chains"]["ta"]["teacher"] = "assistent"
        wanted = (
            "chains.ta.teacher: no student named 'assistent' under `students:`; did you mean 'assistant'?"
        )
    else:
        params["label_curve"]["students"] = ["ce_baseline", "kd_new"]
        dvc_yaml = (tmp_path / "dvc.yaml").read_text()
        (tmp_path / "dvc.yaml").write_text(dvc_yaml.replace("- students.hinton", "- students.kd_new", 1))
        wanted = "label_curve.students: no student named 'kd_new' under `students:`"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{binary}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(tmp_path),
    }
    env["DVC_NO_ANALYTICS"] = "1"
    for args in (
        ["git", "init", "-q"],
        ["git", "-c", "user.email=t@distillery.invalid", "-c", "user.name=t", "add", "-A"],
        ["git", "-c", "user.email=t@distillery.invalid", "-c", "user.name=t", "commit", "-qm", "project"],
    ):
        subprocess.run(args, cwd=tmp_path, env=env, check=True, capture_output=True)
    result = subprocess.run(
        ["dvc", "repro", DVC_CASES[section]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    line = next(line for line in output.splitlines() if line.startswith("distillery check-params: "))
    assert line == f"distillery check-params: ParamsError: params.yaml: {wanted}" + line.split(wanted, 1)[1]
    assert "No such file or directory" not in output and "are missing" not in output
    assert "Running stage 'prepare'" not in output  # nothing ran before the check
    record(f"`{section}:` naming a student that is not under `students:`, through `dvc repro`", line)
