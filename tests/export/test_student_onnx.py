"""A student exported to ONNX: same outputs as torch at several batch sizes, usable as a teacher."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from pipeline.export.student_onnx import export_student, standard_normal_rows
from pipeline.students.trained import load_trained_student
from pipeline.teacher.export import OnnxExportError, OnnxParityError
from pipeline.teacher.session import open_teacher

from .conftest import ARCHS, INPUT_SHAPE, NUM_CLASSES, save_student


@pytest.fixture(scope="module", params=sorted(ARCHS))
def exported(request, tmp_path_factory):
    """(student module, path of its exported ONNX, parity report), once per architecture."""
    root = tmp_path_factory.mktemp(request.param)
    student = load_trained_student(save_student(root / "seed_0", ARCHS[request.param]))
    report = export_student(student, INPUT_SHAPE, root / "model.onnx", parity_rows=digit_like_rows())
    return student, root / "model.onnx", report


def digit_like_rows(count: int = 100, seed: int = 0) -> np.ndarray:
    """Rows shaped and scaled like the prepared digits (pixel values 0..16)."""
    return np.random.default_rng(seed).integers(0, 17, (count, *INPUT_SHAPE)).astype(np.float32)


def test_export_matches_torch_at_batch_sizes_1_7_64_on_the_rows_given(exported):
    _, _, report = exported
    assert report["passed"] is True
    assert report["batch_sizes"] == [1, 7, 64]
    assert report["inputs"] == {"source": "prepared rows", "seed": 0}
    assert (report["rtol"], report["atol"]) == (1e-4, 1e-5) and "max|torch|" in report["rule"]
    for stats in report["outputs"].values():
        assert stats["passed"] and stats["scale"] > 0 and stats["relative_error"] < 1e-4


def test_without_rows_the_report_says_the_inputs_were_noise(tmp_path):
    student = load_trained_student(save_student(tmp_path / "seed_0", ARCHS["mlp"]))
    report = export_student(student, INPUT_SHAPE, tmp_path / "model.onnx")
    assert report["passed"] and report["inputs"]["source"] == "standard normal"


def test_rows_of_another_shape_are_refused(tmp_path):
    student = load_trained_student(save_student(tmp_path / "seed_0", ARCHS["mlp"]))
    with pytest.raises(OnnxExportError, match=r"parity rows have shape \[1, 8, 8\] but the student takes"):
        export_student(student, INPUT_SHAPE, tmp_path / "model.onnx", parity_rows=np.zeros((4, 1, 8, 8)))
    assert not (tmp_path / "model.onnx").exists()


def test_exported_model_has_input_logits_and_every_tap_with_a_dynamic_batch(exported):
    student, path, report = exported
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits", *student.tap_shapes]
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param, f"{value.name} has a fixed batch axis"
    assert not list(path.parent.glob("*.data")), "weights must live inside the .onnx file"
    assert report["outputs"].keys() == {"logits", *student.tap_shapes}


def test_exported_student_opens_as_the_teacher_of_the_next_cache(exported):
    student, path, _ = exported
    teacher = open_teacher(path, provider="cpu")
    assert teacher.tap_names == tuple(student.tap_shapes)
    batch = standard_normal_rows(INPUT_SHAPE, 5, seed=3)
    outputs = teacher.run(batch)
    with torch.no_grad():
        expected = student(torch.from_numpy(batch))
    np.testing.assert_allclose(outputs["logits"], expected.logits.numpy(), rtol=1e-4, atol=1e-5)
    assert outputs["logits"].shape == (5, NUM_CLASSES)
    for tap, shape in student.tap_shapes.items():
        assert outputs[tap].shape == (5, *shape)


def test_a_student_that_fails_parity_is_never_installed(tmp_path):
    student = load_trained_student(save_student(tmp_path / "seed_0", ARCHS["mlp"]))
    # a torch module that answers differently from its export: perturb it after export
    original_forward = student.forward

    def shifted(inputs):
        output = original_forward(inputs)
        return type(output)(output.logits + (0.1 if shifted.armed else 0.0), output.features)

    shifted.armed = False
    student.forward = shifted
    from pipeline.teacher import export as teacher_export

    real_check = teacher_export.check_onnx_parity

    def armed_check(*args, **kwargs):
        shifted.armed = True
        return real_check(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(teacher_export, "check_onnx_parity", armed_check)
        with pytest.raises(OnnxParityError, match="logits"):
            export_student(student, INPUT_SHAPE, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed_0"]
