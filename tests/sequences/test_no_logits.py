"""A teacher without logits (teacher.logits_name: null): logit terms are refused at the start in one
line naming the term and the families that work; feature terms build; evaluation leaves the teacher
metrics out instead of crashing."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.evaluation import EvalSplit, evaluate_seed
from pipeline.losses._contract import TapShapes
from pipeline.losses.recipe import NoTeacherLogitsError, build_recipe

SHAPES = TapShapes(3, {"embed": (4,)}, {"pooled": (4,)}, teacher_logits=False)


def test_a_kl_term_against_a_cache_without_logits_is_refused_naming_the_term_and_what_works():
    recipe = {
        "ce": {"kind": "ce", "weight": 0.5},
        "kd": {"kind": "hinton", "weight": 0.5, "temperature": 4.0},
    }
    with pytest.raises(NoTeacherLogitsError) as error:
        build_recipe(recipe, SHAPES)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("loss term 'kd' (hinton) needs the teacher's logits but the cache holds none")
    assert "feature, crd, rkd, mmd, gram, hidden, attention" in message


@pytest.mark.parametrize("kind", ["dkd", "self_training"])
def test_every_family_reading_teacher_logits_is_refused(kind):
    with pytest.raises(NoTeacherLogitsError, match=f"'t' \\({kind}\\)"):
        build_recipe({"t": {"kind": kind}}, SHAPES)


def test_feature_terms_build_without_teacher_logits():
    recipe = build_recipe(
        {"ce": {"kind": "ce"}, "fit": {"kind": "feature", "student_tap": "embed", "teacher_tap": "pooled"}},
        SHAPES,
    )
    assert set(recipe.terms) == {"ce", "fit"}


def test_evaluation_without_teacher_logits_gives_the_label_metrics_only():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 30).astype(np.int64)
    data = EvalSplit("test", np.arange(30), np.zeros((30, 2), np.float32), labels, None)
    metrics, _ = evaluate_seed(rng.normal(size=(30, 3)).astype(np.float32), data)
    assert "accuracy" in metrics and "agreement" not in metrics and "kl_T1" not in metrics
