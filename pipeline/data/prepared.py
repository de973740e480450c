"""The prepared dataset every later stage reads: `data/prepared/dataset.parquet` + `meta.json`.

On disk (docs/architecture.md): one Parquet file with columns `sample_id` int64, `split` string
(one of `pipeline.cache.batch.SPLITS`), `label` int64 (-1 = no label) and `input`, a fixed-size
list of float32 holding the flattened input, plus `user_id` string when the user's ids were strings
(`sample_id` is then their 63-bit hash, pipeline/data/ids.py); and `meta.json` with `input_shape`,
`num_classes`, `class_names` (null unless the labels were strings), the class counts per split and
the fingerprint. The fingerprint is what the cache compares to refuse a cache built on other data.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.data.checks import first_sentence
from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_json, replace_dir

DATASET_FILE = "dataset.parquet"
META_FILE = "meta.json"
FORMAT_VERSION = 1


class PreparedDataError(DistilleryError):
    """`data/prepared` is missing, incomplete or does not match its own fingerprint."""


@dataclass(frozen=True)
class PreparedData:
    """The prepared dataset, aligned by row.

    sample_id: (N,) int64, unique: the key joining dataset, cache and evaluation (the user's id
        when it is an integer, else the 63-bit hash of the user's string id).
    split: (N,) int8 codes into `SPLITS` ("train", "val", "test", "unlabelled").
    label: (N,) int64 class index in [0, num_classes), or -1 where the row has no label.
    inputs: (N, *input_shape) float32.
    num_classes: C.
    fingerprint: sha256 hex of ids, splits, labels and inputs (see `dataset_fingerprint`).
    user_id: (N,) object array of str, the user's ids when they were strings; None when
        `sample_id` is the user's id. Messages and outputs show these (`shown_ids`).
    class_names: class index -> the user's label when the labels were strings, else None.
    """

    sample_id: np.ndarray
    split: np.ndarray
    label: np.ndarray
    inputs: np.ndarray
    num_classes: int
    fingerprint: str
    user_id: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-row input shape, e.g. (1, 8, 8)."""
        return tuple(self.inputs.shape[1:])

    def rows(self, split: str, labelled_only: bool = False) -> np.ndarray:
        """(n,) int64 row numbers of one split, ascending; only rows with a label if asked."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        mask = self.split == SPLITS.index(split)
        if labelled_only:
            mask &= self.label != UNLABELLED
        return np.flatnonzero(mask).astype(np.int64)

    def shown_ids(self, rows) -> list[int | str]:
        """The user's ids of `rows` (row numbers), as Python ints or strs, for messages."""
        rows = np.asarray(rows, dtype=np.int64)
        source = self.sample_id if self.user_id is None else self.user_id
        return [value.item() if isinstance(value, np.generic) else value for value in source[rows]]

    def ids_of(self, sample_ids) -> list[int | str]:
        """The user's ids of the int64 keys `sample_ids`; a key the data does not hold is shown as
        `key <n>` (only string ids differ from their keys)."""
        keys = np.asarray(sample_ids, dtype=np.int64)
        if self.user_id is None:
            return [int(k) for k in keys]
        order = np.argsort(self.sample_id, kind="stable")
        position = np.clip(np.searchsorted(self.sample_id[order], keys), 0, max(len(order) - 1, 0))
        found = (self.sample_id[order][position] == keys) if len(order) else np.zeros(len(keys), bool)
        return [
            str(self.user_id[order[p]]) if hit else f"key {int(k)}"
            for k, p, hit in zip(keys, position, found)
        ]

    def class_name(self, index: int) -> str:
        """The user's name of class `index` ("3" when the labels were integers)."""
        return self.class_names[index] if self.class_names else str(int(index))

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Per split: rows per class label as a string ("-1" counts rows without a label)."""
        counts = {}
        for code, name in enumerate(SPLITS):
            labels = self.label[self.split == code]
            values, numbers = np.unique(labels, return_counts=True)
            counts[name] = {str(int(v)): int(n) for v, n in zip(values, numbers)}
        return counts


def dataset_fingerprint(sample_id: np.ndarray, split: np.ndarray, label: np.ndarray,
                        inputs: np.ndarray, num_classes: int, user_id: np.ndarray | None = None,
                        class_names: tuple[str, ...] | None = None) -> str:
    """sha256 hex over the shapes, num_classes (and class_names, when given), then the
    little-endian bytes of the ids (int64), split codes (int8), labels (int64) and inputs (float32,
    C order), then (when given) the user's string ids, UTF-8, each followed by a NUL byte. Data with
    integer ids and labels hashes exactly as before string ids and class names existed."""
    digest = hashlib.sha256()
    header = {"rows": len(sample_id), "input_shape": list(inputs.shape[1:]), "num_classes": int(num_classes)}
    if class_names is not None:
        header["class_names"] = list(class_names)
    digest.update(json.dumps(header).encode())
    for array, dtype in ((sample_id, "<i8"), (split, "i1"), (label, "<i8"), (inputs, "<f4")):
        digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    if user_id is not None:
        for text in user_id.tolist():
            digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def make_prepared(sample_id: np.ndarray, split: np.ndarray, label: np.ndarray,
                  inputs: np.ndarray, num_classes: int, user_id: np.ndarray | None = None,
                  class_names: tuple[str, ...] | list[str] | None = None) -> PreparedData:
    """A `PreparedData` with canonical dtypes and its fingerprint computed.

    split may be int8 codes or split names; inputs (N, *input_shape) any real dtype (-> float32);
    user_id (N,) strings (the user's ids, `sample_id` their keys) or None; class_names or None.
    """
    split = np.asarray(split)
    if split.dtype.kind in "USO":
        split = split_codes(split)
    arrays = (np.ascontiguousarray(sample_id, dtype=np.int64), split.astype(np.int8),
              np.ascontiguousarray(label, dtype=np.int64), np.ascontiguousarray(inputs, dtype=np.float32))
    if user_id is not None:
        user_id = np.array([str(v) for v in np.asarray(user_id).tolist()], dtype=object)
    if class_names is not None:
        class_names = tuple(str(name) for name in class_names)
    fingerprint = dataset_fingerprint(*arrays, num_classes, user_id, class_names)
    return PreparedData(*arrays, num_classes=int(num_classes), fingerprint=fingerprint,
                        user_id=user_id, class_names=class_names)


def split_codes(names: np.ndarray) -> np.ndarray:
    """(N,) split names -> (N,) int8 codes into SPLITS; an unknown name is a ValueError."""
    names = np.asarray(names).astype(str)
    unknown = sorted(set(names.tolist()) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split names {', '.join(unknown)}; valid: {', '.join(SPLITS)}")
    values, inverse = np.unique(names, return_inverse=True)
    return np.array([SPLITS.index(v) for v in values], dtype=np.int8)[inverse.reshape(-1)]


def _meta(data: PreparedData) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "rows": len(data),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "class_names": None if data.class_names is None else list(data.class_names),
        "sample_ids": "int" if data.user_id is None else "string",
        "class_counts": data.class_counts(),
        "fingerprint": data.fingerprint,
    }


def write_prepared(data: PreparedData, directory: str | Path) -> None:
    """Write `data` as `directory/dataset.parquet` + `directory/meta.json`, atomically: the files are
    written into a scratch directory beside `directory`, which then replaces it whole."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    width = math.prod(data.input_shape)
    flat = np.ascontiguousarray(data.inputs, dtype=np.float32).reshape(len(data), width)
    columns = {
        "sample_id": pa.array(data.sample_id, pa.int64()),
        "split": pa.array(np.asarray(SPLITS, dtype=object)[data.split], pa.string()),
        "label": pa.array(data.label, pa.int64()),
        "input": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), width),
    }
    if data.user_id is not None:
        columns["user_id"] = pa.array(data.user_id.tolist(), pa.string())
    table = pa.table(columns)
    scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}.", dir=directory.parent))
    try:
        pq.write_table(table, scratch / DATASET_FILE, row_group_size=65536)
        atomic_write_json(scratch / META_FILE, _meta(data))
        replace_dir(scratch, directory)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def load_prepared(directory: str | Path) -> PreparedData:
    """Read what `write_prepared` wrote; refuse a directory whose data does not match meta.json."""
    directory = Path(directory)
    meta_path, data_path = directory / META_FILE, directory / DATASET_FILE
    for path in (meta_path, data_path):
        if not path.exists():
            raise PreparedDataError(f"{path}: missing; run `distillery prepare` (or `dvc repro prepare`)")
    rerun = "re-run `distillery prepare` (or `dvc repro prepare`)"
    try:
        meta = json.loads(meta_path.read_text())
        input_shape = tuple(int(n) for n in meta["input_shape"])
        meta["num_classes"], meta["fingerprint"]  # noqa: B018 - present, or the file is damaged
    except (ValueError, KeyError, TypeError) as error:
        raise PreparedDataError(f"{meta_path}: damaged ({type(error).__name__}: {error}); {rerun}") from None
    try:
        table = pq.read_table(data_path)
    except (pa.ArrowException, OSError) as error:  # truncated or overwritten after prepare wrote it
        raise PreparedDataError(
            f"{data_path}: not a readable Parquet file ({first_sentence(error)}); {rerun}"
        ) from None
    column = table.column("input").combine_chunks()
    flat = column.values.to_numpy(zero_copy_only=False) if len(column) else np.empty(0, np.float32)
    split_code = pc.index_in(table.column("split"), value_set=pa.array(SPLITS))
    if split_code.null_count:
        raise PreparedDataError(
            f"{data_path}: split values outside {', '.join(SPLITS)}; re-run `distillery prepare`"
        )
    user_id = None
    if "user_id" in table.column_names:
        user_id = np.array(table.column("user_id").to_pylist(), dtype=object)
    data = make_prepared(
        sample_id=table.column("sample_id").to_numpy(),
        split=split_code.to_numpy(zero_copy_only=False),
        label=table.column("label").to_numpy(),
        inputs=flat.reshape(len(table), *input_shape),
        num_classes=meta["num_classes"],
        user_id=user_id,
        class_names=meta.get("class_names"),
    )
    if data.fingerprint != meta["fingerprint"]:
        raise PreparedDataError(
            f"{data_path}: content fingerprint {data.fingerprint[:12]}.. does not match "
            f"{meta_path} ({meta['fingerprint'][:12]}..); the files were changed or mixed up: "
            f"re-run `distillery prepare`"
        )
    return data
