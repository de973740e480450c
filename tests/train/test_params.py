"""The `students:` section: typos, unknown names and inconsistent forms are errors that say what to do."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import ParamsError
from pipeline.train.params import UnknownStudentError, select_student, validate_students
from tests.train.helpers import student_params

LOSS = {"ce": {"kind": "ce", "weight": 1.0}}


def test_unknown_student_name_lists_the_valid_ones():
    students = validate_students(
        {"kd": {"arch": {"kind": "mlp"}, "loss": LOSS}, "ce_only": {"arch": {"kind": "mlp"}, "loss": LOSS}}
    )
    with pytest.raises(UnknownStudentError, match="no student named 'nope'.*valid: ce_only, kd"):
        select_student(students, "nope")


def test_a_misspelt_key_names_its_path():
    with pytest.raises(ParamsError, match="students.kd.epochz: unknown key; did you mean 'epochs'"):
        validate_students({"kd": {"arch": {"kind": "mlp"}, "loss": LOSS, "epochz": 3}})


def test_a_student_needs_exactly_one_of_arch_and_cohort():
    with pytest.raises(ParamsError, match="exactly one of `arch`"):
        validate_students({"kd": {"loss": LOSS}})
    with pytest.raises(ParamsError, match="exactly one of `arch`"):
        validate_students(
            {
                "kd": {
                    "arch": {"kind": "mlp"},
                    "loss": LOSS,
                    "cohort": {"members": {"a": {"arch": {"kind": "mlp"}}}},
                }
            }
        )


def test_cohort_members_share_the_recipe_unless_they_override_it():
    other = {"kd": {"kind": "hinton", "weight": 1.0}}
    params = student_params(
        arch=None,
        cohort={"members": {"a": {"arch": {"kind": "mlp"}}, "b": {"arch": {"kind": "cnn"}, "loss": other}}},
    )
    members = params.members()
    assert list(members) == ["a", "b"]
    assert members["a"][1] == params.loss
    assert members["b"][0].kind == "cnn"


def test_unknown_student_on_the_command_line_exits_1_listing_the_valid_ones(tmp_path, monkeypatch, capsys):
    from stages.cli import main

    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"students": {"kd": {"arch": {"kind": "mlp"}, "loss": LOSS}}})
    )
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--student", "nope"]) == 1
    assert "valid: kd" in capsys.readouterr().err


def test_unknown_loss_kind_lists_the_valid_families():
    pytest.importorskip("pipeline.losses.recipe")
    with pytest.raises(ParamsError, match="students.kd.loss.kd.*'hintonn' is not known; valid: .*hinton"):
        validate_students(
            {"kd": {"arch": {"kind": "mlp"}, "loss": {"kd": {"kind": "hintonn", "weight": 1.0}}}}
        )


def test_cohort_member_names_must_be_directory_names():
    with pytest.raises(ParamsError, match="cohort member name 'a/b' is not allowed"):
        validate_students({"c": {"loss": LOSS, "cohort": {"members": {"a/b": {"arch": {"kind": "mlp"}}}}}})


def test_every_default_student_in_params_yaml_validates_and_builds_its_recipe():
    from pathlib import Path

    from pipeline.losses import FAMILIES
    from pipeline.losses._contract import TapShapes
    from pipeline.losses.recipe import build_recipe
    from pipeline.students import build_student

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    students = validate_students(raw["students"])
    teacher_taps = {"embed": (128,), "conv": (64, 4, 4)}  # the built-in teacher on 8x8 digits
    families = set()
    for params in students.values():
        for arch, loss in params.members().values():
            model = build_student(arch, (1, 8, 8), 10)
            build_recipe(loss, TapShapes(10, model.tap_shapes, teacher_taps))
            families |= {term.kind for term in loss.values()}
    assert families == set(FAMILIES), f"families no default student reaches: {set(FAMILIES) - families}"
