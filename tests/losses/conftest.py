"""Shared fixtures of the loss tests: tap shapes, random inputs, one example params per family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.cache.batch import SparseLogits
from pipeline.losses._contract import LossInputs, TapShapes

NUM_CLASSES = 5
SHAPES = TapShapes(
    num_classes=NUM_CLASSES,
    student={"embed": (6,), "conv": (3, 4, 4), "attn": (2, 5, 5), "tokens": (3, 6)},
    teacher={"embed": (8,), "conv": (4, 4, 4), "attn": (2, 5, 5), "tokens": (3, 8)},
)

# One valid params mapping per family; the contract test checks this covers FAMILIES exactly.
EXAMPLES = {
    "ce": {"kind": "ce"},
    "hinton": {"kind": "hinton", "hard_weight": 0.5, "soft_weight": 0.5},
    "feature": {
        "kind": "feature",
        "taps": [{"student": "embed", "teacher": "embed"}, {"student": "conv", "teacher": "conv"}],
    },
    "vanilla": {"kind": "vanilla", "student_tap": "embed", "teacher_tap": "embed"},
    "combined": {"kind": "combined", "student_tap": "embed", "teacher_tap": "embed"},
    "crd": {"kind": "crd", "student_tap": "embed", "teacher_tap": "embed"},
    "rkd": {"kind": "rkd", "student_tap": "embed", "teacher_tap": "embed"},
    "mmd": {"kind": "mmd", "student_tap": "embed", "teacher_tap": "embed"},
    "hidden": {
        "kind": "hidden",
        "layers": [{"student": "embed", "teacher": "embed"}, {"student": "tokens", "teacher": "tokens"}],
    },
    "attention": {"kind": "attention", "layers": [{"student": "attn", "teacher": "attn"}]},
    "gram": {"kind": "gram", "student_tap": "embed", "teacher_tap": "embed"},
    "smoothing": {"kind": "smoothing"},
    "self_training": {"kind": "self_training"},
    "mutual": {"kind": "mutual"},
    "dkd": {"kind": "dkd"},
    "token_kd": {"kind": "token_kd", "divergence": "jsd", "temperature": 2.0},
}


def _leaf(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(array, dtype=dtype).requires_grad_(True)


def make_inputs(
    rows: int = 8,
    seed: int = 0,
    labels: list[int] | None = None,
    dtype=torch.float32,
    logit_scale: float = 2.0,
    peers: int = 1,
    sparse_k: int | None = None,
) -> LossInputs:
    """Random inputs matching SHAPES; every tensor (teacher too) is a leaf that requires grad, so
    a test can check which ones receive gradients."""
    rng = np.random.default_rng(seed)

    def features(side):
        out = {}
        for name, shape in side.items():
            values = rng.normal(size=(rows, *shape))
            if name == "attn":  # row-stochastic attention maps
                values = np.exp(values) / np.exp(values).sum(-1, keepdims=True)
            out[name] = _leaf(values, dtype)
        return out

    teacher_logits = _leaf(logit_scale * rng.normal(size=(rows, NUM_CLASSES)), dtype)
    sparse = None
    if sparse_k is not None:
        dense = teacher_logits.detach().float()
        values, indices = dense.topk(sparse_k, dim=1)
        sparse = SparseLogits(values, indices, dense.logsumexp(dim=1))
    if labels is None:
        labels = rng.integers(0, NUM_CLASSES, size=rows).tolist()
    return LossInputs(
        student_logits=_leaf(logit_scale * rng.normal(size=(rows, NUM_CLASSES)), dtype),
        teacher_logits=teacher_logits,
        labels=torch.tensor(labels, dtype=torch.int64),
        student_features=features(SHAPES.student),
        teacher_features=features(SHAPES.teacher),
        teacher_sparse=sparse,
        peer_logits=[_leaf(logit_scale * rng.normal(size=(rows, NUM_CLASSES)), dtype) for _ in range(peers)],
        rows=torch.arange(rows, dtype=torch.int64),
    )


def teacher_tensors(inputs: LossInputs) -> list[torch.Tensor]:
    """Every tensor that comes from the cache or the peers (must never receive a gradient)."""
    return [inputs.teacher_logits, *inputs.teacher_features.values(), *inputs.peer_logits]


def student_tensors(inputs: LossInputs) -> list[torch.Tensor]:
    return [inputs.student_logits, *inputs.student_features.values()]


def numpy_log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Independent float64 log-softmax for closed forms."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.fixture
def inputs() -> LossInputs:
    return make_inputs()
