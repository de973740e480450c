"""Embedding metrics in closed cases: identical, rotated, rescaled and random embeddings; and the
encode throughput helper on a small ONNX encoder."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.evaluate.embedding import (
    embedding_agreement,
    encode_throughput,
    knn_agreement,
    mean_cosine,
    nearest_neighbours,
    similarity_spearman,
)
from pipeline.evaluate.metrics import MetricInputError
from pipeline.text.tokenizer import TokenizedText

RNG = np.random.default_rng(0)


def _rotation(width: int) -> np.ndarray:
    q, r = np.linalg.qr(RNG.normal(size=(width, width)))
    return q * np.sign(np.diag(r))


def test_identical_embeddings_score_one_on_every_metric():
    teacher = RNG.normal(size=(40, 16))
    assert embedding_agreement(teacher, teacher.copy(), k=5) == pytest.approx(
        {"mean_cosine": 1.0, "knn_agreement@5": 1.0, "similarity_spearman": 1.0}
    )


def test_a_rotation_of_every_embedding_keeps_neighbours_and_similarity_ranking():
    teacher = RNG.normal(size=(50, 12))
    rotated = teacher @ _rotation(12)
    assert knn_agreement(rotated, teacher, k=10) == 1.0
    assert similarity_spearman(rotated, teacher) == pytest.approx(1.0)
    assert mean_cosine(rotated, teacher) < 0.9  # directions did change


def test_rescaling_rows_changes_nothing_cosine_based():
    teacher = RNG.normal(size=(30, 8))
    scaled = teacher * RNG.uniform(0.1, 10.0, size=(30, 1))
    assert mean_cosine(scaled, teacher) == pytest.approx(1.0)
    assert knn_agreement(scaled, teacher, 5) == 1.0


def test_random_embeddings_agree_on_about_k_over_n_neighbours():
    n, k = 300, 10
    agreement = knn_agreement(RNG.normal(size=(n, 32)), RNG.normal(size=(n, 32)), k)
    chance = k / (n - 1)
    assert chance / 2 < agreement < 2 * chance
    assert abs(similarity_spearman(RNG.normal(size=(n, 32)), RNG.normal(size=(n, 32)))) < 0.05


def test_neighbours_exclude_the_row_itself_and_come_most_similar_first():
    points = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    # row 3 is as close to row 0 as to row 2: the tie goes to the lower index
    assert nearest_neighbours(points, 2).tolist() == [[1, 3], [0, 3], [3, 1], [1, 0]]
    # a student that swaps two far points keeps half of each 1-neighbourhood
    student = points[[0, 1, 3, 2]]
    assert knn_agreement(student, points, k=1) == 0.5


def test_mean_cosine_of_orthogonal_and_opposite_rows():
    teacher = np.eye(3)
    assert mean_cosine(np.roll(teacher, 1, axis=1), teacher) == pytest.approx(0.0)
    assert mean_cosine(-teacher, teacher) == pytest.approx(-1.0)


def test_a_student_of_another_width_gets_neighbours_and_spearman_but_no_cosine():
    teacher = RNG.normal(size=(20, 8))
    student = teacher @ RNG.normal(size=(8, 4))
    report = embedding_agreement(student, teacher, k=3)
    assert set(report) == {"knn_agreement@3", "similarity_spearman"}
    with pytest.raises(MetricInputError, match="project the student's embedding"):
        mean_cosine(student, teacher)


def test_embeddings_that_cannot_be_compared_are_refused():
    with pytest.raises(MetricInputError, match="same sentences"):
        knn_agreement(np.ones((4, 2)), np.ones((5, 2)), 1)
    with pytest.raises(MetricInputError, match="k must be in"):
        knn_agreement(np.eye(4), np.eye(4), 4)
    with pytest.raises(MetricInputError, match="NaN"):
        mean_cosine(np.full((2, 2), np.nan), np.ones((2, 2)))


def _toy_encoder(path, with_token_types: bool) -> None:
    """input_ids, attention_mask (and token_type_ids) -> embedding (B, 1) = sum of masked ids."""
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_token_types else [])
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in names]
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("Cast", ["masked"], ["float_ids"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["float_ids", "axes"], ["embedding"], keepdims=1),
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 1])
    graph = helper.make_graph(nodes, "toy", inputs, [output], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, str(path))


@pytest.mark.parametrize("with_token_types", [False, True])
def test_encode_throughput_reports_sentences_per_second_at_each_batch_size(tmp_path, with_token_types):
    _toy_encoder(tmp_path / "encoder.onnx", with_token_types)
    lengths = RNG.integers(3, 12, size=70)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokenized = TokenizedText(RNG.integers(1, 100, offsets[-1]).astype(np.int64), offsets, 12, 0, 0)
    result = encode_throughput(tmp_path / "encoder.onnx", tokenized, batch_sizes=(1, 64), max_sentences=None)
    assert set(result) == {"sentences_per_s_b1", "sentences_per_s_b64"}
    assert all(value > 0 for value in result.values())
