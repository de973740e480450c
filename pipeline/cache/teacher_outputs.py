"""The teacher's outputs on their way into the cache: run, checked, cast.

Every output of every teacher batch must be (batch, *row_shape) with the batch first and the row
shape the layout was probed with: an output whose first axis is not the batch (a mean over the
batch, the batch repeated, a fixed reshape to [1, 64], the batch on another axis, a scalar) would
otherwise be broadcast into the cache's rows and corrupt it silently. The layout is probed on two
batch sizes, so such a teacher is refused before anything is written, and every batch is checked
again. NaN/Inf and values float16 cannot hold are refused naming the sample ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.cache.format import TOKEN_LENGTHS, CacheLayout
from pipeline.cache.token_layout import TOKENS, is_form_array, token_form_spec
from pipeline.cache.tokens import cut_padding, per_token_outputs
from pipeline.errors import DistilleryError
from pipeline.names import NAME_PATTERN, NAME_RULE
from pipeline.teacher.inputs import Feed, fields_of

if TYPE_CHECKING:  # the teacher stage probes with this module and needs no cache params
    from pipeline.cache.params import CacheParams

FLOAT16_MAX = float(np.finfo(np.float16).max)
PROBE_BATCH_SIZES = (2, 3)
"""Batch sizes the teacher is probed with (capped at the row count): two, so that an output whose
size does not follow the batch shows itself; neither is 1, where a mean over the batch looks right."""


class TeacherOutputError(DistilleryError):
    """The teacher's outputs cannot be cached: a missing output, a shape that does not follow the
    batch, NaN/Inf, or values a float16 cache cannot hold."""


class Teacher(Protocol):
    """What the cache needs of a teacher (pipeline.teacher.TeacherSession satisfies it)."""

    def run(self, inputs: Any) -> dict[str, np.ndarray]:
        """(B, *input_shape) float32 (or ONNX input -> array, for a teacher with `feed`) ->
        {"logits": (B, C), tap: (B, *tap_shape)}."""
        ...


def describe_teacher(teacher: Any, teacher_sha256: str) -> dict[str, Any]:
    """The teacher's identity for the metadata: sha256 and the names of its input and outputs
    (plus its input fields when not the single `input` field, so a cache of the same file fed from
    other fields is another cache)."""
    info = {
        "sha256": teacher_sha256,
        "input_name": getattr(teacher, "input_name", "input"),
        "logits_name": getattr(teacher, "logits_name", "logits"),
        "tap_names": list(getattr(teacher, "tap_names", ()) or ()),
    }
    fields = getattr(teacher, "input_fields", None)
    if fields and dict(fields) != {info["input_name"]: "input"}:
        info["inputs"] = dict(fields)
    return info


def teacher_feed(teacher: Any, data: Any, rows: slice) -> Feed:
    """The teacher's inputs for rows `rows` of `data` (a RowSource): its named inputs when it has
    `feed` (a TeacherSession: fields by `teacher.inputs`, ragged ones padded), else the rows of the
    single `input` field."""
    feed = getattr(teacher, "feed", None)
    if feed is not None:
        return feed(fields_of(data), rows)
    rows = np.arange(rows.start, rows.stop, dtype=np.int64)
    return Feed({"input": np.asarray(fields_of(data).read(rows, ["input"])["input"])})


def _source(teacher: Any) -> str:
    path = getattr(teacher, "path", None)
    return f"{path}: teacher" if path is not None else "teacher"


def _rows(rows: slice) -> str:
    return f"rows {rows.start}..{rows.stop - 1}"


def run_teacher(teacher: Teacher, feed: Feed, rows: slice | None = None) -> dict[str, np.ndarray]:
    """teacher.run on the batch `feed` with its logits output renamed "logits" (a TeacherSession keys
    it by its `logits_name`), every output as a numpy array. A teacher that fails on the batch (ONNX
    Runtime refusing a fixed reshape, say) raises TeacherOutputError naming the batch."""
    logits_name = getattr(teacher, "logits_name", "logits")
    inputs = feed.arrays if hasattr(teacher, "feed") else next(iter(feed.arrays.values()))
    batch_rows = len(next(iter(feed.arrays.values())))
    try:
        outputs = teacher.run(inputs)
    except DistilleryError:
        raise
    except Exception as error:  # the teacher is foreign code (ONNX Runtime): one line, not its trace
        message = " ".join(str(error).split())
        message = message if len(message) <= 300 else f"{message[:120]} ... {message[-170:]}"
        where = f" ({_rows(rows)})" if rows is not None else ""
        raise TeacherOutputError(
            f"{_source(teacher)} failed on a batch of {batch_rows} rows{where} ({type(error).__name__}: "
            f"{message}); it must run on any batch size (no reshape to a fixed batch) and on these inputs"
        ) from None
    return {("logits" if name == logits_name else name): np.asarray(v) for name, v in outputs.items()}


def check_batch_shapes(
    outputs: Mapping[str, np.ndarray],
    batch_rows: int,
    where: str,
    row_shapes: Mapping[str, tuple[int, ...]] | None = None,
    logits: str = "row",
    token_outputs: frozenset[str] = frozenset(),
) -> None:
    """TeacherOutputError unless every output is (batch_rows, *row_shape): the batch first, logits
    2-D ((B, L, V) when per token), and (with `row_shapes`, name -> per-row shape) the shapes the
    layout was probed with; a per-token output (`token_outputs`) is compared without its sequence
    axis, whose length is the batch's. where: the teacher and rows, for the message."""
    if "logits" not in outputs and logits != "none":
        raise TeacherOutputError(
            f"{where}: returned {sorted(outputs)} but no 'logits'; check its output names"
        )
    for name in row_shapes if row_shapes is not None else outputs:
        if name not in outputs:
            raise TeacherOutputError(f"{where}: did not return tap {name!r} (it returned {sorted(outputs)})")
        shape = [int(d) for d in np.shape(outputs[name])]
        if not shape or shape[0] != batch_rows:
            raise TeacherOutputError(
                f"{where}: output {name!r} has shape {shape} for a batch of {batch_rows} input rows; every "
                f"output must have the batch as its first axis ({batch_rows}, ...): re-export the teacher so "
                "that no output reduces, repeats or reshapes across the batch"
            )
        if name == "logits" and len(shape) != (3 if "logits" in token_outputs else 2):
            raise TeacherOutputError(
                f"{where}: output 'logits' has shape {shape}; logits must be (batch, classes), or "
                "(batch, sequence, vocabulary) per token: re-export the teacher with such logits"
            )
        row_shape = shape[2:] if name in token_outputs else shape[1:]
        if row_shapes is not None and tuple(row_shape) != tuple(row_shapes[name]):
            raise TeacherOutputError(
                f"{where}: output {name!r} has rows of shape {shape[1:]} but {list(row_shapes[name])} on "
                "the first rows; every output row must have one shape whatever the batch: re-export the "
                "teacher with fixed per-row output shapes"
            )


def shown_ids_of(data: Any) -> Callable[[np.ndarray], list]:
    """rows -> the ids of those rows as the user wrote them (a PreparedData's `shown_ids`; else the
    int64 sample ids), for messages."""
    if hasattr(data, "shown_ids"):
        return data.shown_ids
    return lambda rows: np.asarray(data.sample_id)[rows].tolist()


def check_finite(
    outputs: Mapping[str, np.ndarray], rows: slice, shown_ids: Callable[[np.ndarray], list]
) -> None:
    """Refuse NaN/Inf in any output of the batch of cache rows `rows`, naming the output and the
    sample ids (`shown_ids`: cache rows -> the user's ids, `shown_ids_of`)."""
    for name, values in outputs.items():
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if not finite.all():
            bad_rows = np.flatnonzero(~finite) + rows.start
            ids = shown_ids(bad_rows[:10])
            raise TeacherOutputError(
                f"teacher output {name!r} is NaN/Inf for {len(bad_rows)} row(s): sample_id "
                f"{', '.join(map(str, ids))}{' ...' if len(bad_rows) > 10 else ''} "
                f"(rows {', '.join(map(str, bad_rows[:10].tolist()))}); check those inputs and the teacher; "
                "completed shards are kept"
            )


def cast_output(
    name: str, values: np.ndarray, dtype: str, rows: slice, shown_ids: Callable[[np.ndarray], list]
) -> np.ndarray:
    """`values` in the stored `dtype`, refusing values float16 cannot hold (they would become inf)."""
    if dtype == "float16":
        too_big = (np.abs(values.reshape(len(values), -1)) > FLOAT16_MAX).any(axis=1)
        if too_big.any():
            bad_rows = np.flatnonzero(too_big) + rows.start
            raise TeacherOutputError(
                f"teacher output {name!r} exceeds the float16 range (|x| > 65504) for sample_id "
                f"{', '.join(map(str, shown_ids(bad_rows[:10])))}; store it as float32 "
                "(cache.logits_dtype / cache.features_dtype: float32)"
            )
    return values.astype(dtype, copy=False)


def check_class_count(teacher_classes: int, dataset_classes: int | None) -> None:
    """TeacherOutputError unless the teacher's logits width equals the dataset's class count."""
    if dataset_classes is not None and teacher_classes != dataset_classes:
        raise TeacherOutputError(
            f"the teacher gives {teacher_classes} logits per row but the dataset has {dataset_classes} "
            f"classes; use a teacher trained on these classes, or set prepare.dataset.num_classes to "
            f"{teacher_classes} if the dataset has classes its labels do not show"
        )


def probe_row_shapes(teacher: Teacher, data: Any) -> dict[str, tuple[int, ...]]:
    """Output name ("logits" and every tap) -> per-row shape (per-token shape for a per-token
    output), from the teacher run on the first rows of `data` (a RowSource) at each of
    PROBE_BATCH_SIZES (capped at N). TeacherOutputError when an output does not follow the batch or
    changes shape with it."""
    return _probe(teacher, data)[0]


def _probe(teacher: Teacher, data: Any) -> tuple[dict[str, tuple[int, ...]], frozenset[str]]:
    shapes: dict[str, tuple[int, ...]] = {}
    count = len(data.sample_id)
    logits = "row" if getattr(teacher, "logits_name", "logits") is not None else "none"
    tokens: frozenset[str] = frozenset()
    for size in sorted({min(size, count) for size in PROBE_BATCH_SIZES}):
        rows = slice(0, size)
        feed = teacher_feed(teacher, data, rows)
        outputs = run_teacher(teacher, feed, rows)
        tokens = per_token_outputs(teacher, feed, outputs)
        check_batch_shapes(
            outputs, size, f"{_source(teacher)} ({_rows(rows)})", shapes or None, logits, tokens
        )
        shapes = shapes or {
            name: tuple(int(d) for d in v.shape[(2 if name in tokens else 1) :])
            for name, v in outputs.items()
        }
    return shapes, tokens


def probe_layout(teacher: Teacher, data: Any, params: CacheParams) -> CacheLayout:
    """The layout of the cache of `data` (a RowSource): class count, every tap's shape and which
    outputs are per token, from `_probe`, with the params' dtypes and chunking."""
    check_fields = getattr(teacher, "check_fields", None)  # a TeacherSession: a clear error, not ORT's
    if check_fields is not None:
        check_fields(fields_of(data), shown_ids_of(data))
    shapes, tokens = _probe(teacher, data)
    for name in shapes:
        if name != "logits" and NAME_PATTERN.fullmatch(name) is None:
            raise TeacherOutputError(
                f"{_source(teacher)} output name {name!r} cannot name a cache array (it becomes a path): "
                f"use {NAME_RULE}; list the outputs to cache in teacher.tap_names, or re-export the "
                "teacher with other output names"
            )
    logits = "none" if "logits" not in shapes else "token" if "logits" in tokens else "row"
    num_classes = int(shapes["logits"][0]) if "logits" in shapes else 0
    if logits != "none":
        check_class_count(num_classes, getattr(data, "num_classes", None))
    sparse = None if params.sparse_top_k is None or logits != "row" else min(params.sparse_top_k, num_classes)
    token_form = token_form_spec(params.token_logits, num_classes)
    if token_form is not None and logits != "token":
        raise TeacherOutputError(
            f"cache.token_logits.form is {token_form['form']} but {_source(teacher)} gives its logits "
            f"{'per row' if logits == 'row' else 'not at all'}, not per token (batch, sequence, V); "
            "set cache.token_logits: null, or use a teacher whose logits are per token"
        )
    clashes = sorted(name for name in tokens if token_form is not None and is_form_array(f"{TOKENS}/{name}"))
    if clashes:
        raise TeacherOutputError(
            f"{_source(teacher)} per-token output {clashes[0]!r} has the name of an array of the "
            f"{token_form['form']} form (cache.token_logits); leave it out of teacher.per_token or rename it"
        )
    taps = {name: shape for name, shape in shapes.items() if name != "logits"}
    return CacheLayout(
        num_rows=len(data.sample_id),
        num_classes=num_classes,
        logits_dtype=params.logits_dtype,
        features_dtype=params.features_dtype,
        feature_shapes={name: shape for name, shape in taps.items() if name not in tokens},
        sparse_top_k=sparse,
        rows_per_chunk=params.rows_per_chunk,
        rows_per_shard=params.rows_per_shard,
        view_count=None if params.views is None else params.views.count,
        logits=logits,
        token_shapes={name: shape for name, shape in taps.items() if name in tokens},
        token_form=token_form,
    )


def batch_outputs(teacher: Teacher, data: Any, rows: slice, layout: CacheLayout) -> dict[str, np.ndarray]:
    """The teacher's checked outputs on cache rows `rows` of `data` (a RowSource): logits (B, C)
    float32 (absent when the cache has none), taps as returned, shapes as `layout` says, finite at
    every real position. A per-token output is (B, L, ...) with zeros past each row's real tokens,
    whose counts are under TOKEN_LENGTHS ((B,) int64). Raises TeacherOutputError."""
    feed = teacher_feed(teacher, data, rows)
    outputs = run_teacher(teacher, feed, rows)
    row_shapes = {**layout.feature_shapes, **layout.token_shapes}
    if layout.logits != "none":
        row_shapes = {"logits": (layout.num_classes,), **row_shapes}
    tokens = frozenset(layout.token_shapes) | ({"logits"} if layout.logits == "token" else set())
    where = f"{_source(teacher)} ({_rows(rows)})"
    check_batch_shapes(outputs, rows.stop - rows.start, where, row_shapes, layout.logits, tokens)
    outputs = {name: outputs[name] for name in row_shapes}
    if tokens:
        lengths = feed.lengths if feed.lengths is not None else np.full(rows.stop - rows.start, 0, np.int64)
        outputs = {
            name: cut_padding(v, lengths, where, name) if name in tokens else v for name, v in outputs.items()
        }
        outputs[TOKEN_LENGTHS] = lengths
    check_finite({k: v for k, v in outputs.items() if k != TOKEN_LENGTHS}, rows, shown_ids_of(data))
    if "logits" in outputs:
        outputs["logits"] = np.asarray(outputs["logits"], np.float32)
    return outputs
