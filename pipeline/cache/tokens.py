"""Per-token teacher outputs: which outputs are per token, and their padding cut away.

An output is per token when it is declared so (`teacher.per_token`), or when its declared axis 1 is
the symbolic sequence axis of an input fed from a ragged field (an LM's `hidden` (batch, sequence,
D) beside `input_ids` (batch, sequence)). Its batch comes back padded to the batch's longest row;
only each row's real tokens are kept (the row's length in the ragged field), stored ragged
(docs/cache_format.md, "Per-token outputs").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.errors import DistilleryError
from pipeline.teacher.inputs import Feed


class TokenOutputError(DistilleryError):
    """A per-token output does not cover its batch's tokens."""


def per_token_outputs(teacher: Any, feed: Feed, outputs: Mapping[str, np.ndarray]) -> frozenset[str]:
    """The outputs of `outputs` (logits keyed "logits") stored per token for the batch `feed`: none
    when no input is ragged; else those declared in `teacher.per_token`, or, when nothing is
    declared, those whose declared axis 1 is the symbolic axis 1 of an input fed from a ragged field."""
    if feed.lengths is None:
        return frozenset()
    logits_name = getattr(teacher, "logits_name", "logits")

    def key(name: str) -> str:
        return "logits" if name == logits_name else name

    declared = getattr(teacher, "per_token", None)
    if declared is not None:
        return frozenset(key(name) for name in declared) & frozenset(outputs)
    specs = getattr(teacher, "input_specs", {})
    axes = {
        specs[name].dims[1]
        for name in feed.ragged
        if name in specs and len(specs[name].dims) > 1 and isinstance(specs[name].dims[1], str)
    }
    found = {
        key(name)
        for name, dims in getattr(teacher, "output_dims", {}).items()
        if len(dims) > 1 and isinstance(dims[1], str) and dims[1] in axes
    }
    return frozenset(found) & frozenset(outputs)


def cut_padding(values: np.ndarray, lengths: np.ndarray, where: str, name: str) -> np.ndarray:
    """`values` (B, L, ...) with every position at or past its row's length ((B,) int64) set to 0,
    so padding never reaches the cache (nor its NaN checks). TokenOutputError when L is shorter than
    a row."""
    longest = int(lengths.max(initial=0))
    if values.ndim < 2 or values.shape[1] < longest:
        raise TokenOutputError(
            f"{where}: per-token output {name!r} has shape {list(values.shape)} but the batch has rows of "
            f"{longest} tokens; a per-token output must be (batch, sequence, ...) over the padded batch: "
            "re-export the teacher, or leave the output out of teacher.per_token"
        )
    padding = np.arange(values.shape[1])[None, :] >= lengths[:, None]
    if not padding.any():  # every row fills the batch: nothing to cut, no copy (V floats a token)
        return values
    values = np.array(values, copy=True)
    values[padding] = 0
    return values


def flatten_tokens(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(B, L, ...) padded -> (sum(lengths), ...): each row's real tokens, back to back."""
    mask = np.arange(values.shape[1])[None, :] < lengths[:, None]
    return values[mask]
