"""open_teacher: each mistake in a teacher ONNX file gets its own error; providers are chosen and
logged in one line; run returns the named outputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import TensorProto

import pipeline.teacher.providers as providers_module
from pipeline.teacher.session import (
    TeacherInputError,
    TeacherModelError,
    TeacherProviderError,
    open_teacher,
    teacher_sha256,
)
from tests.teacher.conftest import tiny_onnx


def test_opens_a_valid_teacher_and_runs_any_batch_size(tiny_teacher):
    teacher = open_teacher(tiny_teacher, provider="cpu")
    assert teacher.provider == "CPUExecutionProvider"
    assert teacher.tap_names == ("embed",) and teacher.output_names == ("logits", "embed")
    for batch in (1, 5):
        outputs = teacher.run(np.ones((batch, 1, 4, 4), np.float64))
        assert outputs["logits"].shape == (batch, 3) and outputs["embed"].shape == (batch, 16)
        assert outputs["logits"].dtype == np.float32


def test_run_accepts_torch_tensors(tiny_teacher):
    import torch

    teacher = open_teacher(tiny_teacher, provider="cpu")
    x = torch.rand(2, 1, 4, 4)
    np.testing.assert_allclose(teacher.run(x)["embed"], x.reshape(2, -1).numpy())


def test_tap_names_can_be_chosen(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx", outputs=("logits", "embed"))
    assert open_teacher(path, tap_names=[], provider="cpu").tap_names == ()


def test_missing_file_says_how_to_get_one(tmp_path):
    with pytest.raises(TeacherModelError, match=r"no such teacher ONNX file.*teacher.onnx"):
        open_teacher(tmp_path / "missing.onnx")


def test_unreadable_bytes_are_not_an_onnx_model(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    with pytest.raises(TeacherModelError, match="not a readable ONNX model.*re-export"):
        open_teacher(path)


def test_missing_output_lists_the_outputs_the_model_has(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx", outputs=("scores", "features"))
    with pytest.raises(TeacherModelError, match=r"no output named 'logits'.*\['scores', 'features'\]"):
        open_teacher(path)


def test_missing_tap_is_named(tiny_teacher):
    with pytest.raises(TeacherModelError, match=r"no output named 'attn'.*\['logits', 'embed'\]"):
        open_teacher(tiny_teacher, tap_names=["embed", "attn"])


def test_missing_input_lists_the_inputs(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx", input_name="pixels")
    with pytest.raises(TeacherModelError, match=r"no input named 'input'.*\['pixels'\]"):
        open_teacher(path)


def test_fixed_batch_of_one_asks_for_a_dynamic_batch_axis(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx", batch=1)
    with pytest.raises(TeacherInputError, match="fixed batch size of 1.*dynamic batch axis"):
        open_teacher(path)


def test_an_input_whose_dtype_differs_from_its_field_is_refused_naming_both(tmp_path):
    teacher = open_teacher(tiny_onnx(tmp_path / "t.onnx", elem_type=TensorProto.DOUBLE), provider="cpu")
    with pytest.raises(TeacherInputError, match=r"input 'input' takes float64 .* field 'input' is float32"):
        teacher.check_input((1, 4, 4))


def test_input_shape_must_match_the_data(tmp_path):
    teacher = open_teacher(tiny_onnx(tmp_path / "t.onnx", input_shape=(1, 4, 4)), provider="cpu")
    teacher.check_input((1, 4, 4))
    with pytest.raises(TeacherInputError, match=r"field 'input' is float32 \[rows, 1, 8, 8\] \(the shape"):
        teacher.check_input((1, 8, 8))
    with pytest.raises(TeacherInputError, match=r"field 'input' is float32 \[rows, 16\] \(the rank"):
        teacher.check_input((16,))


def test_auto_without_a_gpu_logs_one_clean_line(tiny_teacher, caplog, capfd):
    with caplog.at_level(logging.INFO, logger="pipeline.teacher.providers"):
        teacher = open_teacher(tiny_teacher, provider="auto")
    assert teacher.provider == "CPUExecutionProvider"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(
        "teacher runs on CPUExecutionProvider (CUDA provider unavailable:"
    )
    assert "onnxruntime" not in capfd.readouterr().err


def test_auto_falls_back_quietly_when_the_cuda_provider_fails_to_load(
    tiny_teacher, caplog, capfd, monkeypatch
):
    # as on a GPU machine without the CUDA 13 / cuDNN 9 libraries: the probe session falls back
    monkeypatch.setattr(providers_module, "_cuda_plausible", lambda: (True, ""))
    with caplog.at_level(logging.INFO, logger="pipeline.teacher.providers"):
        teacher = open_teacher(tiny_teacher, provider="auto")
    if teacher.provider == "CUDAExecutionProvider":
        pytest.skip("CUDA really works here")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "CUDA provider unavailable: the CUDA provider failed to load" in lines[0]
    assert "[E:onnxruntime" not in capfd.readouterr().err
    assert teacher.run(np.zeros((2, 1, 4, 4), np.float32))["logits"].shape == (2, 3)


def test_cuda_requested_without_cuda_is_a_clear_error(tiny_teacher):
    with pytest.raises(TeacherProviderError, match="teacher.provider is cuda but"):
        open_teacher(tiny_teacher, provider="cuda")


def test_intra_op_threads_is_accepted(tiny_teacher):
    assert open_teacher(tiny_teacher, provider="cpu", intra_op_threads=1).run(np.zeros((1, 1, 4, 4)))


def test_sha256_is_of_the_file_bytes(tiny_teacher):
    import hashlib

    assert teacher_sha256(tiny_teacher) == hashlib.sha256(tiny_teacher.read_bytes()).hexdigest()


def test_io_binding_path_gives_the_same_outputs_as_plain_run(tiny_teacher):
    # the CUDA path's binding calls, run against the CPU provider (no GPU here)
    teacher = open_teacher(tiny_teacher, provider="cpu")
    x = np.random.default_rng(0).random((5, 1, 4, 4), dtype=np.float32)
    bound, plain = teacher._run_bound(x, device_type="cpu"), teacher.run(x)
    for name in teacher.output_names:
        np.testing.assert_array_equal(bound[name], plain[name])
