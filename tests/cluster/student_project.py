"""A tiny on-disk project for the sweep tests: prepared data and a Zarr teacher cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cache.params import CacheParams
from pipeline.cache.writer import build_cache
from pipeline.data.prepared import load_prepared, make_prepared, write_prepared
from pipeline.train.params import StudentParams
from tests.train import helpers as train_helpers


class LinearTeacher:
    """logits = x W (10 classes), embed = tanh(x V) (16,): a fixed random map students can learn."""

    provider = "LinearTeacher"
    tap_names = ("embed",)

    def __init__(self, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(64, train_helpers.NUM_CLASSES)).astype(np.float32) * 0.3
        self.v = rng.normal(size=(64, 16)).astype(np.float32) * 0.1

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        flat = inputs.reshape(len(inputs), -1)
        return {"logits": flat @ self.w, "embed": np.tanh(flat @ self.v)}


def write_project(root: Path) -> tuple[Path, Path]:
    """Write root/prepared and root/cache/store; return (prepared_dir, cache_store_dir)."""
    synthetic = train_helpers.make_prepared()
    prepared = make_prepared(
        synthetic.sample_id, synthetic.split, synthetic.label, synthetic.inputs, synthetic.num_classes
    )
    write_prepared(prepared, root / "prepared")
    prepared = load_prepared(root / "prepared")
    params = CacheParams(rows_per_chunk=64, chunks_per_shard=2, batch_size=64, logits_dtype="float32")
    result = build_cache(
        prepared,
        LinearTeacher(),
        "a" * 64,
        prepared.fingerprint,
        params,
        root / "cache" / "store",
        root / "cache" / "scratch",
        progress=False,
    )
    return root / "prepared", result.store_dir


def students(cache_dir: Path, names=("kd", "ce"), **overrides) -> dict[str, StudentParams]:
    """Cheap students (an MLP, 2 epochs, one seed) reading `cache_dir`: `kd` (CE + Hinton), `ce`."""
    recipes = {
        "kd": {
            "ce": {"kind": "ce", "weight": 0.5},
            "kd": {"kind": "hinton", "weight": 0.5, "temperature": 4.0},
        },
        "ce": {"ce": {"kind": "ce", "weight": 1.0}},
    }
    return {
        name: train_helpers.student_params(loss=recipes[name], cache=str(cache_dir), **overrides)
        for name in names
    }


def export_linear_teacher(path: Path) -> Path:
    """LinearTeacher as an ONNX file (outputs `logits`, `embed`) for the ONNX Runtime sharded build."""
    import torch

    from pipeline.teacher.export import export_onnx

    teacher = LinearTeacher()

    class Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("w", torch.from_numpy(teacher.w))
            self.register_buffer("v", torch.from_numpy(teacher.v))

        def forward(self, x):
            flat = x.flatten(1)
            return flat @ self.w, torch.tanh(flat @ self.v)

    example = torch.zeros(2, *train_helpers.INPUT_SHAPE)
    return export_onnx(Module(), example, path, ("logits", "embed"))
