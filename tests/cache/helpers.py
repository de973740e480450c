"""Tiny rows and a deterministic fake teacher for the cache tests (no ONNX, no H1 code)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cache.params import CacheParams
from pipeline.cache.writer import build_cache

NUM_CLASSES = 7
INPUT_DIM = 8


@dataclass(frozen=True)
class Rows:
    """A RowSource: sample ids, splits, labels and inputs, plus a fingerprint."""

    sample_id: np.ndarray
    split: np.ndarray
    label: np.ndarray
    inputs: np.ndarray
    fingerprint: str = "d" * 64


def make_rows(num_rows: int = 150, seed: int = 0) -> Rows:
    """`num_rows` rows: ids 1000+3i, splits cycling train/val/test/unlabelled, labels -1 on unlabelled."""
    rng = np.random.default_rng(seed)
    split = (np.arange(num_rows) % 4).astype(np.int8)
    label = rng.integers(0, NUM_CLASSES, num_rows).astype(np.int64)
    label[split == 3] = -1
    inputs = rng.normal(size=(num_rows, INPUT_DIM)).astype(np.float32)
    return Rows(1000 + 3 * np.arange(num_rows, dtype=np.int64), split, label, inputs)


class FakeTeacher:
    """logits = 3 x W, embed = tanh(x V) (B, 5), conv = (B, 2, 2, 2); optional poisoned rows."""

    provider = "FakeExecutionProvider"
    input_name = "input"
    logits_name = "logits"
    tap_names = ("embed", "conv")

    def __init__(self, nan_at: float | None = None, scale: float = 3.0) -> None:
        rng = np.random.default_rng(42)
        self.w = rng.normal(size=(INPUT_DIM, NUM_CLASSES)).astype(np.float32)
        self.v = rng.normal(size=(INPUT_DIM, 5)).astype(np.float32)
        self.u = rng.normal(size=(INPUT_DIM, 8)).astype(np.float32)
        self.nan_at = nan_at
        self.scale = scale

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        # float64 products rounded to float32: a row's outputs do not depend on the batch it came in
        # (a float32 BLAS matmul's last bits do, by blocking, on some CPUs), so the cache written in
        # batches of 10 must equal one call over all rows exactly.
        inputs = np.asarray(inputs, np.float64)
        logits = (self.scale * inputs @ self.w).astype(np.float32)
        if self.nan_at is not None:
            logits[inputs[:, 0] == np.float32(self.nan_at)] = np.nan
        return {
            "logits": logits.astype(np.float32),
            "embed": np.tanh(inputs @ self.v).astype(np.float32),
            "conv": (inputs @ self.u).reshape(-1, 2, 2, 2).astype(np.float32),
        }


def small_params(**overrides) -> CacheParams:
    """16-row chunks, 32-row shards, batches of 10 (not a divisor of a shard, on purpose)."""
    values = dict(rows_per_chunk=16, chunks_per_shard=2, batch_size=10, kl_sample_rows=64)
    values.update(overrides)
    return CacheParams(**values)


def build(
    tmp: Path,
    rows: Rows | None = None,
    teacher=None,
    params: CacheParams | None = None,
    name: str = "cache",
    teacher_sha256: str = "t" * 64,
):
    """Build a cache of `rows` into tmp/<name>/store (scratch tmp/<name>/scratch)."""
    rows = make_rows() if rows is None else rows
    return build_cache(
        rows,
        teacher or FakeTeacher(),
        teacher_sha256,
        rows.fingerprint,
        params or small_params(),
        tmp / name / "store",
        tmp / name / "scratch",
        progress=False,
    )


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `directory`."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
