"""The recipe: validation with key paths, tap checks, weighting in one place, log names."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ParamsError, StrictModel, validate_section
from pipeline.losses import FAMILIES
from pipeline.losses._taps import MissingTapError
from pipeline.losses.recipe import RecipeError, RecipeParams, build_recipe
from tests.losses.conftest import SHAPES, make_inputs


class StudentSection(StrictModel):
    loss: RecipeParams


def test_a_misspelt_parameter_names_its_key_path_and_the_fix():
    with pytest.raises(ParamsError) as error:
        validate_section(StudentSection, {"loss": {"kd": {"kind": "hinton", "temprature": 4}}}, "students.x")
    assert "students.x.loss.kd.temprature: unknown key; did you mean 'temperature'?" in str(error.value)


def test_an_unknown_family_lists_the_valid_ones():
    with pytest.raises(ParamsError) as error:
        validate_section(StudentSection, {"loss": {"kd": {"kind": "hintn"}}}, "students.x")
    message = str(error.value)
    assert "students.x.loss.kd: kind 'hintn' is not known" in message
    assert all(kind in message for kind in FAMILIES)


def test_build_recipe_validates_raw_mappings_too():
    with pytest.raises(ParamsError, match="loss.rkd.angle_wieght: unknown key; did you mean 'angle_weight'"):
        build_recipe(
            {"rkd": {"kind": "rkd", "student_tap": "embed", "teacher_tap": "embed", "angle_wieght": 1}},
            SHAPES,
        )


def test_a_missing_tap_lists_the_valid_taps():
    with pytest.raises(
        MissingTapError,
        match="student tap 'img' does not exist; valid student taps: attn, conv, embed, tokens",
    ):
        build_recipe({"feat": {"kind": "feature", "student_tap": "img", "teacher_tap": "embed"}}, SHAPES)


@pytest.mark.parametrize("bad", [{}, {"a.b": {"kind": "ce"}}, {"a/b": {"kind": "ce"}}])
def test_empty_recipes_and_unloggable_term_names_are_refused(bad):
    with pytest.raises(RecipeError):
        build_recipe(bad, SHAPES)


def test_total_is_the_weighted_sum_and_terms_are_unweighted_with_log_names():
    recipe = build_recipe(
        {
            "ce": {"kind": "ce", "weight": 0.5},
            "kd": {"kind": "hinton", "weight": 0.5, "temperature": 4.0},
            "rkd": {"kind": "rkd", "weight": 2.0, "student_tap": "embed", "teacher_tap": "embed"},
            "mix": {"kind": "hinton", "alpha": 0.25, "alpha_weights": "hard"},
        },
        SHAPES,
    )
    total, terms = recipe(make_inputs())
    assert list(terms) == ["ce", "kd", "rkd/distance", "rkd/angle", "mix/soft", "mix/hard"]
    expected = (
        0.5 * terms["ce"]
        + 0.5 * terms["kd"]
        + 2.0 * (25 * terms["rkd/distance"] + 50 * terms["rkd/angle"])
        + 0.75 * terms["mix/soft"]
        + 0.25 * terms["mix/hard"]
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_recipe_owns_projections_and_round_trips_through_state_dict():
    params = {"feat": {"kind": "feature", "student_tap": "embed", "teacher_tap": "embed"}}
    recipe, again = build_recipe(params, SHAPES), build_recipe(params, SHAPES)
    assert sum(p.numel() for p in recipe.parameters()) == 8 * 6 + 6
    again.load_state_dict(recipe.state_dict())
    inputs = make_inputs()
    assert again(inputs)[0].item() == recipe(inputs)[0].item()


def test_unlabelled_rows_get_only_the_soft_gradient_and_all_unlabelled_is_finite():
    params = {"ce": {"kind": "ce"}, "kd": {"kind": "hinton"}}
    recipe, soft_only = build_recipe(params, SHAPES), build_recipe({"kd": {"kind": "hinton"}}, SHAPES)
    labels = [0, -1, 1, -1, 2, 3, -1, 4]
    mixed, alone = make_inputs(labels=labels), make_inputs(labels=labels)
    recipe(mixed)[0].backward()
    soft_only(alone)[0].backward()
    unlabelled = torch.tensor(labels) < 0
    torch.testing.assert_close(mixed.student_logits.grad[unlabelled], alone.student_logits.grad[unlabelled])
    none_labelled = make_inputs(labels=[-1] * 8)
    total, terms = recipe(none_labelled)
    assert torch.isfinite(total) and terms["ce"].item() == 0.0
    assert total.item() == pytest.approx(terms["kd"].item())


def test_already_validated_params_are_accepted():
    from pipeline.losses.ce import CEParams
    from pipeline.losses.hinton import HintonParams

    recipe = build_recipe({"ce": CEParams(weight=0.3), "kd": HintonParams(temperature=2.0)}, SHAPES)
    assert recipe.params["kd"].temperature == 2.0 and list(recipe(make_inputs())[1]) == ["ce", "kd"]
