"""A student exported to ONNX: same outputs as torch at several batch sizes, usable as a teacher."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from pipeline.export.student_onnx import export_student, parity_inputs
from pipeline.students.trained import load_trained_student
from pipeline.teacher.export import OnnxParityError
from pipeline.teacher.session import open_teacher

from .conftest import ARCHS, INPUT_SHAPE, NUM_CLASSES, save_student


@pytest.fixture(scope="module", params=sorted(ARCHS))
def exported(request, tmp_path_factory):
    """(student module, path of its exported ONNX, parity report), once per architecture."""
    root = tmp_path_factory.mktemp(request.param)
    student = load_trained_student(save_student(root / "seed_0", ARCHS[request.param]))
    report = export_student(student, INPUT_SHAPE, root / "model.onnx")
    return student, root / "model.onnx", report


def test_export_matches_torch_at_batch_sizes_1_7_64(exported):
    _, _, report = exported
    assert report["passed"] is True
    assert report["batch_sizes"] == [1, 7, 64]
    assert (report["rtol"], report["atol"]) == (1e-4, 1e-5)
    assert all(stats["max_abs_diff"] <= 1e-5 for stats in report["outputs"].values())


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
    batch = parity_inputs(INPUT_SHAPE, (5,), seed=3)[0]
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
