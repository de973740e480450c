"""Every family that reads feature taps refuses, when the recipe is built, a tap of one value per row
(nothing for a feature, relational or contrastive term to match: a cosine or an angle between two
numbers is +-1, and RKD's angle term rises all run on it) and a teacher tap the cache does not hold,
naming the user's term and what to do."""

from __future__ import annotations

import pytest

from pipeline.losses._contract import TapShapes
from pipeline.losses._taps import MissingTapError, NarrowTapError
from pipeline.losses.recipe import build_recipe

SHAPES = TapShapes(
    num_classes=5,
    student={"embed": (6,), "score": (1,), "conv": (3, 4, 4), "dot": (1, 1, 1)},
    teacher={"embed": (8,), "score": (1,), "conv": (4, 4, 4)},
)

TAP_TERMS = {
    "feature": {"kind": "feature", "project": "student_to_teacher"},
    "vanilla": {"kind": "vanilla"},
    "combined": {"kind": "combined"},
    "crd": {"kind": "crd"},
    "rkd": {"kind": "rkd"},
    "mmd": {"kind": "mmd"},
    "gram": {"kind": "gram"},
}


def _pair(term: dict, student: str, teacher: str) -> dict:
    return {**term, "student_tap": student, "teacher_tap": teacher}


@pytest.mark.parametrize("kind", list(TAP_TERMS))
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_a_tap_one_value_wide_is_refused_naming_the_term_and_the_wider_taps(kind, side):
    student, teacher = ("score", "embed") if side == "student" else ("embed", "score")
    with pytest.raises(NarrowTapError) as error:
        build_recipe({"hint": _pair(TAP_TERMS[kind], student, teacher)}, SHAPES)
    wider = "conv (3, 4, 4), embed (6,)" if side == "student" else "conv (4, 4, 4), embed (8,)"
    assert str(error.value) == (
        f"loss term 'hint' ({kind}): {side} tap 'score' has shape (1,), one value per row: too narrow for "
        f"a feature, relational or contrastive term to carry anything; use a wider {side} tap ({wider})"
    )


def test_a_map_of_one_value_is_as_narrow_as_a_vector_of_one():
    with pytest.raises(NarrowTapError, match=r"student tap 'dot' has shape \(1, 1, 1\)"):
        build_recipe(
            {"hidden": {"kind": "hidden", "layers": [{"student": "dot", "teacher": "conv"}]}}, SHAPES
        )


def test_the_same_terms_on_wide_taps_build():
    recipe = build_recipe({kind: _pair(term, "embed", "embed") for kind, term in TAP_TERMS.items()}, SHAPES)
    assert set(recipe.terms) == set(TAP_TERMS)


def test_a_teacher_tap_missing_from_the_cache_says_to_cache_it():
    with pytest.raises(MissingTapError) as error:
        build_recipe({"hint": _pair(TAP_TERMS["rkd"], "embed", "attn")}, SHAPES)
    assert str(error.value) == (
        "loss term 'hint' (rkd): teacher tap 'attn' is not in the teacher cache, which holds conv (4, 4, 4), "
        "embed (8,), score (1,); if the teacher has an output 'attn', add it to teacher.tap_names in "
        "params.yaml (null caches every output) and re-run `dvc repro cache`"
    )
