"""The cache's on-disk contract shared by both stores: array names, layout, metadata, refusals.

Every store (Zarr, Parquet) holds the same named arrays, aligned by row:

    sample_id (N,) int64 | split (N,) int8 | label (N,) int64 | logits (N, C) float16/32
    features/<tap> (N, *tap_shape) float16/32
    sparse/values (N, K) float16/32 | sparse/indices (N, K) int32 | sparse/logsumexp (N,) float32
    view (N,) int32 | view_params/<column> (N,) VIEW_DTYPE's column dtype   (a view cache only)

and one metadata file, `cache.json`, at the store's root (docs/cache_format.md). It is written
with `"complete": false` when the store is created and rewritten with `"complete": true` and the
manifest of every shard (row range + sha256 of each array's stored bytes) as the very last step,
so its flag is the completion marker. Nothing in it depends on time, host or process: two builds
of the same inputs are byte-identical.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache.token_layout import TOKENS, form_arrays
from pipeline.errors import DistilleryError
from pipeline.names import check_name, child_path
from pipeline.transforms.views import VIEW_COLUMNS

FORMAT_NAME = "distillery-cache"
FORMAT_VERSION = 1
METADATA_FILE = "cache.json"
STORED_FLOATS = ("float16", "float32")
"""The dtypes logits and features may be stored in."""
LOGITS_FORMS = ("row", "token", "none")
"""How a cache holds logits: (N, C) per row, ragged per token (an LM's (B, L, V)), or not at all
(a teacher without logits, `teacher.logits_name: null`)."""
TOKEN_LENGTHS = "token_lengths"
"""The (N,) int64 array of real tokens per row, present when any output is per token."""


class StaleCacheError(DistilleryError):
    """The cache was built from another dataset or teacher than the one in use."""


class IncompleteCacheError(DistilleryError):
    """The directory holds a cache whose build never finished (no completion marker)."""


class CacheCorruptError(DistilleryError):
    """Stored bytes fail their checksum (or the manifest digest): names the array and the rows."""


def code_version() -> str:
    """The installed distillery package version, recorded in the metadata."""
    try:
        return importlib.metadata.version("distillery")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def plan_shards(num_rows: int, rows_per_shard: int) -> list[slice]:
    """The row range of every shard: [0, s), [s, 2s), ..., the last one possibly shorter.

    Shards are the unit of writing: one writer per shard, whole shards only (Zarr 3.1 loses data
    silently on concurrent partial shard writes, zarr-python#3682; docs/cache_format.md).
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    return [
        slice(start, min(start + rows_per_shard, num_rows)) for start in range(0, num_rows, rows_per_shard)
    ]


@dataclass(frozen=True)
class CacheLayout:
    """Shapes, dtypes and chunking of one cache (everything a store needs to create its arrays).

    feature_shapes: tap name -> per-row shape. rows_per_shard is a multiple of rows_per_chunk.
    view_count: K views per sample (`cache.views`, docs/transforms.md "Views in the cache"): the
    store then also holds `view` and one `view_params/<column>` array per VIEW_DTYPE column; None
    (a single-view cache, whose cache.json does not mention it).
    logits: "row" (N, C), "token" (ragged `tokens/logits` (M, C)) or "none" (num_classes 0).
    token_shapes: per-token tap name -> per-token shape, stored ragged as `tokens/<tap>` (M, *shape)
    beside `token_lengths` (N,); every per-token output of a row has its `token_lengths` tokens.
    token_form: per-token logits stored sampled or top-k instead of dense `tokens/logits`
    (`cache.token_logits`; pipeline/cache/token_layout.py); None = dense, and absent from cache.json.
    """

    num_rows: int
    num_classes: int
    logits_dtype: str
    features_dtype: str
    feature_shapes: dict[str, tuple[int, ...]]
    sparse_top_k: int | None
    rows_per_chunk: int
    rows_per_shard: int
    view_count: int | None = None
    logits: str = "row"
    token_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    token_form: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.logits not in LOGITS_FORMS:
            raise ValueError(f"layout.logits is {self.logits!r}, not one of {', '.join(LOGITS_FORMS)}")
        if (self.logits == "none") != (self.num_classes == 0):
            raise ValueError(f"layout.num_classes is {self.num_classes} with logits {self.logits!r}")
        counts = {"num_rows": self.num_rows, "num_classes": max(self.num_classes, 1)}
        counts |= {"rows_per_chunk": self.rows_per_chunk, "rows_per_shard": self.rows_per_shard}
        for key, value in counts.items():
            if type(value) is not int or value < (0 if key == "num_rows" else 1):
                raise ValueError(f"layout.{key} is {value!r}, not a count")
        shapes = [*self.feature_shapes.values(), *self.token_shapes.values()]
        dims = [d for shape in shapes for d in shape] + [self.sparse_top_k or 1]
        dims.append(1 if self.view_count is None else self.view_count - 1)
        if any(type(d) is not int or d < 0 for d in dims):
            raise ValueError("a feature shape or sparse_top_k is not made of counts")
        for tap in (*self.feature_shapes, *self.token_shapes):
            check_name(tap, "teacher output")  # it becomes a path in the store and the sidecar
        if self.token_form is not None and self.logits != "token":
            raise ValueError("a per-token logits form needs logits per token")
        if self.sparse_top_k is not None and self.logits != "row":
            raise ValueError(
                "the sparse top-k form needs logits per row"
            )  # it becomes a path in the store and the sidecar
        for dtype in (self.logits_dtype, self.features_dtype):
            if dtype not in STORED_FLOATS:
                raise ValueError(f"stored dtype {dtype!r} is not one of {', '.join(STORED_FLOATS)}")
        if self.rows_per_shard % self.rows_per_chunk:
            raise ValueError(
                f"rows_per_shard {self.rows_per_shard} is not a multiple of rows_per_chunk "
                f"{self.rows_per_chunk}"
            )

    @property
    def num_shards(self) -> int:
        """Number of shards (the last may be short); arithmetic, so a damaged row count costs nothing."""
        return -(-self.num_rows // self.rows_per_shard)

    def shard_rows(self, shard_index: int) -> slice:
        """Row range of shard `shard_index`."""
        start = shard_index * self.rows_per_shard
        return slice(start, min(start + self.rows_per_shard, self.num_rows))

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Array name -> (per-row shape, stored dtype), in the fixed order of the format."""
        specs: dict[str, tuple[tuple[int, ...], str]] = {
            "sample_id": ((), "int64"),
            "split": ((), "int8"),
            "label": ((), "int64"),
        }
        if self.logits == "row":
            specs["logits"] = ((self.num_classes,), self.logits_dtype)
        if self.ragged_arrays():
            specs[TOKEN_LENGTHS] = ((), "int64")
        for tap, shape in self.feature_shapes.items():
            specs[f"features/{tap}"] = (tuple(shape), self.features_dtype)
        if self.sparse_top_k is not None:
            k = self.sparse_top_k
            specs["sparse/values"] = ((k,), self.logits_dtype)
            specs["sparse/indices"] = ((k,), "int32")
            specs["sparse/logsumexp"] = ((), "float32")
        if self.view_count is not None:
            specs["view"] = ((), "int32")
            for column, dtype in VIEW_COLUMNS:
                specs[f"view_params/{column}"] = ((), np.dtype(dtype).name)
        return specs

    def ragged_arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Ragged array name (`tokens/<output>`) -> (per-token shape, stored dtype): each holds the
        real tokens of every row back to back, row r's being the `token_lengths[r]` after the
        previous rows' (docs/cache_format.md, "Per-token outputs")."""
        specs: dict[str, tuple[tuple[int, ...], str]] = {}
        if self.logits == "token" and self.token_form is not None:
            specs |= form_arrays(self.token_form)
        elif self.logits == "token":
            specs[f"{TOKENS}/logits"] = ((self.num_classes,), self.logits_dtype)
        for tap, shape in self.token_shapes.items():
            specs[f"{TOKENS}/{tap}"] = (tuple(shape), self.features_dtype)
        return specs

    def stored_names(self) -> list[str]:
        """Every array a shard holds: the row-aligned ones, then the ragged ones."""
        return [*self.arrays(), *self.ragged_arrays()]

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (tuples as lists); `logits` and `token_shapes` only when not the
        defaults, so a cache of per-row outputs reads as it always did."""
        data = asdict(self)
        data["feature_shapes"] = {k: list(v) for k, v in self.feature_shapes.items()}
        if self.view_count is None:  # a single-view cache.json stays byte-identical to before views
            del data["view_count"]
        data["token_shapes"] = {k: list(v) for k, v in self.token_shapes.items()}
        if data["logits"] == "row":
            del data["logits"]
        if not data["token_shapes"]:
            del data["token_shapes"]
        if data["token_form"] is None:
            del data["token_form"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CacheLayout:
        """Inverse of `to_json`."""
        data = dict(data)
        data["feature_shapes"] = {k: tuple(v) for k, v in data["feature_shapes"].items()}
        data["token_shapes"] = {k: tuple(v) for k, v in data.get("token_shapes", {}).items()}
        return cls(**data)


@dataclass(frozen=True)
class CacheMetadata:
    """What `cache.json` holds (once per cache).

    store: "zarr" or "parquet". teacher: sha256, input/logits names and tap names.
    dataset_fingerprint: PreparedData.fingerprint. params: the cache section used.
    build_fingerprint: sha256 of everything above that decides the bytes (the resume key).
    manifest: one record per completed shard: {"shard", "start", "stop", "sha256": {array: hex}}.
    """

    store: str
    layout: CacheLayout
    teacher: dict[str, Any]
    dataset_fingerprint: str
    params: dict[str, Any]
    code_version: str
    build_fingerprint: str
    complete: bool = False
    manifest: list[dict[str, Any]] = field(default_factory=list)

    @property
    def teacher_sha256(self) -> str:
        """sha256 hex of the teacher ONNX file the cache was built from."""
        return str(self.teacher["sha256"])

    def to_json(self) -> dict[str, Any]:
        """The JSON document written to `cache.json` (deterministic key order)."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "complete": self.complete,
            "store": self.store,
            "code_version": self.code_version,
            "build_fingerprint": self.build_fingerprint,
            "dataset_fingerprint": self.dataset_fingerprint,
            "teacher": self.teacher,
            "layout": self.layout.to_json(),
            "arrays": {
                name: {"row_shape": list(shape), "dtype": dtype}
                for name, (shape, dtype) in self.layout.arrays().items()
            }
            | {
                name: {"token_shape": list(shape), "dtype": dtype, "ragged_by": TOKEN_LENGTHS}
                for name, (shape, dtype) in self.layout.ragged_arrays().items()
            },
            "params": self.params,
            "manifest": self.manifest,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CacheMetadata:
        """Parse `cache.json`; refuses other formats and versions."""
        if data.get("format") != FORMAT_NAME:
            raise IncompleteCacheError(
                f"{METADATA_FILE} is not a distillery cache (format {data.get('format')!r})"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise StaleCacheError(
                f"cache format version {data.get('format_version')} is not the supported {FORMAT_VERSION}; "
                "re-run `dvc repro cache`"
            )
        return cls(
            store=data["store"],
            layout=CacheLayout.from_json(data["layout"]),
            teacher=dict(data["teacher"]),
            dataset_fingerprint=data["dataset_fingerprint"],
            params=dict(data["params"]),
            code_version=data["code_version"],
            build_fingerprint=data["build_fingerprint"],
            complete=bool(data["complete"]),
            manifest=list(data["manifest"]),
        )


def build_fingerprint(
    store: str, dataset_fingerprint: str, teacher: Mapping[str, Any], params: Mapping[str, Any], version: str
) -> str:
    """sha256 hex of every input that decides the cache's bytes; a scratch build resumes only
    when this matches (params that do not change the bytes, such as the reader threshold, are
    left out by the caller)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "store": store,
        "dataset_fingerprint": dataset_fingerprint,
        "teacher": dict(teacher),
        "params": dict(params),
        "code_version": version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def array_path(root: str | Path, name: str) -> Path:
    """The path of cache array `name` ("logits", "features/<tap>", ...) under `root`, every part
    checked by `pipeline.names.child_path` (so no array name leaves `root`)."""
    path = Path(root)
    for part in name.split("/"):
        path = child_path(path, part, "cache array")
    return path


def array_digest(array: np.ndarray) -> str:
    """sha256 hex of an array's C-order bytes (the manifest's per-shard content check)."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def read_metadata(store_dir: str | Path) -> CacheMetadata:
    """The metadata of the cache at `store_dir`; IncompleteCacheError when there is none."""
    path = Path(store_dir) / METADATA_FILE
    if not path.exists():
        raise IncompleteCacheError(
            f"{store_dir} holds no {METADATA_FILE}: not a finished distillery cache; run `dvc repro cache`"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CacheCorruptError(f"{path} is not valid JSON ({error}); re-run `dvc repro cache`") from None
    if not isinstance(data, dict):
        raise CacheCorruptError(f"{path} is damaged (not a JSON object); re-run `dvc repro cache`")
    try:
        return CacheMetadata.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        what = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise CacheCorruptError(f"{path} is damaged ({what}); re-run `dvc repro cache`") from None


def short(digest: str) -> str:
    """First 12 hex digits of a sha256, for messages."""
    return digest[:12]
