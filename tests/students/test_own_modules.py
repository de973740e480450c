"""Any torch module as a student: a factory named in params, taps read by module path with forward
hooks, logits found in any output, timm and Hugging Face models where installed."""

from __future__ import annotations

import copy
import json
import sys
import types

import pytest
import torch
from torch import nn

from pipeline.config import ParamsError
from pipeline.students import TrainedStudentError, build_student, load_trained_student, parse_arch
from pipeline.students.factory import FactoryCallError, FactoryImportError, load_factory
from pipeline.students.taps import (
    LogitsError,
    TapOutputError,
    TapPathError,
    TappedModel,
    measure,
    select_logits,
)
from pipeline.students.trained import save_trained_student
from pipeline.students.zoo import MissingExtraError, import_optional

RESNET = {
    "kind": "python",
    "factory": "examples.resnet_student:make_student",
    "kwargs": {"width": 4},
    "taps": {"conv": "layer2", "embed": "pool"},
}


class _DictOut(nn.Module):
    """Returns {"hidden": ..., "scores": logits}, or (hidden, logits) with as_tuple."""

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.body = nn.Linear(64, 6)
        self.head = nn.Linear(6, 10)
        self.as_tuple = as_tuple

    def forward(self, x):
        hidden = torch.relu(self.body(x.flatten(1)))
        scores = self.head(hidden)
        return (hidden, scores) if self.as_tuple else {"hidden": hidden, "scores": scores}


class _Transposed(nn.Module):
    def forward(self, x):
        return x.T


def make_dict_model(as_tuple: bool = False):
    """Factory used by the tests below (tests.students.test_own_modules:make_dict_model)."""
    return _DictOut(as_tuple)


def make_three_class_model(input_shape):
    """A factory that ignores num_classes (3 logits whatever the data)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 3))


def make_not_a_module():
    """A factory returning something that is not a module."""
    return {"weights": [1, 2]}


def test_a_user_factory_trains_as_a_student_with_taps_read_by_module_path():
    model = build_student(RESNET, (1, 8, 8), 10)
    assert model.training
    assert model.tap_shapes == {"conv": (8, 4, 4), "embed": (8,)}
    output = model(torch.randn(5, 1, 8, 8))
    assert output.logits.shape == (5, 10)
    assert list(output.features) == ["conv", "embed"]
    output.logits.sum().backward()  # the hooked taps are part of the graph, the module unchanged
    assert model.model.fc.weight.grad is not None


def test_the_factory_gets_num_classes_and_input_shape_when_its_signature_takes_them():
    model = build_student(RESNET, (3, 6, 6), 7)
    assert model.model.stem[0].in_channels == 3
    assert model(torch.randn(2, 3, 6, 6)).logits.shape == (2, 7)


def test_a_tap_path_that_does_not_exist_is_refused_naming_the_closest_paths():
    arch = RESNET | {"taps": {"embed": "layer3"}}
    with pytest.raises(
        TapPathError, match=r"tap 'embed': SmallResNet has no module at 'layer3'; closest: layer2, layer1"
    ):
        build_student(arch, (1, 8, 8), 10)


def test_a_factory_string_is_checked_for_its_form_before_anything_is_imported():
    for bad in ("os.system('rm -rf /')", "examples.resnet_student", "a:b:c", "os:__dict__", "../x:y"):
        with pytest.raises(ParamsError, match="arch.factory"):
            parse_arch(RESNET | {"factory": bad})


def test_a_factory_that_cannot_be_imported_is_named():
    with pytest.raises(
        FactoryImportError, match="factory 'no_such_pkg.models:make'.*No module named 'no_such_pkg'"
    ):
        build_student(RESNET | {"factory": "no_such_pkg.models:make"}, (1, 8, 8), 10)
    with pytest.raises(FactoryImportError, match="has no attribute 'make_teacher'"):
        load_factory("examples.resnet_student:make_teacher")


def test_tap_names_must_be_safe_names_and_tap_paths_module_paths():
    with pytest.raises(ParamsError, match="not allowed"):
        parse_arch(RESNET | {"taps": {"../x": "layer1"}})
    with pytest.raises(ParamsError, match="not a module path"):
        parse_arch(RESNET | {"taps": {"embed": "layer1; rm"}})


def test_logits_are_found_by_key_or_index_of_a_dict_or_tuple_output():
    factory = "tests.students.test_own_modules:make_dict_model"
    by_key = build_student(
        {"kind": "python", "factory": factory, "logits": "scores", "taps": {"embed": "body"}}, (64,), 10
    )
    assert by_key.tap_shapes == {"embed": (6,)}
    by_index = build_student(
        {"kind": "python", "factory": factory, "kwargs": {"as_tuple": True}, "logits": 1}, (64,), 10
    )
    assert by_index(torch.randn(2, 64)).logits.shape == (2, 10)
    with pytest.raises(
        LogitsError,
        match=r"no logits tensor at the output of a model returning a dict with keys \['hidden', 'scores'\]",
    ):
        build_student({"kind": "python", "factory": factory}, (64,), 10)


def test_select_logits_reads_tensors_attributes_keys_and_indices():
    logits = torch.zeros(2, 3)
    assert select_logits(logits) is logits
    assert select_logits(types.SimpleNamespace(logits=logits)) is logits
    assert select_logits({"logits": logits}) is logits
    assert select_logits((logits, torch.ones(1))) is logits
    assert select_logits((torch.ones(1), logits), 1) is logits


def test_a_student_with_the_wrong_number_of_classes_is_refused():
    arch = {"kind": "python", "factory": "tests.students.test_own_modules:make_three_class_model"}
    with pytest.raises(LogitsError, match="gives 3 logits per row but the dataset has 10 classes"):
        build_student(arch, (1, 8, 8), 10)


def test_a_factory_that_returns_no_module_is_refused():
    with pytest.raises(FactoryCallError, match="returned a dict, not a torch.nn.Module"):
        build_student(
            {"kind": "python", "factory": "tests.students.test_own_modules:make_not_a_module"}, (4,), 2
        )


def test_a_tap_whose_batch_axis_is_not_first_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), _Transposed(), _Transposed())
    tapped = TappedModel(model, {"embed": "2"})  # (features, batch), as a sequence-first layer gives
    with pytest.raises(TapOutputError, match=r"tap 'embed' \(2\) gives shape \[5, 3\] for a batch of 3"):
        measure(tapped, (torch.randn(3, 4),), 3)


def test_a_tapped_module_that_forward_never_calls_is_refused():
    model = nn.ModuleDict({"used": nn.Linear(4, 2), "unused": nn.Linear(4, 2)})
    model.forward = lambda x: model["used"](x)
    tapped = TappedModel(model, {"embed": "unused"})
    with pytest.raises(TapOutputError, match="were not called in forward"):
        tapped(torch.randn(2, 4))


def test_a_deep_copy_of_a_tapped_student_reads_its_own_taps():
    model = build_student(RESNET, (1, 8, 8), 10).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.model.fc.weight.add_(1.0)
        inputs = torch.randn(2, 1, 8, 8)
        torch.testing.assert_close(model(inputs).features["embed"], twin(inputs).features["embed"])
        assert not torch.equal(model(inputs).logits, twin(inputs).logits)


def _save(seed_dir, arch, input_shape=(1, 8, 8), num_classes=10):
    torch.manual_seed(0)
    model = build_student(arch, input_shape, num_classes)
    save_trained_student(
        seed_dir,
        model,
        {
            "student": "own",
            "seed": 0,
            "arch": parse_arch(arch).model_dump(mode="json"),
            "input_shape": list(input_shape),
            "num_classes": num_classes,
        },
    )
    return model


def test_a_factory_student_round_trips_through_student_json(tmp_path):
    model = _save(tmp_path / "seed_0", RESNET)
    config = json.loads((tmp_path / "seed_0" / "student.json").read_text())
    assert config["arch"]["factory"] == RESNET["factory"] and config["arch"]["kwargs"] == {"width": 4}
    assert config["tap_shapes"] == {"conv": [8, 4, 4], "embed": [8]}
    loaded = load_trained_student(tmp_path / "seed_0")
    inputs = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded(inputs).logits, model.eval()(inputs).logits, rtol=0, atol=0)


def test_a_trained_student_whose_factory_is_gone_is_refused_naming_it(tmp_path):
    _save(tmp_path / "seed_0", RESNET)
    config = json.loads((tmp_path / "seed_0" / "student.json").read_text())
    config["arch"]["factory"] = "moved_away.models:make_student"
    (tmp_path / "seed_0" / "student.json").write_text(json.dumps(config))
    with pytest.raises(
        TrainedStudentError, match="cannot be rebuilt: factory 'moved_away.models:make_student'"
    ):
        load_trained_student(tmp_path / "seed_0")


@pytest.fixture
def fake_timm(monkeypatch):
    """A stand-in `timm` package whose create_model makes the example ResNet (the real timm needs a
    torchvision built for this torch); records the calls."""
    from examples.resnet_student import SmallResNet

    calls = []

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3, **kwargs):
        calls.append(
            {"name": name, "pretrained": pretrained, "num_classes": num_classes, "in_chans": in_chans}
        )
        return SmallResNet(num_classes, in_chans, kwargs.get("width", 4), (1, 1))

    module = types.ModuleType("timm")
    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", module)
    return calls


def test_a_timm_student_is_made_with_the_data_classes_and_channels_and_rebuilt_without_download(
    tmp_path, fake_timm
):
    arch = {"kind": "timm", "name": "resnet18", "pretrained": True, "taps": {"embed": "pool"}}
    _save(tmp_path / "seed_0", arch, input_shape=(8, 8))
    assert fake_timm[0] == {"name": "resnet18", "pretrained": True, "num_classes": 10, "in_chans": 1}
    config = json.loads((tmp_path / "seed_0" / "student.json").read_text())
    assert config["arch"]["pretrained"] is False  # the checkpoint holds the weights
    loaded = load_trained_student(tmp_path / "seed_0")
    assert fake_timm[-1]["pretrained"] is False
    assert loaded(torch.randn(2, 8, 8)).logits.shape == (2, 10)  # (H, W) rows read as one channel


def test_a_missing_optional_package_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'distillery\[timm\]'"):
        build_student({"kind": "timm", "name": "resnet18"}, (1, 8, 8), 10)


def _importable(package: str) -> str | None:
    try:
        import_optional(package)
    except MissingExtraError as error:
        return str(error)
    return None


TIMM_MISSING = _importable("timm")
HF_MISSING = _importable("transformers")


@pytest.mark.skipif(TIMM_MISSING is not None, reason=f"timm not importable here: {TIMM_MISSING}")
def test_a_real_timm_resnet_is_a_student_with_hooked_taps():
    model = build_student(
        {"kind": "timm", "name": "resnet18", "taps": {"embed": "global_pool"}}, (1, 8, 8), 10
    )
    assert model.tap_shapes == {"embed": (512,)}
    assert model(torch.randn(2, 1, 8, 8)).logits.shape == (2, 10)


VIT = {
    "kind": "hf",
    "model_class": "AutoModelForImageClassification",
    "config": {
        "model_type": "vit",
        "image_size": 8,
        "patch_size": 4,
        "num_channels": 1,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    },
    "taps": {"embed": "vit.layernorm", "layer1": "vit.layers.1"},
}


@pytest.mark.skipif(HF_MISSING is not None, reason=f"transformers not importable here: {HF_MISSING}")
def test_a_tiny_hugging_face_vit_is_a_student_and_round_trips(tmp_path):
    model = _save(tmp_path / "seed_0", VIT)
    assert model.tap_shapes == {"embed": (5, 16), "layer1": (5, 16)}  # 4 patches + the class token
    assert model.model.config.num_labels == 10
    loaded = load_trained_student(tmp_path / "seed_0")
    inputs = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded(inputs).logits, model.eval()(inputs).logits, rtol=0, atol=0)


@pytest.mark.skipif(HF_MISSING is not None, reason=f"transformers not importable here: {HF_MISSING}")
def test_a_pretrained_hugging_face_student_is_rebuilt_from_its_config_without_the_files(tmp_path):
    source = build_student(VIT, (1, 8, 8), 10).model
    source.save_pretrained(tmp_path / "pretrained")
    arch = {k: v for k, v in VIT.items() if k != "config"} | {"pretrained": str(tmp_path / "pretrained")}
    model = _save(tmp_path / "seed_0", arch)
    torch.testing.assert_close(
        model.model.vit.layers[0].attention.q_proj.weight, source.vit.layers[0].attention.q_proj.weight
    )
    (tmp_path / "pretrained" / "model.safetensors").unlink()
    config = json.loads((tmp_path / "seed_0" / "student.json").read_text())
    assert config["arch"]["pretrained"] is None and config["arch"]["config"]["model_type"] == "vit"
    assert load_trained_student(tmp_path / "seed_0")(torch.randn(2, 1, 8, 8)).logits.shape == (2, 10)


def test_an_hf_arch_needs_exactly_one_of_config_and_pretrained():
    with pytest.raises(ParamsError, match="exactly one of `config`"):
        parse_arch({"kind": "hf"})
    with pytest.raises(ParamsError, match="exactly one of `config`"):
        parse_arch({"kind": "hf", "config": {"model_type": "vit"}, "pretrained": "x"})
