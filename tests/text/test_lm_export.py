"""The LM's ONNX export: int64 inputs with dynamic batch and sequence axes, parity with torch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.text.lm import LMConfig, build_lm
from pipeline.text.lm_export import check_lm_parity, export_lm_onnx

TINY = LMConfig(vocab_size=40, context=16, layers=1, width=32, heads=2, dropout=0.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = build_lm(TINY, seed=4)
    path = export_lm_onnx(model, tmp_path_factory.mktemp("lm") / "lm.onnx")
    return model, path


def _batch(batch_size: int, length: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TINY.vocab_size, (batch_size, length))
    mask = np.ones((batch_size, length), dtype=np.int64)
    mask[-1, length // 2 :] = 0  # one right-padded row
    return ids, mask


def test_the_file_has_int64_token_inputs_with_dynamic_batch_and_sequence_and_per_token_outputs(exported):
    _, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("input_ids", "tensor(int64)", ["batch", "sequence"]),
        ("attention_mask", "tensor(int64)", ["batch", "sequence"]),
    ]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("logits", ["batch", "sequence", 40]),
        ("hidden", ["batch", "sequence", 32]),
    ]


def test_onnx_runtime_matches_torch_at_two_batch_sizes_and_two_lengths(exported):
    model, path = exported
    batches = [_batch(b, length, seed) for seed, (b, length) in enumerate([(1, 3), (7, 3), (1, 16), (7, 16)])]
    report = check_lm_parity(model, path, batches)
    assert report["passed"] and report["shapes"] == [[1, 3], [7, 3], [1, 16], [7, 16]]
    for name in ("logits", "hidden"):
        stats = report["outputs"][name]
        assert stats["max_abs_diff"] <= stats["tolerance"] == pytest.approx(1e-4 * stats["scale"])
