"""Students made by name: shapes of every tap, save/load round trips, refusals with clear messages."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.config import ParamsError
from pipeline.students import (
    ARCHITECTURES,
    TrainedStudentError,
    build_student,
    count_parameters,
    list_trained,
    load_trained_student,
    parse_arch,
    save_trained_student,
)
from pipeline.students.cnn import InputShapeError
from tests.students.test_own_modules import HF_MISSING, RESNET, TIMM_MISSING, VIT

ARCHS = {
    "mlp": {"kind": "mlp", "hidden": [32, 16]},
    "cnn": {"kind": "cnn", "channels": [8, 16], "embed": 24, "convs_per_block": 2},
    "python": RESNET,
    "timm": {"kind": "timm", "name": "resnet18", "taps": {"embed": "global_pool"}},
    "hf": VIT,
}
SEQUENCE_ARCHS = {
    "tokens": {"kind": "tokens", "vocab_size": 30, "width": 8, "layers": 1},
    "causal_lm": {"kind": "causal_lm", "vocab_size": 30, "layers": 1, "width": 8, "heads": 2, "context": 16},
}
"""Architectures over named inputs (token ids + mask), not a float32 tensor."""
NEEDS = {"timm": TIMM_MISSING, "hf": HF_MISSING}
"""kind -> why it cannot be built here (its optional package is not importable), or None."""


def _buildable(kind: str) -> str:
    if NEEDS.get(kind):
        pytest.skip(NEEDS[kind])
    return kind


TESTED_APART = {"teacher_layers"}
"""Kinds that need a model directory to build: tests/students/test_teacher_layers.py makes a tiny one."""


def test_every_registered_architecture_has_a_test_config():
    assert set(ARCHS) | set(SEQUENCE_ARCHS) | TESTED_APART == set(ARCHITECTURES)


@pytest.mark.parametrize("layers", [0, 1])
def test_the_token_student_returns_per_token_and_pooled_taps(layers):
    model = build_student({**SEQUENCE_ARCHS["tokens"], "layers": layers}, (), num_classes=4)
    ids = torch.randint(0, 30, (5, 7))
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[0, 3:] = False
    output = model(input_ids=ids, attention_mask=mask)
    assert output.logits.shape == (5, 4)
    assert model.tap_shapes == {"tokens": (None, 8), "embed": (8,)}
    assert output.features["tokens"].shape == (5, 7, 8) and output.features["embed"].shape == (5, 8)
    assert not output.features["tokens"][0, 3:].any()


@pytest.mark.parametrize("kind", sorted(ARCHS))
@pytest.mark.parametrize("input_shape", [(8, 8), (1, 8, 8)])
def test_each_student_returns_logits_and_the_taps_it_declares(kind, input_shape):
    model = build_student(ARCHS[_buildable(kind)], input_shape, num_classes=10)
    output = model(torch.randn(5, *input_shape))
    assert output.logits.shape == (5, 10)
    assert set(output.features) == set(model.tap_shapes)
    for tap, shape in model.tap_shapes.items():
        assert tuple(output.features[tap].shape) == (5, *shape), tap
    assert "embed" in model.tap_shapes


def test_mlp_taps_are_one_per_hidden_layer_and_embed_is_the_last():
    model = build_student(ARCHS["mlp"], (64,), 10)
    assert model.tap_shapes == {"hidden1": (32,), "hidden2": (16,), "embed": (16,)}
    assert count_parameters(model) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10


def test_cnn_conv_tap_on_8x8_digits_matches_the_builtin_teacher_shape():
    model = build_student({"kind": "cnn", "channels": [16, 32], "embed": 64}, (1, 8, 8), 10)
    assert model.tap_shapes["conv"] == (32, 4, 4)
    assert model.tap_shapes["embed"] == (64,)


def test_cnn_refuses_flat_inputs_and_says_to_use_an_mlp():
    with pytest.raises(InputShapeError, match="mlp"):
        build_student(ARCHS["cnn"], (64,), 10)


def test_unknown_architecture_kind_lists_the_valid_ones():
    with pytest.raises(ParamsError, match="'rnn' is not known; valid: mlp, cnn, python, timm, hf"):
        parse_arch({"kind": "rnn"})


def test_misspelt_architecture_key_is_named():
    with pytest.raises(ParamsError, match="arch.hiden: unknown key; did you mean 'hidden'"):
        parse_arch({"kind": "mlp", "hiden": [3]})


def _save(tmp_path, arch, seed=0, name="kd"):
    torch.manual_seed(seed)
    model = build_student(arch, (1, 8, 8), 10)
    seed_dir = tmp_path / name / f"seed_{seed}"
    save_trained_student(
        seed_dir,
        model,
        {
            "student": name,
            "seed": seed,
            "arch": parse_arch(arch).model_dump(mode="json"),
            "input_shape": [1, 8, 8],
            "num_classes": 10,
        },
    )
    return model, seed_dir


@pytest.mark.parametrize("kind", sorted(ARCHS))
def test_trained_student_round_trips_through_safetensors_and_json(tmp_path, kind):
    model, seed_dir = _save(tmp_path, ARCHS[_buildable(kind)])
    loaded = load_trained_student(seed_dir)
    assert not loaded.training
    inputs = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(loaded(inputs).logits, model.eval()(inputs).logits, rtol=0, atol=0)
    config = json.loads((seed_dir / "student.json").read_text())
    assert config["num_parameters"] == count_parameters(model)
    assert config["tap_shapes"]["embed"] == list(model.tap_shapes["embed"])
    assert not list(seed_dir.glob("*.pt")) and not list(seed_dir.glob("*.pkl"))


def test_checkpoint_of_another_architecture_is_refused_naming_the_shapes(tmp_path):
    _, seed_dir = _save(tmp_path, {"kind": "mlp", "hidden": [32]})
    config = json.loads((seed_dir / "student.json").read_text())
    config["arch"] = {"kind": "mlp", "hidden": [48]}
    (seed_dir / "student.json").write_text(json.dumps(config))
    with pytest.raises(
        TrainedStudentError, match=r"hidden.0.weight: checkpoint has \[32, 64\], model expects \[48, 64\]"
    ):
        load_trained_student(seed_dir)


def test_checkpoint_of_another_kind_is_refused_naming_missing_tensors(tmp_path):
    _, seed_dir = _save(tmp_path, ARCHS["mlp"])
    config = json.loads((seed_dir / "student.json").read_text())
    config["arch"] = ARCHS["cnn"]
    (seed_dir / "student.json").write_text(json.dumps(config))
    with pytest.raises(TrainedStudentError, match="missing blocks.0.0.weight"):
        load_trained_student(seed_dir)


def test_missing_seed_directory_says_how_to_make_it(tmp_path):
    with pytest.raises(TrainedStudentError, match="dvc repro train@"):
        load_trained_student(tmp_path / "nope" / "seed_0")


def test_list_trained_finds_single_students_and_cohort_members(tmp_path):
    for seed in (2, 0, 10):
        _save(tmp_path / "train", ARCHS["mlp"], seed, name="kd")
    _save(tmp_path / "train" / "cohort", ARCHS["mlp"], 0, name="a")
    _save(tmp_path / "train" / "cohort", ARCHS["mlp"], 0, name="b")
    assert {k: [p.name for p in v] for k, v in list_trained(tmp_path / "train" / "kd").items()} == {
        "kd": ["seed_0", "seed_2", "seed_10"]
    }
    assert sorted(list_trained(tmp_path / "train" / "cohort")) == ["cohort/a", "cohort/b"]
