"""The built-in teacher: deterministic training, export, metrics; the stage with a user's ONNX."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from pipeline.data.prepared import make_prepared, write_prepared
from pipeline.teacher.build import accuracy_per_split, adopt_user_teacher, build_builtin_teacher
from pipeline.teacher.builtin import BuiltinTeacher, BuiltinTeacherError, train_builtin_teacher
from pipeline.teacher.params import BuiltinTeacherParams, TeacherParams
from pipeline.teacher.session import TeacherInputError, open_teacher
from stages import teacher as teacher_stage
from tests.teacher.conftest import tiny_onnx

SMALL = {"channels": [8], "embed_dim": 32, "epochs": 3, "batch_size": 16, "learning_rate": 1e-2}


@pytest.fixture(scope="module")
def digits_subset():
    """300 digits rows, split 200/50/50: enough for the teacher to learn something in a second."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:300] / 16.0)[:, None]
    split = np.array(["train"] * 200 + ["val"] * 50 + ["test"] * 50)
    return make_prepared(np.arange(300), split, digits.target[:300], x, 10)


def test_builtin_cnn_has_logits_embed_and_conv_taps():
    module = BuiltinTeacher((1, 8, 8), 10, channels=[4, 6], embed_dim=8)
    logits, embed, conv = module(torch.rand(3, 1, 8, 8))
    assert logits.shape == (3, 10) and embed.shape == (3, 8) and conv.shape == (3, 6, 4, 4)
    assert module.output_names == ("logits", "embed", "conv")


def test_flat_inputs_get_an_mlp_teacher_and_other_ranks_an_error():
    assert BuiltinTeacher((12,), 3, [4], 8).output_names == ("logits", "embed")
    with pytest.raises(BuiltinTeacherError, match=r"\(C, H, W\) or \(D,\)"):
        BuiltinTeacher((4, 4), 3, [4], 8)


def test_training_is_deterministic_for_a_seed(digits_subset):
    params = BuiltinTeacherParams(**SMALL)
    first = train_builtin_teacher(digits_subset, params, progress=False).module.state_dict()
    second = train_builtin_teacher(digits_subset, params, progress=False).module.state_dict()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)


def test_training_needs_labelled_train_rows(digits_subset):
    data = make_prepared(
        np.arange(4), ["train", "unlabelled", "val", "test"], [-1, -1, 0, 1], np.zeros((4, 1, 8, 8)), 2
    )
    with pytest.raises(BuiltinTeacherError, match="no labelled rows"):
        train_builtin_teacher(data, BuiltinTeacherParams(**SMALL), progress=False)


def test_built_teacher_is_exported_checked_and_measured(tmp_path, digits_subset):
    params = TeacherParams(builtin=BuiltinTeacherParams(**{**SMALL, "epochs": 10}), provider="cpu")
    metrics = build_builtin_teacher(
        digits_subset, digits_subset, params, tmp_path / "model.onnx", progress=False
    )
    assert metrics["source"] == "builtin" and metrics["provider"] == "CPUExecutionProvider"
    assert set(metrics["accuracy"]) == {"train", "val", "test"} and metrics["test_accuracy"] > 0.7
    assert metrics["parity"]["passed"] and metrics["parity"]["batch_sizes"] == [1, 7, 64]
    assert all(o["relative_error"] < params.parity.rtol for o in metrics["parity"]["outputs"].values())
    assert metrics["outputs"] == {"logits": ["batch", 10], "embed": ["batch", 32], "conv": ["batch", 8, 4, 4]}
    assert metrics["parameters"] > 0 and metrics["train_rows"] == 200
    json.dumps(metrics, allow_nan=False)
    teacher = open_teacher(tmp_path / "model.onnx", provider="cpu")
    assert accuracy_per_split(teacher, digits_subset) == metrics["accuracy"]


def test_user_teacher_is_validated_copied_and_measured(tmp_path, tiny_data):
    source = tiny_onnx(tmp_path / "mine.onnx")
    metrics = adopt_user_teacher(
        source, tiny_data, TeacherParams(provider="cpu"), tmp_path / "out" / "model.onnx"
    )
    assert (tmp_path / "out" / "model.onnx").read_bytes() == source.read_bytes()
    assert metrics["source"] == "user" and metrics["parameters"] == 16 * 3
    assert set(metrics["accuracy"]) == {"train", "val", "test"} and metrics["parity_max_abs_diff"] is None


def test_user_teacher_for_other_inputs_is_refused_and_nothing_is_copied(tmp_path, tiny_data):
    source = tiny_onnx(tmp_path / "mine.onnx", input_shape=(1, 8, 8))
    with pytest.raises(TeacherInputError, match=r"is float32 \[rows, 1, 4, 4\]"):
        adopt_user_teacher(source, tiny_data, TeacherParams(provider="cpu"), tmp_path / "out" / "model.onnx")
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_teacher_stage_with_a_user_onnx_writes_model_and_metrics(tmp_path, tiny_data):
    write_prepared(tiny_data, tmp_path / "prepared")
    source = tiny_onnx(tmp_path / "mine.onnx")
    (tmp_path / "params.yaml").write_text(f"teacher:\n  onnx: {source}\n  provider: cpu\n")
    args = argparse.Namespace(
        params=str(tmp_path / "params.yaml"),
        prepared=str(tmp_path / "prepared"),
        out=str(tmp_path / "teacher"),
    )
    assert teacher_stage.run(args) == 0
    metrics = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert metrics["source"] == "user" and (tmp_path / "teacher" / "model.onnx").exists()
