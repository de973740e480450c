"""`LazyCache`: a finished cache read per batch from the store, for caches too large for RAM.

Ids, splits and labels are held in RAM; logits, features and the sparse form are gathered per
batch from just the inner chunks the rows fall in (checked by their crc32c), with no second copy
on disk. Only a store that reads arbitrary rows cheaply (`Store.reads_rows`: Zarr) can be read this
way; train it with `pipeline.cache.reader.block_shuffle` orders, which keep each batch's rows in
few chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.cache.format import TOKEN_LENGTHS, CacheMetadata
from pipeline.cache.reader import ArrayCache, CacheSchema
from pipeline.cache.store import Store


class LazyCache(ArrayCache):
    """A finished cache whose large arrays stay in `store` (its `reads_rows` must be true).

    path: the store directory; metadata: its cache.json; small: sample_id, split and label (and
    view, in a view cache), read whole (and verified) by the caller.
    """

    def __init__(
        self, path: Path, metadata: CacheMetadata, store: Store, small: Mapping[str, np.ndarray]
    ) -> None:
        self.path, self.metadata, self._store = path, metadata, store
        self._sample_id, self._split, self._label = (small[name] for name in ("sample_id", "split", "label"))
        self._view = small.get("view")
        layout = metadata.layout
        self.schema = CacheSchema(
            num_rows=layout.num_rows,
            num_classes=layout.num_classes,
            logits_dtype=layout.logits_dtype,
            feature_shapes=dict(layout.feature_shapes),
            sparse_top_k=layout.sparse_top_k,
            view_count=layout.view_count,
            logits=layout.logits,
            token_shapes=dict(layout.token_shapes),
            token_form=layout.token_form,
        )
        self._small = dict(small)
        if TOKEN_LENGTHS in small:
            self._offsets = np.concatenate([[0], np.cumsum(small[TOKEN_LENGTHS], dtype=np.int64)])

    def _whole(self, name: str) -> np.ndarray:
        """Array `name` read whole (large: prefer `batch`)."""
        if name in self._small:
            return self._small[name]
        if name in self.metadata.layout.ragged_arrays():
            layout = self.metadata.layout
            return np.concatenate(
                [self._store.read(name, layout.shard_rows(k)) for k in range(layout.num_shards)]
            )
        return self._store.read(name, slice(0, len(self)))

    def _gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        if name in self._small:
            return self._small[name][rows]
        unique, inverse = np.unique(rows, return_inverse=True)
        return self._store.read_rows(name, unique)[inverse]

    def _gather_tokens(self, name: str, rows: np.ndarray) -> np.ndarray:
        """The tokens of `rows`, reading each touched shard's part of the ragged array whole."""
        layout, parts = self.metadata.layout, []
        shards = np.asarray(rows, np.int64) // layout.rows_per_shard
        values = {int(k): self._store.read(name, layout.shard_rows(int(k))) for k in np.unique(shards)}
        for row, shard in zip(rows, shards):
            base = self._offsets[int(shard) * layout.rows_per_shard]
            parts.append(values[int(shard)][self._offsets[row] - base : self._offsets[row + 1] - base])
        return np.concatenate(parts) if parts else np.empty((0, *layout.ragged_arrays()[name][0]))
