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

from pipeline.cache.format import CacheMetadata
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
        )

    def _whole(self, name: str) -> np.ndarray:
        """Array `name` read whole (large: prefer `batch`)."""
        return self._store.read(name, slice(0, len(self)))

    def _gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(rows, return_inverse=True)
        return self._store.read_rows(name, unique)[inverse]
