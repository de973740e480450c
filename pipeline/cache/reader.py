"""The one reader API over every cache store: sizes, schema, `batch(rows)`, shuffled iteration.

`ArrayCache` is every reader's `batch()`: it gathers the rows of the named arrays and makes the
float32 tensors of a `TeacherBatch`. `MemoryCache` holds every array in RAM (numpy): the reader
`open_cache` hands back when the cache fits in memory (a random 256-row batch is then a numpy
gather: well under the 10 ms goal), over a memory map (`MmapCache`), and the one the cache tests
and online/mutual learning build directly; `LazyCache` (lazy.py) gathers from the store per batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from pipeline.cache.batch import SPLITS, UNLABELLED, SparseLogits, TeacherBatch, TokenBatch
from pipeline.cache.format import TOKEN_LENGTHS, TOKENS
from pipeline.cache.token_layout import form_arrays, is_form_array
from pipeline.cache.token_store import padded_tokens, targets_of
from pipeline.transforms.views import VIEW_DTYPE


@dataclass(frozen=True)
class CacheSchema:
    """Shapes and dtypes of a cache.

    num_rows: N rows (every split, labelled or not).
    num_classes: C, the width of the logits.
    logits_dtype: "float16" or "float32", as stored (batches are always float32).
    feature_shapes: tap name -> per-row shape, e.g. {"embed": (64,), "conv": (32, 4, 4)}.
    sparse_top_k: K of the stored top-k form, or None when there is none.
    view_count: K views per sample of a view cache (`cache.views`), or None for a single-view cache.
    logits: "row" (N, C), "token" (per token, ragged) or "none" (a teacher without logits; C = 0).
    token_shapes: per-token tap -> per-token shape (stored ragged; batches: `TeacherBatch.tokens`).
    token_form: the layout's `token_form` when the per-token logits are stored sampled or top-k
        (batches: `TokenBatch.targets`), else None.
    """

    num_rows: int
    num_classes: int
    logits_dtype: str
    feature_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    sparse_top_k: int | None = None
    view_count: int | None = None
    logits: str = "row"
    token_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    token_form: Mapping | None = None

    @property
    def has_logits(self) -> bool:
        """Whether the cache holds teacher logits (per row or per token)."""
        return self.logits != "none"


class CacheReader(Protocol):
    """What a student's training reads; implemented by every store."""

    schema: CacheSchema

    def __len__(self) -> int: ...

    @property
    def sample_id(self) -> np.ndarray: ...

    @property
    def split(self) -> np.ndarray: ...

    @property
    def label(self) -> np.ndarray: ...

    def batch(self, rows: np.ndarray) -> TeacherBatch: ...


def rows_of_split(reader: CacheReader, split: str) -> np.ndarray:
    """(n,) int64 cache rows of one split ("train", "val", "test" or "unlabelled"), ascending."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return np.flatnonzero(reader.split == SPLITS.index(split)).astype(np.int64)


def block_shuffle(rows: np.ndarray, block_rows: int, blocks_per_window: int, seed: int = 0) -> np.ndarray:
    """A shuffle of `rows` ((n,) int64, ascending) that keeps reads local, for caches too large
    for RAM (a lazily read Zarr cache decodes every inner chunk a batch touches, ~0.5 ms each).

    Rows are cut into blocks of `block_rows` consecutive rows (use the cache's rows_per_chunk),
    the blocks are put in random order, and rows are shuffled within each window of
    `blocks_per_window` consecutive blocks: a batch of up to block_rows * blocks_per_window
    rows then spans at most two windows, i.e. at most 2 * blocks_per_window chunks. Every row appears
    exactly once; same seed, same order.
    """
    rows = np.asarray(rows, np.int64)
    rng = np.random.default_rng(seed)
    blocks = [rows[i : i + block_rows] for i in range(0, len(rows), block_rows)]
    order = rng.permutation(len(blocks))
    shuffled = []
    for start in range(0, len(order), blocks_per_window):
        window = np.concatenate([blocks[b] for b in order[start : start + blocks_per_window]])
        shuffled.append(rng.permutation(window))
    return np.concatenate(shuffled) if shuffled else rows


def iter_batches(
    reader: CacheReader,
    batch_size: int,
    rows: np.ndarray | None = None,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> Iterator[TeacherBatch]:
    """Mini-batches of `rows` (default: every row), shuffled by a seeded generator when asked.

    The same (rows, seed) gives the same batches on every machine (numpy PCG64).
    """
    rows = np.arange(len(reader), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    if shuffle:
        rows = np.random.default_rng(seed).permutation(rows)
    stop = len(rows) - (len(rows) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield reader.batch(rows[start : start + batch_size])


class ArrayCache:
    """A reader over the cache's named arrays (`CacheLayout.arrays()` names): the one `batch()` of
    every reader. Subclasses say how to read a whole array (`_whole`) and gather rows (`_gather`),
    and set `schema` and the (N,) `_sample_id`, `_split`, `_label` arrays held in RAM."""

    schema: CacheSchema
    _sample_id: np.ndarray
    _split: np.ndarray
    _label: np.ndarray
    _view: np.ndarray | None = None

    def _whole(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def _gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _gather_tokens(self, name: str, rows: np.ndarray) -> np.ndarray:
        """The tokens of rows `rows` of ragged array `name`, back to back ((T, *token_shape))."""
        raise NotImplementedError

    def _token_names(self) -> list[str]:
        names = list(self.schema.token_shapes)
        dense = self.schema.logits == "token" and self.schema.token_form is None
        return ["logits", *names] if dense else names

    def token_offsets(self) -> np.ndarray:
        """(N + 1,) int64 offsets of the rows' tokens in the ragged per-token arrays (row r's tokens
        are positions offsets[r]:offsets[r + 1]; offsets[-1] is the number of tokens), from the
        rows' token lengths alone: no per-token array is read."""
        return np.concatenate([[0], np.cumsum(self._whole(TOKEN_LENGTHS), dtype=np.int64)])

    def token_values(self, output: str) -> tuple[np.ndarray, np.ndarray]:
        """The flat form of per-token output `output` ("logits" or a per-token tap): values
        (M, *token_shape) in the stored dtype and offsets (N + 1,) int64, row r's tokens being
        values[offsets[r]:offsets[r + 1]]."""
        return self._whole(f"{TOKENS}/{output}"), self.token_offsets()

    def __len__(self) -> int:
        return len(self._sample_id)

    @property
    def sample_id(self) -> np.ndarray:
        return self._sample_id

    @property
    def split(self) -> np.ndarray:
        return self._split

    @property
    def label(self) -> np.ndarray:
        return self._label

    @property
    def logits(self) -> np.ndarray | None:
        """(N, C) raw logits in their stored dtype (for whole-cache analyses such as inspect); None
        unless the cache holds logits per row (per token: `token_values("logits")`)."""
        return self._whole("logits") if self.schema.logits == "row" else None

    @property
    def features(self) -> Mapping[str, np.ndarray]:
        """tap -> (N, *shape) teacher features (for whole-cache negatives, e.g. CRD)."""
        return {tap: self._whole(f"features/{tap}") for tap in self.schema.feature_shapes}

    @property
    def sparse(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The top-k form (values (N, K), indices (N, K), logsumexp (N,)), or None."""
        if self.schema.sparse_top_k is None:
            return None
        return tuple(self._whole(f"sparse/{part}") for part in ("values", "indices", "logsumexp"))

    @property
    def view(self) -> np.ndarray | None:
        """(N,) int32 view index of every row of a view cache (-1 = the original input), else None."""
        return None if self.schema.view_count is None else self._view

    def view_records(self, rows: np.ndarray) -> np.ndarray:
        """(B,) VIEW_DTYPE records of the rows `rows` of a view cache: the drawn params of each view
        (the untouched record for originals), for `pipeline.transforms.apply`."""
        rows = np.asarray(rows, np.int64)
        records = np.empty(len(rows), VIEW_DTYPE)
        for column in VIEW_DTYPE.names:
            records[column] = self._gather(f"view_params/{column}", rows)
        return records

    def batch(self, rows: np.ndarray) -> TeacherBatch:
        """The rows `rows` ((B,) int) as a TeacherBatch of float32 tensors (indices int64)."""
        rows = np.asarray(rows, np.int64)

        def floats(name: str) -> torch.Tensor:
            # torch widens float16 about twice as fast as numpy's astype: it is paid on every step
            return torch.from_numpy(self._gather(name, rows)).float()

        sparse = None
        if self.schema.sparse_top_k is not None:
            indices = torch.from_numpy(self._gather("sparse/indices", rows).astype(np.int64))
            sparse = SparseLogits(floats("sparse/values"), indices, floats("sparse/logsumexp"))
        tokens = self._token_batch(rows) if self._token_names() or self.schema.token_form else None
        logits = {"row": lambda: floats("logits"), "none": lambda: None}.get(
            self.schema.logits, lambda: tokens.padded.get("logits")
        )()
        return TeacherBatch(
            rows=rows,
            sample_id=self._sample_id[rows],
            split=self._split[rows],
            label=torch.from_numpy(self._label[rows]),
            logits=logits,
            features={tap: floats(f"features/{tap}") for tap in self.schema.feature_shapes},
            sparse=sparse,
            tokens=tokens,
        )

    def _token_batch(self, rows: np.ndarray) -> TokenBatch:
        """The per-token outputs of `rows`: flat, and padded to the batch's longest row with a mask."""
        lengths = np.asarray(self._gather(TOKEN_LENGTHS, rows), np.int64)
        width = int(lengths.max(initial=0))
        mask = np.arange(width)[None, :] < lengths[:, None]
        padded, flat = {}, {}
        for name in self._token_names():
            values = self._gather_tokens(f"{TOKENS}/{name}", rows).astype(np.float32, copy=False)
            out = np.zeros((len(rows), width, *values.shape[1:]), np.float32)
            out[mask] = values
            flat[name], padded[name] = torch.from_numpy(values), torch.from_numpy(out)
        targets = None
        if self.schema.token_form is not None:
            spec = self.schema.token_form
            stored = {name: self._gather_tokens(name, rows) for name in form_arrays(spec)}
            targets = padded_tokens(targets_of(spec, stored, self.schema.num_classes), mask)
        return TokenBatch(torch.from_numpy(lengths), torch.from_numpy(mask), padded, flat, targets)


class MemoryCache(ArrayCache):
    """A cache held in RAM: every array a numpy array, aligned by row.

    sample_id: (N,) int64; split: (N,) int8 codes into SPLITS; label: (N,) int64, -1 = unlabelled;
    logits: (N, C) float16 or float32, or None (a teacher without logits); features: tap -> (N, *shape);
    sparse: optional (values (N, K), indices (N, K), logsumexp (N,)).
    """

    def __init__(
        self,
        sample_id: np.ndarray,
        split: np.ndarray,
        label: np.ndarray,
        logits: np.ndarray | None,
        features: Mapping[str, np.ndarray] | None = None,
        sparse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        arrays = {"sample_id": sample_id, "split": split, "label": label}
        if logits is not None:
            arrays["logits"] = logits
        arrays |= {f"features/{tap}": array for tap, array in (features or {}).items()}
        if sparse is not None:
            arrays |= dict(zip(("sparse/values", "sparse/indices", "sparse/logsumexp"), sparse))
        self._hold(arrays)

    def _hold(self, arrays: Mapping[str, np.ndarray], token_form: Mapping | None = None) -> None:
        """Keep `arrays` (cache array name -> (N, ...) array; ragged `tokens/<output>` arrays
        (M, ...) beside `token_lengths` (N,)) and derive the schema; token_form: the layout's, when
        the per-token logits are stored sampled or top-k."""
        n = len(arrays["sample_id"])
        for name, array in arrays.items():
            if len(array) != n and not name.startswith(f"{TOKENS}/"):
                raise ValueError(f"cache array {name!r} has {len(array)} rows, sample_id has {n}")
        self._arrays = dict(arrays)
        self._sample_id = np.asarray(arrays["sample_id"], np.int64)
        self._split = np.asarray(arrays["split"], np.int8)
        self._label = np.asarray(arrays["label"], np.int64)
        self._view = None if "view" not in arrays else np.asarray(arrays["view"], np.int32)
        if TOKEN_LENGTHS in arrays:
            self._offsets = np.concatenate([[0], np.cumsum(arrays[TOKEN_LENGTHS], dtype=np.int64)])
        token_logits = arrays.get(f"{TOKENS}/logits")
        logits, values = arrays.get("logits", token_logits), arrays.get("sparse/values")
        form = "none" if logits is None else "row" if "logits" in arrays else "token"
        if token_form is not None:
            form, logits = "token", np.empty((0, int(token_form["vocab_size"])), np.float32)
        self.schema = CacheSchema(
            num_rows=n,
            num_classes=0 if logits is None else int(logits.shape[-1]),
            logits_dtype="float32" if logits is None else str(logits.dtype),
            feature_shapes={
                name.split("/", 1)[1]: tuple(a.shape[1:])
                for name, a in arrays.items()
                if name.startswith("features/")
            },
            sparse_top_k=None if values is None else int(values.shape[1]),
            view_count=None if self._view is None else int(self._view.max(initial=-1)) + 1,
            logits=form,
            token_shapes={
                name.split("/", 1)[1]: tuple(a.shape[1:])
                for name, a in arrays.items()
                if name.startswith(f"{TOKENS}/") and name != f"{TOKENS}/logits" and not is_form_array(name)
            },
            token_form=token_form,
        )

    def _whole(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def _gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self._arrays[name][rows]

    def _gather_tokens(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self._arrays[name][token_positions(self._offsets, rows)]


def token_positions(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(T,) int64 positions in a ragged array of the tokens of `rows` ((B,) int64), row by row;
    offsets: (N + 1,) int64."""
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + within


__all__ = [
    "ArrayCache",
    "CacheReader",
    "CacheSchema",
    "MemoryCache",
    "UNLABELLED",
    "block_shuffle",
    "iter_batches",
    "rows_of_split",
]
