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
from pipeline.errors import DistilleryError


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

    reader: the teacher cache. inputs: (N_cache, *input_shape) float32, row i = cache row i.
    train_rows / val_rows: (n,) int64 cache rows. num_classes: C.
    """

    reader: CacheReader
    inputs: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-row input shape, e.g. (1, 8, 8)."""
        return tuple(self.inputs.shape[1:])


def join_training_data(reader: CacheReader, prepared, train_rows: str) -> TrainingData:
    """Check alignment once and gather the inputs in cache-row order (prepared: PreparedData)."""
    position = align_inputs(
        reader, prepared.sample_id, prepared.split, prepared.label, getattr(prepared, "ids_of", None)
    )
    if (
        getattr(reader.schema, "logits", "row") != "none"
        and reader.schema.num_classes != prepared.num_classes
    ):
        raise CacheAlignmentError(
            f"the cache has {reader.schema.num_classes} logits per row, the dataset {prepared.num_classes} "
            "classes; re-run `dvc repro cache`"
        )
    rows = training_rows(reader, train_rows)
    if len(rows) == 0:
        raise NoTrainingRowsError(
            f"no rows to train on (train_rows: {train_rows}); the cache has no rows of split {SPLITS[0]!r}"
        )
    return TrainingData(
        reader,
        np.ascontiguousarray(prepared.inputs[position], np.float32),
        rows,
        rows_of_split(reader, "val"),
        int(prepared.num_classes),
    )
