"""Writing prepared data (format 2) as the rows stream by: the index, the shards and meta.json, into a
scratch directory that replaces the target whole when everything is written (nothing half-written)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cache.batch import SPLITS
from pipeline.data.fields import FieldSpec, Ragged, spec_of
from pipeline.data.fingerprint import Fingerprinter, is_legacy
from pipeline.data.shards import ShardWriter
from pipeline.io import atomic_write_json, replace_dir

FORMAT_VERSION = 2
META_FILE = "meta.json"
INDEX_FILE = "index.parquet"
BLOCK_ROWS = 1024
BLOCKS_PER_SHARD = 64


def class_counts(split: np.ndarray, label: np.ndarray) -> dict[str, dict[str, int]]:
    """Per split: rows per class label as a string ("-1" counts rows without a label)."""
    counts = {}
    for code, name in enumerate(SPLITS):
        values, numbers = np.unique(label[split == code], return_counts=True)
        counts[name] = {str(int(v)): int(n) for v, n in zip(values, numbers)}
    return counts


class PreparedWriter:
    """Streams one prepared dataset to `directory`.

    The index (sample_id (N,) int64, split (N,) int8 codes, label (N,) int64, user_id (N,) str or
    None) is known up front; `add` takes the field values of the next rows, in row order; `close`
    checks every row arrived, writes meta.json and swaps the scratch directory in; `abort` (or an
    exception inside `with`) removes the scratch and leaves `directory` as it was.
    """

    def __init__(
        self,
        directory: str | Path,
        sample_id: np.ndarray,
        split: np.ndarray,
        label: np.ndarray,
        num_classes: int,
        fields: Mapping[str, FieldSpec],
        user_id: np.ndarray | None = None,
        class_names=None,
        transforms: Mapping[str, list] | None = None,
        block_rows: int = BLOCK_ROWS,
        blocks_per_shard: int = BLOCKS_PER_SHARD,
    ):
        self.directory = Path(directory)
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self.index = (
            np.asarray(sample_id, np.int64),
            np.asarray(split, np.int8),
            np.asarray(label, np.int64),
        )
        self.user_id, self.class_names, self.num_classes = user_id, class_names, int(num_classes)
        self.fields, self.transforms = dict(fields), {k: list(v) for k, v in (transforms or {}).items() if v}
        self.block_rows = int(block_rows)
        self.fingerprinter = Fingerprinter(
            *self.index, num_classes, self.fields, self.transforms, user_id, class_names
        )
        self.scratch = Path(
            tempfile.mkdtemp(prefix=f".tmp-{self.directory.name}.", dir=self.directory.parent)
        )
        self.shards = ShardWriter(self.scratch, self.fields, block_rows, blocks_per_shard)
        self.rows_written = 0

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()

    def add(self, chunk: Mapping[str, np.ndarray | Ragged]) -> None:
        """The next rows: {field: (n, *shape) array or Ragged} in the declared dtypes."""
        for name, spec in self.fields.items():
            got = spec_of(chunk[name])
            if (
                got.dtype != spec.dtype
                or len(got.shape) != len(spec.shape)
                or (not spec.variable and got.shape != spec.shape)
            ):
                raise ValueError(f"field {name!r}: chunk is {got.describe()}, declared {spec.describe()}")
        self.fingerprinter.update(chunk)
        self.shards.add(chunk)
        self.rows_written += len(next(iter(chunk.values()))) if chunk else 0

    def abort(self) -> None:
        """Remove the scratch directory; `directory` is untouched."""
        shutil.rmtree(self.scratch, ignore_errors=True)

    def close(self) -> str:
        """Finish: the fingerprint. ValueError when fewer or more rows arrived than the index has."""
        try:
            if self.rows_written != len(self.index[0]):
                raise ValueError(f"{self.rows_written} rows written but the index has {len(self.index[0])}")
            shards = self.shards.close()
            fingerprint = self.fingerprinter.hexdigest()
            sample_id, split, label = self.index
            columns = {
                "sample_id": pa.array(sample_id, pa.int64()),
                "split": pa.array(np.asarray(SPLITS, dtype=object)[split], pa.string()),
                "label": pa.array(label, pa.int64()),
            }
            if self.user_id is not None:
                columns["user_id"] = pa.array([str(v) for v in self.user_id.tolist()], pa.string())
            pq.write_table(pa.table(columns), self.scratch / INDEX_FILE)
            atomic_write_json(self.scratch / META_FILE, self._meta(shards, fingerprint))
            replace_dir(self.scratch, self.directory)
            return fingerprint
        except BaseException:
            self.abort()
            raise

    def _meta(self, shards: list[dict], fingerprint: str) -> dict:
        _, split, label = self.index
        fixed = [spec for spec in self.fields.values() if not spec.variable]
        meta = {
            "format_version": FORMAT_VERSION,
            "rows": len(split),
            "fields": {name: spec.to_json() for name, spec in self.fields.items()},
            "transforms": self.transforms,
            "block_rows": self.block_rows,
            "shards": shards,
            "num_classes": self.num_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
            "sample_ids": "int" if self.user_id is None else "string",
            "class_counts": class_counts(split, label),
            "legacy_fingerprint": is_legacy(self.fields, self.transforms),
            "fingerprint": fingerprint,
        }
        if len(fixed) == 1:
            meta["input_shape"] = list(fixed[0].shape)
        return meta


def write_arrays(
    directory: str | Path,
    sample_id,
    split,
    label,
    num_classes: int,
    fields: Mapping[str, np.ndarray | Ragged],
    rows_per_chunk: int = 65536,
    **kwargs,
) -> str:
    """In-memory fields ({name: (N, *shape) array or Ragged}) -> format 2 at `directory`; the
    fingerprint. kwargs: user_id, class_names, transforms, block_rows, blocks_per_shard."""
    specs = {name: spec_of(values) for name, values in fields.items()}
    with PreparedWriter(directory, sample_id, split, label, num_classes, specs, **kwargs) as writer:
        for start in range(0, len(sample_id), rows_per_chunk):
            rows = np.arange(start, min(start + rows_per_chunk, len(sample_id)))
            writer.add({n: v.take(rows) if isinstance(v, Ragged) else v[rows] for n, v in fields.items()})
        return writer.close()
