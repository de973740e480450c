"""Any torch module as the teacher: exported with its taps as named ONNX outputs, dynamic batch and
sequence axes, external weight data on request, checked against torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipeline.config import ParamsError
from pipeline.data.prepared import make_prepared
from pipeline.students.factory import FactoryImportError
from pipeline.teacher.export import OnnxExportError
from pipeline.teacher.export_options import InputSpec, TeacherExportError, arch_from_options, parse_input
from pipeline.teacher.external_data import ExternalDataError, external_data_files
from pipeline.teacher.from_torch import export_teacher
from pipeline.teacher.session import open_teacher, teacher_sha256
from stages.cli import main
from tests.export.conftest import _one_thread  # noqa: F401 (autouse: one torch thread per test)
from tests.reliability.project import prepared_arrays
from tests.students.test_own_modules import HF_MISSING

RESNET_TAPS = ["conv=layer2", "embed=pool"]


def _resnet(**options):
    return arch_from_options(
        factory="examples.resnet_student:make_student", kwargs='{"width": 4}', taps=RESNET_TAPS, **options
    )


def test_input_specs_name_a_dtype_and_a_per_row_shape_with_dynamic_axes():
    assert parse_input("input:float32:1,8,8") == InputSpec("input", "float32", (1, 8, 8))
    assert parse_input("input_ids:int64:seq") == InputSpec("input_ids", "int64", ("seq",))
    assert parse_input("mask:bool:-1,4") == InputSpec("mask", "bool", ("dim1", 4))
    assert parse_input("scalar:float32:") == InputSpec("scalar", "float32", ())
    for bad, match in [
        ("input:float32", "expected name:dtype:shape"),
        ("input:complex64:3", "dtype 'complex64' is not known"),
        ("input:float32:0,4", "size '0' is not a positive integer"),
        ("../x:float32:4", "input name '../x' is not allowed"),
    ]:
        with pytest.raises(Exception, match=match):
            parse_input(bad)


def test_export_teacher_options_are_checked_before_anything_runs():
    with pytest.raises(TeacherExportError, match="exactly one of --factory, --timm and --hf"):
        arch_from_options(factory="a:b", timm="resnet18")
    with pytest.raises(TeacherExportError, match="expected name=module.path"):
        arch_from_options(factory="a:b", taps=["embed"])
    with pytest.raises(TeacherExportError, match="--kwargs: not valid JSON"):
        arch_from_options(factory="a:b", kwargs="{width: 3}")
    with pytest.raises(ParamsError, match="arch.factory"):
        arch_from_options(factory="os.system('x')")
    assert arch_from_options(factory="a:b", logits="1").logits == 1
    assert arch_from_options(factory="a:b", logits="scores").logits == "scores"


def test_a_factory_that_cannot_be_imported_is_refused_naming_it(tmp_path):
    arch = arch_from_options(factory="not_there.models:make_teacher", taps=["embed=pool"])
    with pytest.raises(FactoryImportError, match="not_there.models:make_teacher"):
        export_teacher(arch, tmp_path / "model.onnx", [parse_input("input:float32:1,4,4")])
    assert not list(tmp_path.iterdir())


def test_a_tap_named_like_the_logits_and_a_wrong_class_count_are_refused(tmp_path):
    prepared = make_prepared(*prepared_arrays(), 4)
    arch = arch_from_options(factory="examples.resnet_student:make_student", taps=["logits=pool"])
    with pytest.raises(TeacherExportError, match="tap 'logits' has the name of the logits output"):
        export_teacher(arch, tmp_path / "model.onnx", prepared=prepared)
    wrong = arch_from_options(factory="examples.resnet_student:make_student", kwargs='{"num_classes": 3}')
    with pytest.raises(
        TeacherExportError, match="gives 3 logits per row but the prepared data has 4 classes"
    ):
        export_teacher(wrong, tmp_path / "model.onnx", prepared=prepared)
    assert not list(tmp_path.iterdir())


def test_a_user_module_is_exported_with_its_taps_as_named_outputs_and_a_dynamic_batch(tmp_path):
    prepared = make_prepared(*prepared_arrays(), 4)
    (tmp_path / "model.onnx.data").write_bytes(b"stale")  # left by an earlier export with external data
    (tmp_path / ".tmp-export-teacher-999999999" / "raw").mkdir(parents=True)  # a killed export's scratch
    report = export_teacher(_resnet(), tmp_path / "model.onnx", prepared=prepared, parity_batch_sizes=(1, 5))
    assert report["output_names"] == ["logits", "conv", "embed"]
    assert report["tap_shapes"] == {"conv": [8, 2, 2], "embed": [8]}
    assert report["parity"]["passed"] and report["parity"]["rows"] == "prepared"
    assert report["parity"]["batch_sizes"] == [1, 5]
    assert report["external_data"] == [] and not (tmp_path / "model.onnx.data").exists()
    teacher = open_teacher(tmp_path / "model.onnx", provider="cpu")
    assert teacher.tap_names == ("conv", "embed")
    assert teacher.output_dims == {"logits": ["batch", 4], "conv": ["batch", 8, 2, 2], "embed": ["batch", 8]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no scratch left behind


def test_external_weight_data_is_written_beside_the_model_and_hashed_with_it(tmp_path):
    report = export_teacher(
        _resnet(),
        tmp_path / "model.onnx",
        [parse_input("input:float32:1,4,4")],
        external_data="always",
        parity_batch_sizes=(2, 3),
    )
    assert report["external_data"] == ["model.onnx.data"] and report["parity"]["rows"] == "seeded"
    model = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert weights and all(t.data_location == onnx.TensorProto.EXTERNAL for t in weights)
    assert external_data_files(model, tmp_path / "model.onnx") == [tmp_path / "model.onnx.data"]
    before = teacher_sha256(tmp_path / "model.onnx")
    data = bytearray((tmp_path / "model.onnx.data").read_bytes())
    data[100] ^= 0xFF  # new weights under the same .onnx bytes: another teacher
    (tmp_path / "model.onnx.data").write_bytes(bytes(data))
    assert teacher_sha256(tmp_path / "model.onnx") != before


def test_a_teacher_whose_data_file_is_missing_or_outside_its_directory_is_refused(tmp_path):
    export_teacher(
        _resnet(), tmp_path / "model.onnx", [parse_input("input:float32:1,4,4")], external_data="always"
    )
    (tmp_path / "model.onnx.data").rename(tmp_path / "elsewhere.data")
    with pytest.raises(
        ExternalDataError, match="'model.onnx.data', which is missing.*copy it beside model.onnx"
    ):
        open_teacher(tmp_path / "model.onnx", provider="cpu")
    model = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere.data"
    (tmp_path / "sub").mkdir()
    onnx.save(model, str(tmp_path / "sub" / "model.onnx"))
    with pytest.raises(
        ExternalDataError, match="outside the model's directory; keep the data beside the .onnx"
    ):
        open_teacher(tmp_path / "sub" / "model.onnx", provider="cpu")


@pytest.mark.slow
@pytest.mark.skipif(HF_MISSING is not None, reason=f"transformers not importable here: {HF_MISSING}")
def test_a_hugging_face_text_teacher_exports_with_int64_inputs_and_a_dynamic_sequence_axis(tmp_path):
    config = {
        "model_type": "bert",
        "vocab_size": 40,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
        "num_labels": 3,
    }
    arch = arch_from_options(
        hf="AutoModelForSequenceClassification",
        hf_config=json.dumps(config),
        taps=["embed=bert.pooler", "layer1=bert.encoder.layer.1"],
    )
    inputs = [parse_input("input_ids:int64:seq"), parse_input("attention_mask:int64:seq")]
    report = export_teacher(arch, tmp_path / "model.onnx", inputs, parity_batch_sizes=(1, 4))
    assert report["tap_shapes"] == {"embed": [16], "layer1": [8, 16]}
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("input_ids", "tensor(int64)", ["batch", "seq"]),
        ("attention_mask", "tensor(int64)", ["batch", "seq"]),
    ]
    assert [o.shape for o in session.get_outputs()] == [["batch", 3], ["batch", 16], ["batch", "seq", 16]]
    for batch, length in [(2, 5), (3, 11)]:
        ids = np.random.default_rng(length).integers(0, 40, (batch, length))
        outputs = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        assert outputs[2].shape == (batch, length, 16)


def test_a_module_torch_cannot_export_gives_one_line(tmp_path):
    arch = arch_from_options(factory="tests.teacher.test_from_torch:make_unexportable", taps=[])
    with pytest.raises(OnnxExportError, match="torch.onnx.export failed for _Unexportable"):
        export_teacher(arch, tmp_path / "model.onnx", [parse_input("input:float32:4")])
    assert not list(tmp_path.iterdir())


class _Unexportable(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
            return x[:, :2]
        return x[:, 2:]


def make_unexportable():
    """A module whose forward branches on its data."""
    return _Unexportable()


def test_the_command_line_refuses_a_wrong_tap_path_in_one_line_naming_the_closest(tmp_path, capsys):
    argv = ["export-teacher", "--factory", "examples.resnet_student:make_student", "--taps", "embed=layer9"]
    argv += ["--input", "input:float32:1,4,4", "--out", str(tmp_path / "model.onnx")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "distillery export-teacher: TapPathError: tap 'embed': SmallResNet has no module at 'layer9'"
    )
    assert "closest: layer2, layer1" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "model.onnx").exists()
