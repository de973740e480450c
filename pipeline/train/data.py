"""Join the teacher cache to the prepared inputs by sample id, once, and pick the rows to train on.

The cache holds teacher outputs but not the inputs; the prepared dataset holds the inputs. Every
cache row must find its sample id in the dataset with the same split and label, else the cache was
built on other data and training on it would silently pair inputs with the wrong soft labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cache.alignment import CacheAlignmentError, check_alignment
from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.cache.reader import CacheReader, rows_of_split
from pipeline.cache.views import ORIGINAL_VIEW, PartnerIndex
from pipeline.errors import DistilleryError
from pipeline.students.inputs import FieldBatches, StudentInputError, StudentInputs
from pipeline.train.views import (
    MixedLabelsUnlabelled,
    ViewReplay,
    check_student_views,
    originals,
    recorded_spec,
)


class NoTrainingRowsError(DistilleryError):
    """The cache has no rows a student could train on."""


def align_inputs(
    reader: CacheReader, sample_id: np.ndarray, split: np.ndarray, label: np.ndarray, show_ids=None
) -> np.ndarray:
    """(N_cache,) int64 position in the dataset of each cache row's sample id.

    sample_id, split, label: (N,) arrays of the prepared dataset. The dataset and the cache must
    hold the same ids, splits and labels: CacheAlignmentError (pipeline.cache) names the ids that
    differ. show_ids: int64 keys -> the ids messages show (`PreparedData.ids_of`: the user's string ids).
    """
    cache_row = check_alignment(reader, sample_id, exact=True, split=split, label=label, show_ids=show_ids)
    position = np.empty(len(reader), np.int64)
    position[cache_row] = np.arange(len(sample_id), dtype=np.int64)
    return position


def training_rows(reader: CacheReader, train_rows: str) -> np.ndarray:
    """(n,) int64 cache rows a student trains on, ascending.

    "labelled": train-split rows that have a label. "all": every train-split row plus the
    `unlabelled` split; their label is -1, so hard-label terms mask them and only soft terms learn.
    """
    train = rows_of_split(reader, "train")
    if train_rows == "labelled":
        return train[np.asarray(reader.label)[train] != UNLABELLED]
    if train_rows == "all":
        return np.sort(np.concatenate([train, rows_of_split(reader, "unlabelled")]))
    raise ValueError(f"train_rows must be 'labelled' or 'all', got {train_rows!r}")


@dataclass(frozen=True)
class TrainingData:
    """The cache plus the inputs of its rows: everything the loop reads.

    reader: the teacher cache. inputs: (N_cache, *input_shape) float32, row i = cache row i (an
    array, or for data read from the shards a `FieldView` reading only the rows asked for); with
    `replay` (a view cache), the prepared inputs, which `replay` turns into each row's view.
    train_rows / val_rows: (n,) int64 cache rows (of a view cache: the originals of the training
    samples; each epoch trains on one view of each, `epoch_rows`). num_classes: C.
    fields: for a student of named inputs (`students.<s>.inputs`), what reads them (then `inputs` is
    (N_cache, 0)); position: (N_cache,) int64 prepared row of each cache row. student: its name.
    """

    reader: CacheReader
    inputs: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    num_classes: int
    replay: ViewReplay | None = None
    fields: FieldBatches | None = None
    position: np.ndarray | None = None
    student: str = "<name>"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-row input shape, e.g. (1, 8, 8) (a view's shape in a view cache)."""
        return self.replay.shape if self.replay is not None else tuple(self.inputs.shape[1:])

    def epoch_rows(self, seed: int, epoch: int) -> np.ndarray:
        """(n,) int64 cache rows of `epoch`, ascending by sample: `train_rows`, or with views one
        view of each training sample (`ViewReplay.epoch_rows`)."""
        return self.train_rows if self.replay is None else self.replay.epoch_rows(seed, epoch)

    def batch_inputs(self, rows: np.ndarray) -> StudentInputs:
        """(B, *input_shape) float32 inputs of cache rows `rows` (views replayed bit for bit); for a
        student of named inputs, argument -> (B, ...) array (variable fields padded per batch)."""
        if self.fields is not None:
            return self.fields(self.position[np.asarray(rows, np.int64)])
        return self.inputs[rows] if self.replay is None else self.replay.batch_inputs(rows)


def join_training_data(
    reader: CacheReader,
    prepared,
    train_rows: str,
    views: int | None = None,
    student: str = "<name>",
    inputs: dict[str, str] | None = None,
    source=None,
) -> TrainingData:
    """Check alignment once and gather the inputs in cache-row order (prepared: PreparedData, or
    any index with sample_id, split, label, num_classes).

    views: the k views per sample the student trains on (`students.<s>.views`; None = the
    originals); ViewsMismatchError when the cache holds no views and k is set, or holds views and
    k is not, or fewer than k (pipeline/train/views.py). inputs: forward argument -> field of a
    student of named inputs (`students.<s>.inputs`), read per batch from `source` (default
    `prepared`: a PreparedDataset or in-memory fields), never gathered whole; without `inputs`, a
    `source` (a PreparedDataset) has its single input read per batch too."""
    check_student_views(getattr(reader, "path", "(in memory)"), reader.schema.view_count, views, student)
    if views is not None:
        if inputs is not None:
            raise StudentInputError(
                f"student {student!r}: views and named inputs (students.{student}.inputs) do not go "
                f"together yet; drop students.{student}.views"
            )
        return _join_views(reader, prepared, train_rows, views, source)
    position = align_inputs(
        reader, prepared.sample_id, prepared.split, prepared.label, getattr(prepared, "ids_of", None)
    )
    _check_classes(reader, prepared)
    if inputs is not None:
        return TrainingData(
            reader,
            np.zeros((len(reader), 0), np.float32),
            _training_rows(reader, train_rows),
            rows_of_split(reader, "val"),
            int(prepared.num_classes),
            fields=FieldBatches(prepared if source is None else source, inputs),
            position=position,
            student=student,
        )
    return TrainingData(
        reader,
        # read per batch from a dataset on disk (`source`), else gathered once in cache-row order
        source.inputs.at(position)
        if source is not None
        else np.ascontiguousarray(prepared.inputs[position], np.float32),
        _training_rows(reader, train_rows),
        rows_of_split(reader, "val"),
        int(prepared.num_classes),
        student=student,
    )


def _check_classes(reader: CacheReader, prepared) -> None:
    if (
        getattr(reader.schema, "logits", "row") != "none"
        and reader.schema.num_classes != prepared.num_classes
    ):
        raise CacheAlignmentError(
            f"the cache has {reader.schema.num_classes} logits per row, the dataset {prepared.num_classes} "
            "classes; re-run `dvc repro cache`"
        )


def _training_rows(reader, train_rows: str) -> np.ndarray:
    rows = training_rows(reader, train_rows)
    if len(rows) == 0:
        raise NoTrainingRowsError(
            f"no rows to train on (train_rows: {train_rows}); the cache has no rows of split {SPLITS[0]!r}"
        )
    return rows


def _join_views(reader: CacheReader, prepared, train_rows: str, views: int, dataset=None) -> TrainingData:
    """TrainingData of a view cache: aligned on its original rows (view -1), every row's prepared
    row found by sample id, replayed by a ViewReplay from `prepared.inputs`, or from `dataset.inputs`
    (a dataset on disk: each batch's source rows read when its views are replayed)."""
    kept = originals(reader)
    check_alignment(
        kept, prepared.sample_id, True, prepared.split, prepared.label, getattr(prepared, "ids_of", None)
    )
    _check_classes(reader, prepared)
    partners = PartnerIndex(prepared.sample_id)
    source = partners.rows(reader.sample_id)
    if not np.array_equal(np.asarray(prepared.sample_id, np.int64)[source], np.asarray(reader.sample_id)):
        raise CacheAlignmentError(
            "the view cache has views of sample ids the dataset lacks; re-run `dvc repro cache` for this "
            "dataset"
        )
    is_original = np.asarray(reader.view) == ORIGINAL_VIEW
    rows = _training_rows(reader, train_rows)
    rows = rows[is_original[rows]]
    val = rows_of_split(reader, "val")
    inputs = dataset.inputs if dataset is not None else np.ascontiguousarray(prepared.inputs, np.float32)
    replay = ViewReplay(reader, recorded_spec(reader), views, inputs, source, rows, partners)
    return TrainingData(
        MixedLabelsUnlabelled(reader),
        inputs,
        rows,
        val[is_original[val]],
        int(prepared.num_classes),
        replay,
    )
