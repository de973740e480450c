"""A recipe: the weighted sum of named loss terms, the one place where weights are applied.

params.yaml maps the user's term names to family params (`{ce: {kind: ce, weight: 0.5},
kd: {kind: hinton, weight: 0.5, temperature: 4}}`). Each term's adapter returns unweighted
sub-terms; a term with one sub-term is reported under its own name (`kd`), others as
`<term>/<sub>` (`rkd/distance`). The total is
    sum_term weight_term * sum_sub sub_weight(epoch) * value_sub
(docs/losses.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Union

import torch
from pydantic import Field, TypeAdapter, ValidationError
from torch import nn

from pipeline.config import ParamsError, format_validation_error
from pipeline.errors import DistilleryError
from pipeline.losses import FAMILIES
from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._taps import MissingTapError, TapShapeError

AnyTermParams = Annotated[
    Union[tuple(family.params for family in FAMILIES.values())],  # noqa: UP007 (a runtime tuple)
    Field(discriminator="kind"),
]
"""The params of one term: a discriminated union on `kind` over every family in FAMILIES."""

RecipeParams = dict[str, AnyTermParams]
"""A recipe's params: term name -> term params (usable as a pydantic field)."""


LOGIT_FAMILIES = ("hinton", "vanilla", "combined", "dkd", "self_training", "token_kd")
"""Families that read the teacher's logits (KL/CE against the teacher, pseudo-labels, token KD)."""
FEATURE_FAMILIES = ("feature", "crd", "rkd", "mmd", "gram", "hidden", "attention")
"""Families that learn from the teacher's feature taps alone: what a teacher without logits allows."""


class RecipeError(DistilleryError, ValueError):
    """A recipe cannot be built (no terms, or a term name that cannot be a log key)."""


class NoTeacherLogitsError(RecipeError):
    """A term reads the teacher's logits but the cache holds none (a teacher without logits)."""


class Recipe(nn.Module):
    """The weighted sum of a student's loss terms; owns every term's projections.

    forward(inputs) -> (total, terms): total a float32 scalar; terms the unweighted values by
    log name ({"ce": .., "kd": .., "rkd/distance": ..}).
    needs_feature_bank: some term draws negatives from the whole cache (inputs.teacher_feature_bank).
    needs_peers: some term reads inputs.peer_logits (mutual learning).
    """

    def __init__(self, params: Mapping[str, TermParams], terms: Mapping[str, nn.Module]):
        super().__init__()
        self.params: dict[str, TermParams] = dict(params)
        self.terms = nn.ModuleDict(terms)
        self.needs_feature_bank = any(getattr(term, "needs_feature_bank", False) for term in terms.values())
        self.needs_peers = any(getattr(term, "needs_peers", False) for term in terms.values())

    def forward(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, named = None, {}
        for name, term in self.terms.items():
            params = self.params[name]
            values = term(inputs)
            factors = params.sub_weights(inputs.epoch)
            for sub, value in values.items():
                named[name if len(values) == 1 else f"{name}/{sub}"] = value
                weighted = params.weight * factors[sub] * value
                total = weighted if total is None else total + weighted
        return total, named


def build_recipe(params: RecipeParams | Mapping[str, Any], shapes: TapShapes) -> Recipe:
    """A `Recipe` for `params` (validated term params, or a raw mapping validated here).

    Checks every tap a term names against `shapes` (MissingTapError lists the valid taps) and
    sizes the projections from them.
    """
    try:
        params = TypeAdapter(RecipeParams).validate_python(dict(params))
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, dict(params), "loss")) from None
    if not params:
        raise RecipeError(f"a recipe needs at least one term; families: {', '.join(FAMILIES)}")
    for name in params:
        if not name or "." in name or "/" in name:
            raise RecipeError(f"term name {name!r} cannot be a log key; use letters, digits, _ or -")
    if not shapes.teacher_logits:
        wanting = [(name, term.kind) for name, term in params.items() if term.kind in LOGIT_FAMILIES]
        if wanting:
            named = ", ".join(f"{name!r} ({kind})" for name, kind in wanting)
            raise NoTeacherLogitsError(
                f"loss term {named} needs the teacher's logits but the cache holds none (its teacher has "
                f"teacher.logits_name: null); use terms that learn from the teacher's taps: "
                f"{', '.join(FEATURE_FAMILIES)} (ce and smoothing learn from labels alone)"
            )
    terms = {}
    for name, term in params.items():
        try:
            terms[name] = FAMILIES[term.kind].adapter(term, shapes)
        except (MissingTapError, TapShapeError) as error:  # name the user's term in the one line
            raise type(error)(f"loss term {name!r} ({term.kind}): {error}") from None
    return Recipe(params, terms)
