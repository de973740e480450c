"""Synthetic prepared data and an in-memory teacher cache for the train tests.

No disk, no teacher: the "teacher" is a fixed random linear map of the inputs, so students can learn.
"""

from __future__ import annotations

import numpy as np

from pipeline.cache.batch import SPLITS
from pipeline.cache.reader import MemoryCache
from pipeline.data.prepared import PreparedData
from pipeline.train.params import StudentParams

NUM_CLASSES = 10
INPUT_SHAPE = (1, 8, 8)


def make_prepared(per_split=None, seed: int = 0) -> PreparedData:
    """A small 8x8 dataset: ids shuffled and non-contiguous, unlabelled rows with label -1."""
    per_split = per_split or {"train": 160, "val": 40, "test": 20, "unlabelled": 40}
    rng = np.random.default_rng(seed)
    split = np.concatenate([np.full(n, SPLITS.index(s), np.int8) for s, n in per_split.items()])
    n = len(split)
    prototypes = rng.normal(size=(NUM_CLASSES, *INPUT_SHAPE)).astype(np.float32)
    label = rng.integers(0, NUM_CLASSES, n)
    inputs = (prototypes[label] + 0.5 * rng.normal(size=(n, *INPUT_SHAPE))).astype(np.float32)
    label = np.where(split == SPLITS.index("unlabelled"), -1, label).astype(np.int64)
    sample_id = rng.permutation(n * 3)[:n].astype(np.int64) + 1000
    return PreparedData(sample_id, split, label, inputs, NUM_CLASSES, f"synthetic-{seed}")


def make_cache(prepared: PreparedData, seed: int = 1, order=None) -> MemoryCache:
    """Teacher outputs for every prepared row (rows in `order`, default reversed, to test the join)."""
    rng = np.random.default_rng(seed)
    order = np.arange(len(prepared))[::-1] if order is None else order
    flat = prepared.inputs.reshape(len(prepared), -1)
    logits = (flat @ rng.normal(size=(flat.shape[1], NUM_CLASSES)) * 0.3).astype(np.float16)
    embed = np.tanh(flat @ rng.normal(size=(flat.shape[1], 16)) * 0.1).astype(np.float32)
    conv = rng.normal(size=(len(prepared), 8, 4, 4)).astype(np.float16)
    return MemoryCache(
        prepared.sample_id[order],
        prepared.split[order],
        prepared.label[order],
        logits[order],
        {"embed": embed[order], "conv": conv[order]},
    )


def student_params(**overrides) -> StudentParams:
    """Cheap params: an MLP, CE + KD, 2 epochs of batch 32, one seed."""
    base = {
        "arch": {"kind": "mlp", "hidden": [32, 16]},
        "loss": {
            "ce": {"kind": "ce", "weight": 0.5},
            "kd": {"kind": "hinton", "weight": 0.5, "temperature": 4.0},
        },
        "optimizer": {"kind": "adamw", "lr": 0.01},
        "schedule": {"kind": "cosine", "warmup_epochs": 0.5},
        "epochs": 2,
        "batch_size": 32,
        "seeds": [0],
    }
    base.update(overrides)
    return StudentParams.model_validate(base)


class LinearTeacher:
    """A fixed random linear teacher over 8x8 inputs (logits (B, 10), tap `embed` (B, 16)), with the
    writer's teacher protocol, so a stage test can build an on-disk cache without ONNX Runtime."""

    provider = "test"
    tap_names = ("embed",)

    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.w = rng.normal(size=(64, 10)).astype(np.float32) * 0.3
        self.v = rng.normal(size=(64, 16)).astype(np.float32) * 0.1

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        flat = inputs.reshape(len(inputs), -1)
        return {"logits": flat @ self.w, "embed": np.tanh(flat @ self.v)}


def write_disk_project(root) -> None:
    """The synthetic data as a prepared directory (`root/prepared`) and its Zarr cache built by
    `LinearTeacher` (`root/cache/store`): what the `train` stage reads from disk."""
    from pipeline.cache.params import CacheParams
    from pipeline.cache.writer import build_cache
    from pipeline.data.prepared import load_prepared, write_prepared
    from pipeline.data.prepared import make_prepared as prepared_data

    data = make_prepared()
    write_prepared(prepared_data(data.sample_id, data.split, data.label, data.inputs, 10), root / "prepared")
    prepared = load_prepared(root / "prepared")
    params = CacheParams(rows_per_chunk=64, chunks_per_shard=2, batch_size=64)
    store, scratch = root / "cache/store", root / "cache/scratch"
    build_cache(
        prepared, LinearTeacher(), "a" * 64, prepared.fingerprint, params, store, scratch, progress=False
    )
