"""Per-token teacher logits stored in a sparse form: sampled (ids + counts) or top-k, ragged per token.

`cache.token_logits: {form: sampled | top_k, ...}` makes the cache stage turn each batch's
per-token logits (M, V) into one of the forms of `token_forms` and store those arrays instead of
`tokens/logits`, ragged like every per-token output (row r's tokens are the `token_lengths[r]`
after the previous rows'), each token's slots padded to a fixed width (sampled: `draws`; top-k:
`k`) so the per-token shape is fixed (docs/token_distillation.md, "The forms in the cache"):

    sampled: tokens/sampled_ids (M, draws) uint16|int32, tokens/sampled_counts (M, draws) uint8|uint16,
             tokens/sampled_log_probs (M, draws) float16|float32, tokens/sampled_log_normalizers (M, R)
             (the last two not with `store_log_probs: false`)
    top_k:   tokens/top_k_ids (M, k), tokens/top_k_log_probs (M, k), tokens/top_k_log_normalizer (M,)
             float32, tokens/top_k_log_tail_mass (M,) float32

The layout's `token_form` (a plain-JSON dict) says which; every draw is seeded by the cache seed
and the teacher batch's first row (`np.random.default_rng([seed, row])`), and teacher batches
start at fixed rows within their shard, so a resumed or sharded build gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.cache.token_batch import SampledTokens, TopKTokens
from pipeline.cache.token_forms import (
    SampledTargets,
    TopKTargets,
    sample_token_targets,
    top_k_kl_error,
    top_k_token_targets,
)
from pipeline.cache.token_layout import form_arrays, stores_log_probs
from pipeline.errors import DistilleryError

FORM_STATS = "token_form_stats"
"""The key under which `compute_shard` hands a shard's form stats to `commit_shard` (not an array)."""


class TokenFormMismatchError(DistilleryError, ValueError):
    """The cache's per-token logits are not in the form, vocabulary or length asked for."""


def compute_form(
    spec: Mapping[str, Any], logits: np.ndarray, first_row: int
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The stored arrays of the form `spec` for one teacher batch's real tokens, and what the build
    records about them.

    logits: (M, V) float32, the batch's tokens back to back; first_row: the batch's first cache row
    (with the cache seed, the seed of its draws). Returns (array name -> (M, ...) values in the
    stored dtypes, stats): sampled: {"slots": distinct ids drawn, summed over tokens}; top-k:
    {"kl_tokens": n, "kl_sum": nats, "kl_max": nats}, KL(p_T || top-k completion) of the batch's
    first `kl_tokens` tokens (what a student loses to the dropped tail; `top_k_kl_error`).
    """
    names = list(form_arrays(spec))
    temperature = float(spec["temperature"])
    if spec["form"] == "sampled":
        rng = np.random.default_rng([int(spec["seed"]), int(first_row)])
        targets = sample_token_targets(
            logits,
            int(spec["draws"]),
            rng,
            temperature,
            width=int(spec["draws"]),
            log_prob_dtype=spec["log_prob_dtype"],
            normalizer_temperatures=tuple(spec["normalizer_temperatures"][1:]),
        )
        values = (targets.ids, targets.counts, targets.log_probs, targets.log_normalizers)[: len(names)]
        stats = {"slots": int(np.count_nonzero(targets.counts))}
    else:
        targets = top_k_token_targets(
            logits, int(spec["k"]), temperature, log_prob_dtype=spec["log_prob_dtype"]
        )
        values = (targets.ids, targets.log_probs, targets.log_normalizer, targets.log_tail_mass)
        measured = min(int(spec["kl_tokens"]), len(logits))
        head = TopKTargets(*(v[:measured] for v in values), temperature, targets.vocab_size)
        kl = top_k_kl_error(logits[:measured], head) if measured else np.zeros(0)
        stats = {"kl_tokens": measured, "kl_sum": float(kl.sum()), "kl_max": float(kl.max(initial=0.0))}
    arrays = {name: np.ascontiguousarray(v) for name, v in zip(names, values)}
    return arrays, stats


def fold_stats(records: list[Mapping[str, Any]]) -> dict[str, float]:
    """The per-shard stats of the progress records (`token_form` key) summed over shards."""
    total: dict[str, float] = {}
    for record in records:
        for key, value in record.get("token_form", {}).items():
            total[key] = max(total.get(key, 0.0), value) if key == "kl_max" else total.get(key, 0) + value
    return total


def targets_of(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], vocab_size: int):
    """The numpy `SampledTargets` / `TopKTargets` of stored form `spec` from its arrays (M, ...)."""
    parts = [arrays[name] for name in form_arrays(spec)]
    if spec["form"] == "sampled":
        temps = tuple(float(t) for t in spec["normalizer_temperatures"])
        parts += [None] * (4 - len(parts))  # ids + counts alone: no log-probs, no normalisers
        return SampledTargets(*parts, int(spec["draws"]), float(spec["temperature"]), temps, vocab_size)
    return TopKTargets(*parts, float(spec["temperature"]), vocab_size)


def padded_tokens(targets, mask: np.ndarray) -> SampledTokens | TopKTokens:
    """The tensors of `targets` (flat, M tokens) laid out (B, L, ...) by `mask` ((B, L) bool, M
    true): what `token_kd` takes as `teacher_tokens` beside the student's (B, L, V) logits.
    Padding positions hold id 0, count 0 and log-probs 0 (masked out by `token_mask`)."""
    tensors = (SampledTokens if isinstance(targets, SampledTargets) else TopKTokens).from_targets(targets)

    def pad(tensor):
        out = tensor.new_zeros((*mask.shape, *tensor.shape[1:]))
        out[mask] = tensor
        return out

    return tensors._map(pad)


def check_token_form(
    path: Any,
    spec: Mapping[str, Any] | None,
    vocab_size: int,
    form: str,
    student_vocab: int | None = None,
    longest: int | None = None,
    max_length: int | None = None,
) -> None:
    """Refuse, in one line, a cache whose per-token logits cannot serve a student.

    spec: the cache's layout.token_form (None: dense `tokens/logits`); vocab_size: its V; form: the
    form the student asks for ("dense", "sampled" or "top_k"); student_vocab: the student's V
    (None: not checked); longest / max_length: the cache's longest row in tokens and the longest the
    student takes (None: not checked). Raises TokenFormMismatchError naming the param to change.
    """
    held = "dense" if spec is None else spec["form"]
    if form != held:
        raise TokenFormMismatchError(
            f"the cache at {path} holds per-token logits in the {held} form but {form} targets are "
            f"asked for; set cache.token_logits.form: {form} in params.yaml and run `dvc repro cache`, "
            f"or ask for the {held} form"
        )
    if student_vocab is not None and int(student_vocab) != int(vocab_size):
        raise TokenFormMismatchError(
            f"the cache at {path} holds {held} token targets over a vocabulary of {int(vocab_size)} ids "
            f"but the student predicts {int(student_vocab)}; use a student with the teacher's tokenizer "
            "(mapping between vocabularies is out of scope)"
        )
    if longest is not None and max_length is not None and int(longest) > int(max_length):
        raise TokenFormMismatchError(
            f"the cache at {path} holds rows of up to {int(longest)} tokens but the student takes at "
            f"most {int(max_length)}; raise the student's context, or truncate in prepare and run "
            "`dvc repro cache`"
        )


def form_report(spec: Mapping[str, Any], manifest: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The cache report's `token_form` section: the form's params, its bytes per token and (top-k)
    its measured KL error, from the manifest's per-shard records (no array is read).

    bytes_per_token_padded: the stored arrays' raw bytes a token (every slot, before compression);
    bytes_per_token_ragged: the slots actually used (sampled: the distinct ids drawn), what a
    doubly ragged store would keep; dense_bytes_per_token: V fp16 logits, for comparison.
    """
    tokens = sum(int(record.get("tokens", 0)) for record in manifest)
    stats = fold_stats(list(manifest))
    arrays = form_arrays(spec)
    padded = sum(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize for s, d in arrays.values())
    report: dict[str, Any] = {k: v for k, v in spec.items() if not k.endswith("_dtype")}
    report |= {"tokens": tokens, "bytes_per_token_padded": float(padded)}
    report["dense_bytes_per_token"] = 2 * int(spec["vocab_size"])
    if spec["form"] == "sampled":
        parts = list(arrays.values())
        slot = sum(np.dtype(d).itemsize for _, d in parts[:3])
        distinct = stats.get("slots", 0) / tokens if tokens else 0.0
        report["mean_distinct_ids"] = distinct
        normalizers = 4 * len(spec["normalizer_temperatures"]) if stores_log_probs(spec) else 0
        report["bytes_per_token_ragged"] = distinct * slot + normalizers
    else:
        measured = int(stats.get("kl_tokens", 0))
        report["bytes_per_token_ragged"] = float(padded)
        report["kl_vs_dense_nats"] = {
            "tokens": measured,
            "mean": stats.get("kl_sum", 0.0) / measured if measured else None,
            "max": stats.get("kl_max", 0.0) if measured else None,
            "tail": "the tail mass spread evenly over the other V - k ids",
        }
    return report
