"""The `prepare` stage's work: load the dataset, split it, apply the label budget and the omitted
classes, and hand back what `write_prepared` stores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.checks import DatasetError, few
from pipeline.data.labels import class_indices
from pipeline.data.params import PrepareParams
from pipeline.data.prepared import PreparedData, make_prepared, split_codes
from pipeline.data.sources import load_source
from pipeline.data.split import (
    TRAIN,
    apply_label_budget,
    omit_train_classes,
    stratified_split,
    unlabelled_train_to_unlabelled,
)

TEACHER_TRAIN_DIR = "teacher_train"
"""Subdirectory of data/prepared with the teacher's training rows, written only when the label
budget or omitted classes took rows away from the students' train split."""


class UnknownClassError(DatasetError):
    """`prepare.omit_classes` names a class the dataset does not have."""


@dataclass(frozen=True)
class PreparedOutputs:
    """dataset: what every student stage sees. teacher_train: the full labelled train split before
    the label budget and class omission (the built-in teacher learns from it), or None when it equals
    the train split of `dataset`."""

    dataset: PreparedData
    teacher_train: PreparedData | None


def prepare_dataset(params: PrepareParams) -> PreparedOutputs:
    """Load `params.dataset`, split it (or keep the user's split), then restrict the students'
    train split by `omit_classes` and `label_budget`."""
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
    sample_id, label, inputs, user_id = raw.sample_id, raw.label, raw.inputs, raw.user_id

    def rows(keep: np.ndarray):
        kept_user_id = None if user_id is None else user_id[keep]
        return sample_id[keep], split[keep], label[keep], inputs[keep], kept_user_id

    def prepared(sample_id, split, label, inputs, user_id) -> PreparedData:
        return make_prepared(sample_id, split, label, inputs, raw.num_classes, user_id, raw.class_names)

    teacher_train = prepared(*rows(split == TRAIN))
    restricted = False
    if params.omit_classes:
        keep = omit_train_classes(split, label, omitted)
        restricted |= not keep.all()
        sample_id, split, label, inputs, user_id = rows(keep)
    if params.label_budget is not None:
        new_split, label = apply_label_budget(split, label, params.label_budget, params.seed)
        restricted |= bool((new_split != split).any())
        split = new_split
    dataset = prepared(sample_id, split, label, inputs, user_id)
    return PreparedOutputs(dataset, teacher_train if restricted else None)


def describe(data: PreparedData) -> str:
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
    extra += f"; input_shape {list(data.input_shape)}; fingerprint {data.fingerprint[:12]}"
    return "; ".join(lines) + extra
