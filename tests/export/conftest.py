"""Tiny trained students on disk (MLP and CNN shaped), as the train stage leaves them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.students.registry import build_student
from pipeline.students.trained import save_trained_student

INPUT_SHAPE = (8, 8)
NUM_CLASSES = 5
ARCHS = {
    "mlp": {"kind": "mlp", "hidden": [16, 8]},
    "cnn": {"kind": "cnn", "channels": [4, 8], "embed": 8},
    # any module: the example ResNet, its taps read by forward hooks (pipeline/students/taps.py)
    "python": {
        "kind": "python",
        "factory": "examples.resnet_student:make_student",
        "kwargs": {"width": 4},
        "taps": {"conv": "layer2", "embed": "pool"},
    },
}


def save_student(seed_dir: Path, arch: dict, seed: int = 0, name: str = "tiny") -> Path:
    """A randomly initialised student saved like a trained one."""
    torch.manual_seed(seed)
    model = build_student(arch, INPUT_SHAPE, NUM_CLASSES)
    config = {
        "student": name,
        "seed": seed,
        "arch": arch,
        "input_shape": list(INPUT_SHAPE),
        "num_classes": NUM_CLASSES,
    }
    return save_trained_student(seed_dir, model, config)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
