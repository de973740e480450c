"""Tiny ONNX teachers built with onnx.helper, so each validation error can be provoked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.data.prepared import make_prepared


def tiny_onnx(
    path,
    batch="batch",
    input_shape=(1, 4, 4),
    input_name="input",
    elem_type=TensorProto.FLOAT,
    classes=3,
    outputs=("logits", "embed"),
):
    """input (batch, *input_shape) -> Flatten = `embed` -> MatMul = `logits`; `outputs` picks which
    of the two are graph outputs (and under which names, in that order)."""
    size = int(np.prod(input_shape))
    weight = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(size, classes)).astype(np.float32), "W"
    )
    cast = elem_type != TensorProto.FLOAT
    nodes = [helper.make_node("Cast", [input_name], ["x32"], to=TensorProto.FLOAT)] if cast else []
    nodes += [
        helper.make_node("Flatten", ["x32" if cast else input_name], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["scores"]),
    ]
    produced = {"flat": [batch, size], "scores": [batch, classes]}
    graph_outputs = []
    for name, source in zip(outputs, ("scores", "flat")):
        nodes.append(helper.make_node("Identity", [source], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, produced[source]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(input_name, elem_type, [batch, *input_shape])],
        graph_outputs,
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnx 1.23 writes IR 14, too new for ONNX Runtime 1.31 (docs/data_and_teacher.md)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_teacher(tmp_path):
    return tiny_onnx(tmp_path / "teacher.onnx")


@pytest.fixture
def tiny_data():
    """48 rows of (1, 4, 4) inputs, 3 classes, 16 per split."""
    rng = np.random.default_rng(0)
    split = np.repeat(["train", "val", "test"], 16)
    return make_prepared(np.arange(48), split, rng.integers(0, 3, 48), rng.random((48, 1, 4, 4)), 3)
