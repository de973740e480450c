"""The layout side of per-token logits stored in a sparse form (`cache.token_logits`): which arrays
a form stores, their per-token shapes and dtypes (plain JSON, no torch; `format.CacheLayout` uses it).
A per-token tap named like one of them (`sampled_ids`, ...) is refused when a form is stored.
The computing and reading side is `pipeline.cache.token_store`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TOKENS = "tokens"
"""Prefix of the ragged arrays: `tokens/<output>` (M, *per-token shape), M = sum of token_lengths
(`format` re-exports it)."""

FORM_PARTS = {
    "sampled": ("ids", "counts", "log_probs", "log_normalizers"),
    "top_k": ("ids", "log_probs", "log_normalizer", "log_tail_mass"),
}
"""The arrays of each stored form, as `tokens/<form>_<part>`."""


def id_dtype(vocab_size: int) -> str:
    """The stored dtype of token ids below `vocab_size`: uint16 up to 65536 ids, else int32."""
    return "uint16" if vocab_size <= 2**16 else "int32"


def token_form_spec(params: Any, vocab_size: int) -> dict[str, Any] | None:
    """The layout's `token_form` for `params` (a `TokenLogitsParams`) over V = vocab_size ids: the
    plain-JSON dict of everything that decides the stored arrays; None for the dense form."""
    if params is None or params.form == "dense":
        return None
    spec: dict[str, Any] = {"form": params.form, "vocab_size": int(vocab_size)}
    spec["temperature"] = float(params.temperature)
    spec["log_prob_dtype"] = params.log_prob_dtype
    spec["id_dtype"] = id_dtype(vocab_size)
    if params.form == "sampled":
        temperatures = list(
            dict.fromkeys([float(params.temperature), *map(float, params.normalizer_temperatures)])
        )
        spec |= {
            "draws": int(params.draws),
            "seed": int(params.seed),
            "normalizer_temperatures": temperatures,
        }
        spec["count_dtype"] = "uint8" if params.draws <= 255 else "uint16"
        if not params.store_log_probs:  # the key only when false: existing caches' layouts unchanged
            spec["log_probs"] = False
    else:
        spec |= {"k": min(int(params.k), int(vocab_size)), "kl_tokens": int(params.kl_tokens)}
    return spec


def form_arrays(spec: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Ragged array name -> (per-token shape, stored dtype) of the stored form `spec`."""
    lp = spec["log_prob_dtype"]
    if spec["form"] == "sampled":
        width, temps = (int(spec["draws"]),), (len(spec["normalizer_temperatures"]),)
        shapes = (width, width, width, temps)
        dtypes = (spec["id_dtype"], spec["count_dtype"], lp, "float32")
    else:
        k = (int(spec["k"]),)
        shapes, dtypes = (k, k, (), ()), (spec["id_dtype"], lp, "float32", "float32")
    parts = FORM_PARTS[spec["form"]][: 2 if not stores_log_probs(spec) else None]
    return {f"{TOKENS}/{spec['form']}_{p}": (s, d) for p, s, d in zip(parts, shapes, dtypes)}


def stores_log_probs(spec: Mapping[str, Any]) -> bool:
    """Whether the stored form `spec` keeps the teacher's log-probs (top-k always; sampled unless
    `store_log_probs: false` made it ids + counts alone)."""
    return bool(spec.get("log_probs", True))


FORM_ARRAYS = frozenset(f"{TOKENS}/{form}_{part}" for form, parts in FORM_PARTS.items() for part in parts)
"""Every array name a stored form may use."""


def is_form_array(name: str) -> bool:
    """Whether cache array `name` is part of a stored per-token form (not a tap)."""
    return name in FORM_ARRAYS
