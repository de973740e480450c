"""Build a sampled token-logits cache in its own process, optionally SIGKILLing itself in shard 1.

    python -m tests.cache._token_build_subprocess DIR STORE [kill]

With `kill`: a Zarr build dies after two of shard 1's form arrays are written (no progress record),
a Parquet build right after shard 1's progress record is on disk.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from pipeline.cache import shards
from pipeline.cache.params import TokenLogitsParams
from pipeline.cache.zarr_store import ZarrStore
from tests.cache.helpers import build, small_params
from tests.cache.token_helpers import lm_rows, lm_teacher


def params(store: str):
    """The params of the build: 8-row shards, batches of 3, 8 draws a token."""
    sampled = TokenLogitsParams(form="sampled", draws=8, seed=3)
    return small_params(store=store, rows_per_chunk=4, chunks_per_shard=2, batch_size=3, token_logits=sampled)


def _arm(store: str) -> None:
    if store == "zarr":
        real, written = ZarrStore._write_ragged, []

        def write_ragged(self, name, shard_index, values, token_shape):
            real(self, name, shard_index, values, token_shape)
            if shard_index == 1:
                written.append(name)
                if len(written) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)

        ZarrStore._write_ragged = write_ragged
    else:
        real_record = shards._record_shard

        def record(build_, index, record_):
            real_record(build_, index, record_)
            if index == 1:
                os.kill(os.getpid(), signal.SIGKILL)

        shards._record_shard = record


def main() -> None:
    directory, store = Path(sys.argv[1]), sys.argv[2]
    if sys.argv[3:] == ["kill"]:
        _arm(store)
    build(directory, lm_rows(), lm_teacher(directory / "lm.onnx"), params(store))


if __name__ == "__main__":
    main()
