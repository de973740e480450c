"""The `prepare` stage's work: load the dataset, split it, apply the label budget and the omitted
classes, and hand back what `write_prepared` stores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.checks import DatasetError, NonFiniteInputError, few
from pipeline.data.dataset import open_prepared
from pipeline.data.fields import Ragged
from pipeline.data.labels import class_indices
from pipeline.data.params import PrepareParams
from pipeline.data.prepared import PreparedData, make_prepared, split_codes
from pipeline.data.sources import RawDataset, load_source
from pipeline.data.split import (
    TRAIN,
    apply_label_budget,
    omit_train_classes,
    stratified_split,
    unlabelled_train_to_unlabelled,
)
from pipeline.data.writer import PreparedWriter
from pipeline.io import replace_dir

TEACHER_TRAIN_DIR = "teacher_train"
"""Subdirectory of data/prepared with the teacher's training rows, written only when the label
budget or omitted classes took rows away from the students' train split."""


class UnknownClassError(DatasetError):
    """`prepare.omit_classes` names a class the dataset does not have."""


class UnknownFieldError(DatasetError):
    """`prepare.transforms` names a field the dataset does not have."""


@dataclass(frozen=True)
class PreparedOutputs:
    """dataset: what every student stage sees. teacher_train: the full labelled train split before
    the label budget and class omission (the built-in teacher learns from it), or None when it equals
    the train split of `dataset`."""

    dataset: PreparedData
    teacher_train: PreparedData | None


@dataclass(frozen=True)
class PreparePlan:
    """What prepare writes, decided from the index alone: the source, the rows of `dataset` (a
    boolean mask over the source's rows) with their split codes and labels, and the rows of
    `teacher_train` (a mask, or None when it equals dataset's train split)."""

    raw: RawDataset
    split: np.ndarray
    keep: np.ndarray
    dataset_split: np.ndarray
    dataset_label: np.ndarray
    teacher_train: np.ndarray | None


def plan_prepare(params: PrepareParams) -> PreparePlan:
    """Load `params.dataset`'s index, split it (or keep the user's split), then restrict the students'
    train split by `omit_classes` and `label_budget`. Reads no field values of a streamed source."""
    raw = load_source(params.dataset)
    omitted = class_indices(params.omit_classes, raw.class_names, "prepare.omit_classes")
    unknown = sorted(set(omitted) - set(range(raw.num_classes)))
    if unknown:
        raise UnknownClassError(
            f"prepare.omit_classes: {unknown} are not classes of this dataset (it has classes 0.."
            f"{raw.num_classes - 1}); omit existing classes, or [] to omit none"
        )
    if raw.split is None:
        split = stratified_split(raw.label, params.seed, params.val_fraction, params.test_fraction)
    else:
        split = unlabelled_train_to_unlabelled(split_codes(raw.split), raw.label)
    keep = np.ones(len(raw.sample_id), bool)
    restricted = False
    if params.omit_classes:
        keep = omit_train_classes(split, raw.label, omitted)
        restricted |= not keep.all()
    kept_split, label = split[keep], raw.label[keep]
    if params.label_budget is not None:
        new_split, label = apply_label_budget(kept_split, label, params.label_budget, params.seed)
        restricted |= bool((new_split != kept_split).any())
        kept_split = new_split
    return PreparePlan(raw, split, keep, kept_split, label, (split == TRAIN) if restricted else None)


def prepare_dataset(params: PrepareParams) -> PreparedOutputs:
    """`plan_prepare`, held in memory (small data; the input field as float32 `inputs`)."""
    plan = plan_prepare(params)
    raw = plan.raw
    if raw.inputs is not None:
        inputs = raw.inputs
    else:
        field = "input" if "input" in raw.field_specs() else next(iter(raw.field_specs()))
        inputs = np.concatenate([chunk[field] for chunk in raw.iter_chunks(65536)]).astype(np.float32)

    def prepared(mask, split, label) -> PreparedData:
        user_id = None if raw.user_id is None else raw.user_id[mask]
        return make_prepared(
            raw.sample_id[mask], split, label, inputs[mask], raw.num_classes, user_id, raw.class_names
        )

    dataset = prepared(plan.keep, plan.dataset_split, plan.dataset_label)
    teacher_train = None
    if plan.teacher_train is not None:
        mask = plan.teacher_train
        teacher_train = prepared(mask, plan.split[mask], raw.label[mask])
    return PreparedOutputs(dataset, teacher_train)


def write_prepared_outputs(params: PrepareParams, out: str | Path, rows_per_chunk: int = 4096) -> str:
    """Prepare `params.dataset` into `out` (and `out/teacher_train` when the students' train split
    was restricted), streaming the field values chunk by chunk: memory holds the index and one chunk.
    Nothing is left half-written when a chunk fails (a bad image, NaN inputs). Returns `describe`."""
    plan = plan_prepare(params)
    raw, out = plan.raw, Path(out)
    specs = raw.field_specs()
    transforms = {
        field: [step.model_dump(mode="json") for step in spec] for field, spec in params.transforms.items()
    }
    unknown = sorted(set(transforms) - set(specs))
    if unknown:
        raise UnknownFieldError(
            f"prepare.transforms: no field {', '.join(map(repr, unknown))}; the data has fields "
            f"{', '.join(specs)}"
        )

    def writer(directory, mask, split, label):
        user_id = None if raw.user_id is None else raw.user_id[mask]
        return PreparedWriter(
            directory,
            raw.sample_id[mask],
            split_codes_or(split),
            label,
            raw.num_classes,
            specs,
            user_id,
            raw.class_names,
            transforms,
        )

    targets = [(writer(out, plan.keep, plan.dataset_split, plan.dataset_label), plan.keep)]
    if plan.teacher_train is not None:
        mask = plan.teacher_train
        # written beside `out`, moved in after `out` is complete (replace_dir swaps whole directories)
        targets.append(
            (writer(out.parent / f".{out.name}-teacher_train", mask, plan.split[mask], raw.label[mask]), mask)
        )
    try:
        first = 0
        for chunk in raw.iter_chunks(rows_per_chunk):
            n = len(next(iter(chunk.values())))
            check_chunk_finite(chunk, first, raw)
            for target, mask in targets:
                local = np.flatnonzero(mask[first : first + n])
                if len(local) == n:
                    target.add(chunk)
                elif len(local):
                    target.add(
                        {k: v.take(local) if isinstance(v, Ragged) else v[local] for k, v in chunk.items()}
                    )
            first += n
    except BaseException:
        for target, _ in targets:
            target.abort()
        raise
    if len(targets) > 1:
        targets[1][0].close()
    targets[0][0].close()
    if len(targets) > 1:
        replace_dir(targets[1][0].directory, out / TEACHER_TRAIN_DIR)
    dataset = open_prepared(out)
    return describe(dataset)


def split_codes_or(split: np.ndarray) -> np.ndarray:
    """int8 split codes from codes or names."""
    split = np.asarray(split)
    return split_codes(split) if split.dtype.kind in "USO" else split.astype(np.int8)


def check_chunk_finite(chunk: dict, first: int, raw: RawDataset) -> None:
    """NonFiniteInputError naming the user's ids of rows whose float values hold NaN or infinity."""
    for name, values in chunk.items():
        flat = values.values if isinstance(values, Ragged) else values
        if flat.dtype.kind != "f":
            continue
        if isinstance(values, Ragged):
            bad_items = ~np.isfinite(flat.reshape(len(flat), -1)).all(axis=1)
            bad = np.unique(np.searchsorted(values.offsets, np.flatnonzero(bad_items), side="right") - 1)
        else:
            bad = np.flatnonzero(~np.isfinite(flat.reshape(len(flat), -1)).all(axis=1))
        if len(bad):
            rows = bad + first
            shown = rows if raw.user_id is None else raw.user_id[rows]
            raise NonFiniteInputError(
                f"field {name!r} of rows {few(shown.tolist())} contains NaN or infinity; clean or drop "
                "those rows"
            )


def describe(data) -> str:
    """One line per split: rows and labelled rows, for the stage's log."""
    lines = []
    for name, counts in data.class_counts().items():
        total = sum(counts.values())
        labelled = total - counts.get("-1", 0)
        if total:
            lines.append(
                f"{name}: {total} rows, {labelled} labelled, {len(counts) - ('-1' in counts)} classes"
            )
    extra = ""
    if data.class_names is not None:
        extra += f"; class names {few(data.class_names)} (indices 0..{len(data.class_names) - 1}, sorted)"
    if data.user_id is not None:
        extra += "; string sample ids"
    fields = getattr(data, "fields", None)
    if fields is not None and (len(fields) > 1 or "input" not in fields):
        extra += "; fields " + ", ".join(f"{name} {spec.describe()}" for name, spec in fields.items())
    else:
        extra += f"; input_shape {list(data.input_shape)}"
    extra += f"; fingerprint {data.fingerprint[:12]}"
    return "; ".join(lines) + extra
