"""A tiny ONNX language-model teacher (input_ids (batch, sequence) -> logits (batch, sequence, V))
and ragged token rows, for the per-token logits forms of the cache (pipeline/cache/token_store.py).

The teacher's logits are a row of an embedding table per token id (a Gather: exact, so a cache
built in any batches equals `expected_logits`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.teacher.session import open_teacher
from tests.sequences.helpers import Ragged, SequenceRows

VOCAB = 40


def table(vocab: int = VOCAB, seed: int = 0) -> np.ndarray:
    """(V, V) float32 logits of each input id: Gaussian, scale 3 (a spread-out distribution)."""
    return (3 * np.random.default_rng(seed).normal(size=(vocab, vocab))).astype(np.float32)


def lm_teacher(path: Path, vocab: int = VOCAB):
    """Write the teacher to `path` and open it (cpu); returns the TeacherSession."""
    node = helper.make_node("Gather", ["table", "input_ids"], ["logits"])
    graph = helper.make_graph(
        [node],
        "lm_teacher",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])],
        [numpy_helper.from_array(table(vocab), "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return open_teacher(path, inputs={"input_ids": "input_ids"}, provider="cpu", logits_name="logits")


def lm_rows(num_rows: int = 21, max_len: int = 7, vocab: int = VOCAB, seed: int = 0) -> SequenceRows:
    """`num_rows` sequences of 1..max_len ids below `vocab`, every split."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, num_rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, vocab, int(offsets[-1])).astype(np.int64)
    split = (np.arange(num_rows) % 4).astype(np.int8)
    label = np.where(split == 3, -1, 0).astype(np.int64)
    fields = {"input_ids": Ragged(ids, offsets)}
    return SequenceRows(700 + np.arange(num_rows, dtype=np.int64), split, label, fields, num_classes=vocab)


def expected_logits(rows: SequenceRows, vocab: int = VOCAB) -> np.ndarray:
    """(M, V) float32: every row's tokens' teacher logits, back to back."""
    return table(vocab)[rows.fields["input_ids"].values]
