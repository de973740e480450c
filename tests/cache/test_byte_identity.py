"""The bytes a cache build leaves on disk do not change when the code is restructured.

`golden_cache.json` holds the sha256 of every file of caches built from fixed synthetic rows by an
exactly computing teacher (small integers, so every product and sum is exact in any order on any
CPU), one per store kind. It was computed by the code before the cache package was split into
build / stores / readers, and every later build must reproduce it file for file.

The digests also depend on the pinned zarr, numcodecs and pyarrow (their zstd, the Parquet
`created_by` field) and on the package version in cache.json. After upgrading one of those on
purpose, check the caches still read back (tests/cache), then rewrite the file:

    python -m tests.cache.test_byte_identity --write
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.cache.helpers import INPUT_DIM, NUM_CLASSES, Rows, build, small_params

GOLDEN = Path(__file__).with_name("golden_cache.json")
VARIANTS = {
    "zarr-float16": dict(store="zarr"),
    "parquet-float32-sparse": dict(
        store="parquet", logits_dtype="float32", features_dtype="float16", sparse_top_k=3
    ),
}


class ExactTeacher:
    """A teacher whose outputs are exact in float32: integer inputs and weights, powers-of-two scales."""

    provider = "ExactExecutionProvider"
    input_name = "input"
    logits_name = "logits"
    tap_names = ("embed", "conv")

    def __init__(self) -> None:
        rng = np.random.default_rng(7)
        self.w = rng.integers(-3, 4, (INPUT_DIM, NUM_CLASSES)).astype(np.float64)
        self.v = rng.integers(-3, 4, (INPUT_DIM, 5)).astype(np.float64)
        self.u = rng.integers(-3, 4, (INPUT_DIM, 8)).astype(np.float64)

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(inputs, np.float64)
        return {
            "logits": (x @ self.w / 4).astype(np.float32),
            "embed": (x @ self.v / 8).astype(np.float32),
            "conv": (x @ self.u / 16).reshape(-1, 2, 2, 2).astype(np.float32),
        }


def golden_rows(num_rows: int = 150) -> Rows:
    """Fixed rows: ids 1000+3i, cycling splits, labels from a seeded generator, integer inputs."""
    rng = np.random.default_rng(11)
    split = (np.arange(num_rows) % 4).astype(np.int8)
    label = rng.integers(0, NUM_CLASSES, num_rows).astype(np.int64)
    label[split == 3] = -1
    inputs = rng.integers(-4, 5, (num_rows, INPUT_DIM)).astype(np.float32)
    return Rows(1000 + 3 * np.arange(num_rows, dtype=np.int64), split, label, inputs, "e" * 64)


def file_digests(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 hex of every file under `directory`."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def build_variant(tmp: Path, variant: str) -> dict[str, str]:
    """Build the golden cache `variant` under `tmp`; its file digests."""
    result = build(tmp, golden_rows(), ExactTeacher(), small_params(**VARIANTS[variant]), name=variant)
    return file_digests(result.store_dir)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_cache_is_byte_identical_to_the_golden_build(tmp_path, variant):
    golden = json.loads(GOLDEN.read_text())[variant]
    built = build_variant(tmp_path, variant)
    assert sorted(built) == sorted(golden), "the store holds other files than the golden build"
    changed = sorted(name for name in golden if built[name] != golden[name])
    assert not changed, f"files whose bytes changed: {changed} (see this module's docstring)"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    with tempfile.TemporaryDirectory() as tmp:
        digests = {variant: build_variant(Path(tmp), variant) for variant in VARIANTS}
    GOLDEN.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
