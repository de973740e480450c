"""What each student learned from: the root teacher, another student (a chain), or labels alone.

A chain (a teaching assistant: Mirzadeh et al. 2020, "Improved Knowledge Distillation via Teacher
Assistant", arXiv:1902.03393; or born-again networks: Furlanello et al. 2018, "Born-Again Neural
Networks", arXiv:1805.04770) is a cache built by the
`chain_cache@<chain>` stage from an exported student, `data/chains/<chain>/teacher/<teacher>/model.onnx`
(the `chain_teacher@<chain>` stage), into
`data/chains/<chain>/store`; a student learns from it by naming that store as its `cache`. The
`chains:` section of params.yaml maps chain name -> {teacher: <student>}, which is all this
module reads (besides the student's own recipe).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from pydantic import RootModel, field_validator

from pipeline.config import StrictModel, validate_section
from pipeline.names import NAME_RULE, check_name, safe_name

ROOT_CACHE = "data/cache/store"
"""The root teacher's cache (the `cache` stage's output): every student's default `cache`."""

LABEL_ONLY_KINDS = frozenset({"ce", "smoothing"})
"""Loss families that read labels and nothing of a teacher."""


class ChainParams(StrictModel):
    """One chain: `teacher` is the student (or `cohort/member`) whose export teaches its cache."""

    teacher: str

    @field_validator("teacher")
    @classmethod
    def _a_student_or_a_member(cls, teacher: str) -> str:
        # `data/chains/<chain>/teacher/<teacher>/model.onnx` in dvc.yaml: a student, or `<cohort>/<member>`
        parts = teacher.split("/")
        if len(parts) > 2:
            raise ValueError(
                f"chain teacher name {teacher!r} is not allowed: use {NAME_RULE} (a student), or "
                "<cohort>/<member>"
            )
        for part in parts:
            check_name(part, "chain teacher")
        return teacher


class ChainsSection(RootModel[dict[safe_name("chain"), ChainParams]]):
    """The `chains:` section: chain name (a directory name under data/chains/, a DVC stage key
    `chain_cache@<chain>`) -> ChainParams."""


def validate_chains(data: Any) -> dict[str, ChainParams]:
    """The raw `chains:` mapping validated (None: no chains), or ParamsError naming the bad key."""
    return dict(validate_section(ChainsSection, data or {}, "chains").root)


def chain_store(chain: str) -> str:
    """The cache store of chain `chain`: `data/chains/<chain>/store` (the chain_cache stage's out)."""
    return f"data/chains/{chain}/store"


def _normal(path: Any) -> str:
    return posixpath.normpath(str(path).replace("\\", "/"))


def learned_from(
    recipe: Mapping[str, Any], chains: Mapping[str, Any] | None = None, root_cache: str = ROOT_CACHE
) -> str:
    """What a student (its raw `students.<name>` mapping) learned from, for the leaderboard:
    "labels" when every loss term is label-only (ce, smoothing), "teacher" for the root cache,
    the chain's teacher (a student name) for `data/chains/<chain>/store`, else the cache path."""
    kinds = {term.get("kind") for term in (recipe.get("loss") or {}).values() if isinstance(term, Mapping)}
    if kinds and kinds <= LABEL_ONLY_KINDS:
        return "labels"
    cache = _normal(recipe.get("cache", root_cache))
    if cache == _normal(root_cache):
        return "teacher"
    for name, chain in (chains or {}).items():
        teacher = chain.teacher if isinstance(chain, ChainParams) else (chain or {}).get("teacher")
        if cache == _normal(chain_store(name)) and teacher:
            return str(teacher)
    return cache


def is_root_cache(cache: Any, root_cache: str = ROOT_CACHE) -> bool:
    """Whether the cache path `cache` is the root teacher's (paths compared normalised)."""
    return _normal(cache) == _normal(root_cache)
