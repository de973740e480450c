"""The `teacher_layers` student (pipeline/students/teacher_layers.py) on a tiny random BERT: its
layers and embeddings are the teacher's, its vocabulary the ids the training split uses (an unseen
id reads as [UNK]), its parameters counted, and it trains and exports to ONNX with parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.fields import Ragged
from pipeline.data.writer import write_arrays
from pipeline.students.registry import build_student, count_parameters
from pipeline.students.teacher_layers import TeacherLayersError

transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, DEPTH, POSITIONS, UNK = 30, 8, 3, 32, 1
SPECIALS = [0, 1, 2, 3]  # [PAD] [UNK] [CLS] [SEP] of the tiny vocabulary
TRAIN_IDS = [4, 5, 6, 8, 9]  # what the training rows use besides the specials (7 never appears)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A random 3-layer, 8-wide BERT with a 30-id vocabulary, saved as a model directory."""
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=2,
        intermediate_size=2 * WIDTH,
        max_position_embeddings=POSITIONS,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    """Prepared sentences: training rows (split `unlabelled`) use SPECIALS + TRAIN_IDS only, the
    test rows also ids 7 and 20 (never seen in training)."""
    rows = [[2, 4, 5, 3], [2, 6, 8, 9, 3], [2, 4, 3], [2, 7, 20, 5, 3], [2, 9, 3]]
    split = np.array([3, 3, 3, 2, 2], np.int8)  # unlabelled (the train sentences), then test
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    ids = np.concatenate(rows).astype(np.int64)
    directory = tmp_path_factory.mktemp("prepared") / "prepared"
    fields = {"input_ids": Ragged(ids, offsets), "attention_mask": Ragged(np.ones_like(ids), offsets.copy())}
    write_arrays(directory, np.arange(len(rows), dtype=np.int64), split, np.full(len(rows), -1), 1, fields)
    return directory


def arch(teacher_dir, prepared_dir=None, **overrides) -> dict:
    """The tiny teacher's `teacher_layers` arch, vocabulary from `prepared_dir` when given."""
    return {
        "kind": "teacher_layers",
        "teacher": str(teacher_dir),
        "layers": [0, 2],
        "vocabulary": None if prepared_dir is None else str(prepared_dir),
        "max_length": 16,
        "unk_id": UNK,
        "special_ids": SPECIALS,
        **overrides,
    }


def teacher_model(teacher_dir):
    return transformers.BertModel.from_pretrained(str(teacher_dir), attn_implementation="eager").eval()


def test_the_student_keeps_the_training_vocabulary_and_reads_an_unseen_id_as_unk(teacher_dir, prepared_dir):
    student = build_student(arch(teacher_dir, prepared_dir), (), 1)
    kept = sorted(SPECIALS + TRAIN_IDS)
    remap = student.remap.numpy()
    assert remap.shape == (VOCAB,) and remap.dtype == np.int64
    np.testing.assert_array_equal(remap[kept], np.arange(len(kept)))
    unseen = sorted(set(range(VOCAB)) - set(kept))
    assert (remap[unseen] == kept.index(UNK)).all()  # 7 and 20 among them
    teacher = teacher_model(teacher_dir)
    words = student.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(words, teacher.embeddings.word_embeddings.weight[kept])


def test_the_most_frequent_ids_are_kept_under_max_vocabulary_and_specials_always(teacher_dir, prepared_dir):
    student = build_student(arch(teacher_dir, prepared_dir, max_vocabulary=8), (), 1)
    # specials always; 4 (used twice) first, then 5, 6, 8 and 9 once each: the smaller ids win the tie
    kept = [0, 1, 2, 3, 4, 5, 6, 8]
    assert student.bert.config.vocab_size == len(kept)
    np.testing.assert_array_equal(student.remap.numpy()[kept], np.arange(len(kept)))
    assert student.remap[9].item() == kept.index(UNK)  # 9 dropped: read as [UNK]


def test_the_copied_layers_reproduce_the_teachers_when_all_are_kept(teacher_dir):
    student = build_student(arch(teacher_dir, layers=list(range(DEPTH)), max_length=POSITIONS), (), 1).eval()
    teacher = teacher_model(teacher_dir)
    ids = torch.tensor([[2, 4, 7, 20, 3, 0], [2, 9, 3, 0, 0, 0]])
    mask = (torch.arange(6) < torch.tensor([[5], [3]])).long()
    with torch.no_grad():
        tokens = teacher(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
        out = student(ids, mask)
    pooled = tokens.sum(1) / mask.sum(1, keepdim=True)
    scale = float(tokens.abs().max())
    torch.testing.assert_close(out.features["tokens"], tokens, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(
        out.features["embed"], torch.nn.functional.normalize(pooled, dim=1), rtol=1e-5, atol=1e-6
    )


def test_the_parameters_are_the_kept_rows_positions_and_the_copied_layers(teacher_dir, prepared_dir):
    student = build_student(arch(teacher_dir, prepared_dir), (), 1)
    teacher = teacher_model(teacher_dir)
    layer = count_parameters(teacher.encoder.layer[0])
    rows = len(SPECIALS + TRAIN_IDS)
    embeddings = (rows + 16 + 2) * WIDTH + 2 * WIDTH  # words, positions, token types, LayerNorm
    assert count_parameters(student) == embeddings + 2 * layer + (WIDTH + 1)  # + the 1-class classifier
    assert "remap" in dict(student.named_buffers())  # counted as bytes, not parameters


def test_a_layer_the_teacher_lacks_and_a_directory_without_a_model_are_refused_in_one_line(
    tmp_path, teacher_dir
):
    with pytest.raises(TeacherLayersError, match=r"arch.layers \[3\]: the teacher has layers 0..2"):
        build_student(arch(teacher_dir, layers=[0, 3]), (), 1)
    with pytest.raises(TeacherLayersError, match="has no config.json"):
        build_student(arch(tmp_path), (), 1)


def test_the_student_exports_to_onnx_and_matches_torch(tmp_path, teacher_dir, prepared_dir):
    import onnxruntime as ort

    from pipeline.teacher.export import write_onnx

    student = build_student(arch(teacher_dir, prepared_dir), (), 1).eval()

    class Graph(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            out = self.model(input_ids, attention_mask)
            return out.features["tokens"], out.features["embed"]

    ids = torch.tensor([[2, 4, 7, 20, 3, 0, 0], [2, 9, 3, 0, 0, 0, 0], [2, 6, 8, 9, 5, 4, 3]])
    mask = (ids != 0).long()
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=1, max=16)
    path = write_onnx(
        Graph(student),
        (ids, mask),
        tmp_path / "s.onnx",
        ["input_ids", "attention_mask"],
        ["tokens", "embed"],
        ({0: batch, 1: seq},) * 2,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for rows in (slice(0, 1), slice(0, 3)):
        short = int(mask[rows].sum(1).max())
        feeds = {"input_ids": ids[rows, :short].numpy(), "attention_mask": mask[rows, :short].numpy()}
        tokens, embed = session.run(None, feeds)
        with torch.no_grad():
            expected = student(ids[rows, :short], mask[rows, :short]).features
        scale = float(expected["tokens"].abs().max())
        np.testing.assert_allclose(tokens, expected["tokens"].numpy(), rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(embed, expected["embed"].numpy(), rtol=1e-4, atol=1e-5)
