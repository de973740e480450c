"""What the leaderboard says about a student's recipe, read from its raw `students.<name>` mapping.

The recipe is validated by the train stage (pipeline/train, pipeline/losses); here it is only
described. Loss terms are filled in with their families' defaults when they validate (so a
`hinton` term without `temperature` shows the T it trained at), and described as written when
they do not; these helpers never fail on a key they do not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError


def loss_terms(loss: Mapping[str, Any]) -> Mapping[str, Any]:
    """The loss terms with their families' defaults filled in (pipeline.losses.recipe.RecipeParams),
    or `loss` as written when it does not validate."""
    try:
        from pipeline.losses.recipe import RecipeParams

        validated = TypeAdapter(RecipeParams).validate_python(dict(loss))
    except (ImportError, ValidationError, TypeError, ValueError):
        return loss
    return {name: {**term.model_dump(), **loss[name]} for name, term in validated.items()}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def recipe_temperature(recipe: Mapping[str, Any]) -> float | None:
    """The distillation temperature of a student: the largest `temperature` among its loss terms
    (`students.<name>.loss.<term>.temperature`), or None when no term has one."""
    temperatures = [
        float(term["temperature"])
        for term in loss_terms(recipe.get("loss") or {}).values()
        if isinstance(term, Mapping) and isinstance(term.get("temperature"), (int, float))
    ]
    return max(temperatures) if temperatures else None


def arch_summary(arch: Mapping[str, Any]) -> str:
    """`{kind: mlp, hidden: [64, 32]}` -> "mlp hidden=64x32"; unknown keys are listed as they are."""
    parts = [str(arch.get("kind", "?"))]
    for key, value in arch.items():
        if key == "kind":
            continue
        if isinstance(value, (list, tuple)):
            value = "x".join(_number(v) for v in value)
        parts.append(f"{key}={_number(value)}")
    return " ".join(parts)


def loss_summary(loss: Mapping[str, Any]) -> str:
    """`{ce: {kind: ce, weight: 0.5}, kd: {kind: hinton, weight: 0.5, temperature: 4}}`
    -> "0.5 ce + 0.5 hinton(T=4)"."""
    terms = []
    for name, term in loss_terms(loss).items():
        if not isinstance(term, Mapping):
            terms.append(str(name))
            continue
        kind = str(term.get("kind", name))
        weight = term.get("weight")
        text = kind if weight is None else f"{_number(weight)} {kind}"
        if "temperature" in term:
            text += f"(T={_number(term['temperature'])})"
        terms.append(text)
    return " + ".join(terms) or "-"


def model_recipe(recipe: Mapping[str, Any], model: str) -> Mapping[str, Any]:
    """The recipe of one trained model: the student's own, or for a cohort member ("cohort/member")
    the cohort's shared keys overridden by `cohort.members.<member>` (its `arch`, maybe its `loss`)."""
    member = model.partition("/")[2]
    members = (recipe.get("cohort") or {}).get("members") or {}
    if not member or member not in members:
        return recipe
    merged = {key: value for key, value in recipe.items() if key != "cohort"}
    merged.update(members[member] or {})
    return merged


def recipe_summary(recipe: Mapping[str, Any]) -> str:
    """One line for the leaderboard: "<arch> | <loss terms>"."""
    arch = recipe.get("arch") or {}
    loss = recipe.get("loss") or {}
    return f"{arch_summary(arch) if arch else '-'} | {loss_summary(loss)}"
