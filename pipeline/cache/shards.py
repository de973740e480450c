"""One shard of a cache build: computed from the teacher in fixed batches, then committed whole.

`compute_shard` writes nothing; `commit_shard` writes the shard's arrays through the store,
fsyncs them, then writes the shard's progress record atomically, so a shard is either recorded as
done with every byte on disk, or redone by the next run. Any number of processes may each commit
different shards (`write_shard`): no two writers ever touch one shard.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.cache.build import CacheBuild, completed_shards
from pipeline.cache.format import TOKEN_LENGTHS, TOKENS, array_digest
from pipeline.cache.reference import keep_in_batch, keep_in_shard
from pipeline.cache.sparse import top_k_form
from pipeline.cache.teacher_outputs import Teacher, batch_outputs, cast_output, shown_ids_of
from pipeline.cache.token_layout import is_form_array
from pipeline.cache.token_store import FORM_STATS, compute_form, fold_stats
from pipeline.cache.tokens import flatten_tokens
from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_json


class CacheDiskFullError(DistilleryError):
    """The disk filled up while a shard was written; completed shards are kept."""


def compute_shard(
    build: CacheBuild, shard_index: int, teacher: Teacher, keep_rows: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run the teacher over shard `shard_index` in the build's fixed batches; nothing is written.

    Returns (array name -> values in the stored dtype, fp32 logits of `keep_rows` (sorted cache
    rows; only those inside this shard)). Raises TeacherOutputError on a wrong shape or NaN/Inf.
    """
    layout, data = build.layout, build.data
    shown = shown_ids_of(data)
    rows = layout.shard_rows(shard_index)
    arrays = {
        name: np.empty((rows.stop - rows.start, *shape), dtype)
        for name, (shape, dtype) in layout.arrays().items()
    }
    for name in ("sample_id", "split", "label"):
        arrays[name][:] = getattr(data, name)[rows]
    if layout.view_count is not None:  # data is ViewRows: draw the shard's records once
        arrays["view"][:] = data.view[rows]
        records = data.records(rows)
        for column in records.dtype.names:
            arrays[f"view_params/{column}"][:] = records[column]
    ragged = {name: [] for name in layout.ragged_arrays()}
    stats: list[dict[str, float]] = []
    keep = keep_in_shard(keep_rows, rows)
    kept_logits = np.empty((len(keep), layout.num_classes), np.float32)
    for batch in build.batches(rows):
        outputs = batch_outputs(teacher, data, batch, layout)
        local = slice(batch.start - rows.start, batch.stop - rows.start)
        for name, (_, dtype) in layout.arrays().items():
            if name in outputs or name.startswith("features/"):
                output = name.removeprefix("features/")
                arrays[name][local] = cast_output(output, outputs[output], dtype, batch, shown)
        for name, (_, dtype) in layout.ragged_arrays().items():
            if is_form_array(name):
                continue
            output = name.removeprefix(f"{TOKENS}/")
            values = cast_output(output, outputs[output], dtype, batch, shown)
            ragged[name].append(flatten_tokens(values, outputs[TOKEN_LENGTHS]))
        if layout.token_form is not None:  # the sparse form straight from the fp32 logits
            logits = flatten_tokens(outputs["logits"], outputs[TOKEN_LENGTHS])
            form, batch_stats = compute_form(layout.token_form, logits, batch.start)
            for name, values in form.items():
                ragged[name].append(values)
            stats.append(batch_stats)
        if layout.sparse_top_k is not None:
            values, indices, lse = top_k_form(outputs["logits"], layout.sparse_top_k)
            arrays["sparse/values"][local] = values.astype(layout.logits_dtype)
            arrays["sparse/indices"][local] = indices
            arrays["sparse/logsumexp"][local] = lse
        if layout.logits == "row":
            keep_in_batch(kept_logits, keep, batch, outputs["logits"])
    for name, (shape, dtype) in layout.ragged_arrays().items():
        parts = ragged[name]
        arrays[name] = np.concatenate(parts) if parts else np.empty((0, *shape), dtype)
    if layout.token_form is not None:  # not an array: commit_shard moves it into the progress record
        arrays[FORM_STATS] = fold_stats([{"token_form": s} for s in stats])
    return arrays, kept_logits


def _record_shard(build: CacheBuild, shard_index: int, record: dict[str, Any]) -> None:
    atomic_write_json(build.progress_path(shard_index), record)


def commit_shard(build: CacheBuild, shard_index: int, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Write a computed shard whole, fsync it, then write its progress record. Returns the record.

    Raises CacheDiskFullError (completed shards kept) when the disk is full.
    """
    rows = build.layout.shard_rows(shard_index)
    record = {
        "shard": shard_index,
        "start": rows.start,
        "stop": rows.stop,
        "sha256": {name: array_digest(arrays[name]) for name in build.layout.stored_names()},
    }
    if build.layout.ragged_arrays():  # the value count of each ragged array, checked on open
        record["tokens"] = int(np.sum(arrays[TOKEN_LENGTHS]))
    if FORM_STATS in arrays:  # what the report says of a sampled / top-k form (token_store.compute_form)
        record["token_form"] = dict(arrays[FORM_STATS])
    try:
        build.store().write_shard(shard_index, rows, arrays)
        _record_shard(build, shard_index, record)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            done = len(completed_shards(build))
            raise CacheDiskFullError(
                f"disk full while writing shard {shard_index} (rows {rows.start}..{rows.stop - 1}) of "
                f"{build.layout.num_shards} to {build.store_dir} "
                f"({error.strerror or error}); free space and re-run `dvc repro cache`; completed shards are "
                f"kept ({done} of {build.layout.num_shards})"
            ) from None
        raise
    return record


def write_shard(build: CacheBuild, shard_index: int, teacher: Teacher) -> dict[str, Any]:
    """Compute and write shard `shard_index` whole (safe to call from separate processes, one
    process per shard). Returns its manifest record."""
    arrays, _ = compute_shard(build, shard_index, teacher)
    return commit_shard(build, shard_index, arrays)
