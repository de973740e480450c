"""A tiny dataset, its cache and trained students, as the earlier stages leave them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cache.reader import MemoryCache
from pipeline.data.prepared import make_prepared
from pipeline.students.registry import build_student
from pipeline.students.trained import save_trained_student

INPUT_SHAPE = (8, 8)
NUM_CLASSES = 6
ARCH = {"kind": "mlp", "hidden": [16]}


def save_student(seed_dir: Path, seed: int = 0, arch: dict = ARCH, name: str = "kd") -> Path:
    """A randomly initialised student saved like a trained one."""
    torch.manual_seed(seed)
    model = build_student(arch, INPUT_SHAPE, NUM_CLASSES)
    return save_trained_student(
        seed_dir,
        model,
        {
            "student": name,
            "seed": seed,
            "arch": arch,
            "input_shape": list(INPUT_SHAPE),
            "num_classes": NUM_CLASSES,
        },
    )


@pytest.fixture
def prepared_and_cache():
    """120 rows (60 train, 40 test of which 4 unlabelled, 20 val); the cache lists rows in another order."""
    rng = np.random.default_rng(0)
    n = 120
    sample_id = rng.permutation(np.arange(1000, 1000 + n))
    split = np.array(["train"] * 60 + ["test"] * 40 + ["val"] * 20)
    label = rng.integers(0, NUM_CLASSES, n)
    label[60:64] = -1
    inputs = rng.standard_normal((n, *INPUT_SHAPE)).astype(np.float32)
    prepared = make_prepared(sample_id, split, label, inputs, NUM_CLASSES)
    order = rng.permutation(n)
    teacher_logits = 3 * np.eye(NUM_CLASSES)[np.maximum(label, 0)] + rng.standard_normal((n, NUM_CLASSES))
    cache = MemoryCache(
        prepared.sample_id[order],
        prepared.split[order],
        prepared.label[order],
        teacher_logits[order].astype(np.float16),
    )
    return prepared, cache


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
