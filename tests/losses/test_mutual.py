"""Mutual KL between cohort members (Zhang et al. 2018, deep mutual learning)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.losses.mutual import MissingPeersError, MutualLoss, MutualParams, mutual_kl
from pipeline.losses.recipe import build_recipe
from tests.losses.conftest import SHAPES, make_inputs, numpy_log_softmax


def numpy_kl(target_logits, input_logits, temperature):
    lt, ls = numpy_log_softmax(target_logits, temperature), numpy_log_softmax(input_logits, temperature)
    return temperature**2 * (np.exp(lt) * (lt - ls)).sum(1).mean()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mutual_kl_sums_kl_from_every_peer(reduction):
    inputs = make_inputs(peers=3)
    zs = inputs.student_logits.detach().numpy()
    parts = [numpy_kl(peer.detach().numpy(), zs, 2.0) for peer in inputs.peer_logits]
    expected = sum(parts) / (3 if reduction == "mean" else 1)
    value = mutual_kl(inputs.student_logits, inputs.peer_logits, 2.0, reduction)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_recipe_flags_peers_and_refuses_to_run_without_them():
    recipe = build_recipe({"dml": {"kind": "mutual"}}, SHAPES)
    assert recipe.needs_peers and not recipe.needs_feature_bank
    with pytest.raises(MissingPeersError, match="peer_logits"):
        MutualLoss(MutualParams(), SHAPES)(make_inputs(peers=0))
