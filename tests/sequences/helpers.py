"""A tiny multi-input ONNX sequence teacher (input_ids + attention_mask int64) and ragged rows.

The teacher is written with onnx.helper (no torch export: milliseconds): hidden = embedding of the
ids times the mask (batch, sequence, D); pooled = masked mean of hidden (batch, D); logits = pooled W
(batch, C). Its outputs are exact functions of each row's own tokens, so a cache built in any batches
equals a direct computation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, WIDTH, CLASSES = 20, 4, 3


@dataclass(frozen=True)
class Ragged:
    """Variable-length rows: values (M, ...) and offsets (N + 1,) int64 (the data side's shape)."""

    values: np.ndarray
    offsets: np.ndarray


@dataclass(frozen=True)
class SequenceRows:
    """A RowSource with named fields: input_ids and attention_mask, ragged int64."""

    sample_id: np.ndarray
    split: np.ndarray
    label: np.ndarray
    fields: dict = field(default_factory=dict)
    num_classes: int = CLASSES
    fingerprint: str = "s" * 64


def weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(embedding (VOCAB, WIDTH), head (WIDTH, CLASSES)) float32, small integers / 4 (exact sums)."""
    rng = np.random.default_rng(seed)
    return (
        (rng.integers(-4, 5, (VOCAB, WIDTH)) / 4).astype(np.float32),
        (rng.integers(-4, 5, (WIDTH, CLASSES)) / 4).astype(np.float32),
    )


def sequence_teacher(path: Path, logits: bool = True, id_type: int = TensorProto.INT64) -> Path:
    """Write the teacher to `path`: inputs input_ids, attention_mask (batch, sequence); outputs
    `hidden` (batch, sequence, WIDTH) and `pooled` (batch, WIDTH), plus `logits` (batch, CLASSES)."""
    embedding, head = weights()
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis_last"], ["mask_3d"]),
        helper.make_node("Mul", ["embedded", "mask_3d"], ["hidden"]),
        helper.make_node("ReduceSum", ["hidden", "axis_seq"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_3d", "axis_seq"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(embedding, "embedding"),
        numpy_helper.from_array(head, "head"),
        numpy_helper.from_array(np.array([2], np.int64), "axis_last"),
        numpy_helper.from_array(np.array([1], np.int64), "axis_seq"),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", id_type, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
    ]
    outputs = [
        helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", WIDTH]),
        helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", WIDTH]),
    ]
    if logits:
        outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]))
    else:
        nodes = nodes[:-1]
        inits = [i for i in inits if i.name != "head"]
    graph = helper.make_graph(nodes, "sequence_teacher", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def sequence_rows(num_rows: int = 40, max_len: int = 9, seed: int = 0) -> SequenceRows:
    """`num_rows` sequences of 1..max_len token ids, every split, labels -1 on unlabelled rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, num_rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, VOCAB, int(offsets[-1])).astype(np.int64)
    split = (np.arange(num_rows) % 4).astype(np.int8)
    label = rng.integers(0, CLASSES, num_rows).astype(np.int64)
    label[split == 3] = -1
    fields = {
        "input_ids": Ragged(ids, offsets),
        "attention_mask": Ragged(np.ones_like(ids), offsets.copy()),
    }
    return SequenceRows(500 + np.arange(num_rows, dtype=np.int64), split, label, fields)


def expected_outputs(rows: SequenceRows, row: int) -> dict[str, np.ndarray]:
    """The teacher's outputs on one row, computed in numpy: hidden (L, WIDTH), pooled, logits."""
    embedding, head = weights()
    ids = rows.fields["input_ids"]
    tokens = ids.values[ids.offsets[row] : ids.offsets[row + 1]]
    hidden = embedding[tokens]
    pooled = hidden.mean(axis=0)
    return {"hidden": hidden, "pooled": pooled, "logits": pooled @ head}
