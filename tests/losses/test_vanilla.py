"""Vanilla and Combined (Hinton et al. 2015 + FitNets hints; + CRD): defaults and the sum of their parts."""

from __future__ import annotations

import pytest

from pipeline.losses.ce import cross_entropy
from pipeline.losses.crd import info_nce
from pipeline.losses.feature import feature_mse
from pipeline.losses.hinton import distillation_kl
from pipeline.losses.recipe import build_recipe
from pipeline.losses.vanilla import CombinedParams, VanillaLoss, VanillaParams
from tests.losses.conftest import SHAPES, make_inputs


def test_defaults_are_the_documents():
    vanilla = VanillaParams(student_tap="embed", teacher_tap="embed")
    assert (vanilla.temperature, vanilla.sub_weights(0)) == (2.0, {"ce": 1.0, "kl": 1.0, "feature": 100.0})
    combined = CombinedParams(student_tap="embed", teacher_tap="embed")
    assert combined.temperature == 4.0 and combined.tau == 0.1
    assert combined.sub_weights(0) == {"ce": 1.0, "kl": 1.0, "feature": 100.0, "crd": 10.0}


def test_combined_total_is_ce_plus_a_kl_plus_b_mse_plus_g_crd():
    taps = [{"student": "embed", "teacher": "embed"}, {"student": "conv", "teacher": "conv"}]
    recipe = build_recipe({"all": {"kind": "combined", "taps": taps}}, SHAPES)
    inputs = make_inputs(seed=1)
    total, terms = recipe(inputs)
    pairs = [pair(inputs) for pair in recipe.terms["all"].pairs]
    ce = cross_entropy(inputs.student_logits, inputs.labels)
    kl = distillation_kl(inputs.student_logits, inputs.teacher_logits, 4.0)
    mse = sum(feature_mse(s, t) for s, t in pairs)
    crd = sum(info_nce(s, t, 0.1) for s, t in pairs) / 2
    assert terms["all/kl"].item() == pytest.approx(kl.item())
    assert total.item() == pytest.approx((ce + kl + 100 * mse + 10 * crd).item(), rel=1e-5)


def test_vanilla_has_no_crd_term():
    loss = VanillaLoss(VanillaParams(student_tap="embed", teacher_tap="embed"), SHAPES)
    assert list(loss(make_inputs())) == ["ce", "kl", "feature"]
