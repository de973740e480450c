"""Students of named inputs: token ids + mask padded per batch, per-token taps matched to the
teacher's cached tokens under the mask, one clear line for a field that does not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.cache.open import open_cache
from pipeline.students.inputs import FieldBatches, StudentInputError
from pipeline.students.registry import build_student
from pipeline.teacher.session import open_teacher
from pipeline.train.params import StudentParams
from pipeline.train.run import train_from_reader
from tests.cache.helpers import build, small_params
from tests.sequences.helpers import (
    CLASSES,
    VOCAB,
    WIDTH,
    Ragged,
    SequenceRows,
    sequence_rows,
    sequence_teacher,
)

FIELDS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}


@pytest.fixture(scope="module")
def sequence_cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seq")
    rows = sequence_rows(num_rows=48, max_len=9)
    teacher = open_teacher(sequence_teacher(tmp / "t.onnx"), inputs=FIELDS, provider="cpu")
    result = build(tmp, rows, teacher, small_params(rows_per_chunk=8, chunks_per_shard=2, batch_size=5))
    return rows, open_cache(result.store_dir)


def token_params(**overrides) -> StudentParams:
    """A bag-of-embeddings token student, KD + per-token feature matching, 2 epochs."""
    base = {
        "arch": {"kind": "tokens", "vocab_size": VOCAB, "width": 8},
        "inputs": ["input_ids", "attention_mask"],
        "loss": {
            "kd": {"kind": "hinton", "weight": 1.0, "temperature": 2.0},
            "tokens": {"kind": "feature", "weight": 1.0, "student_tap": "tokens", "teacher_tap": "hidden"},
        },
        "optimizer": {"kind": "adamw", "lr": 0.05},
        "epochs": 2,
        "batch_size": 8,
        "seeds": [0],
    }
    base.update(overrides)
    return StudentParams.model_validate(base)


def _train(tmp_path, rows, cache, params, tag="run"):
    return train_from_reader(
        "seq",
        params,
        cache,
        rows,
        tmp_path / tag / "out",
        tmp_path / tag / "scratch",
        progress=False,
        threads=1,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sequence_cache):
    """(summary, seed directory) of a token student trained once for this module."""
    rows, cache = sequence_cache
    tmp = tmp_path_factory.mktemp("trained")
    return _train(tmp, rows, cache, token_params()), tmp / "run/out/seed_0"


def test_a_token_student_trains_on_named_fields_and_records_them(trained):
    summary, seed_dir = trained
    assert summary["models"]["seq"]["val_acc"]["0"] is not None
    config = json.loads((seed_dir / "student.json").read_text())
    assert config["inputs"] == {
        "input_ids": {"field": "input_ids", "dtype": "int64", "shape": [None]},
        "attention_mask": {"field": "attention_mask", "dtype": "int64", "shape": [None]},
    }
    assert config["tap_shapes"] == {"tokens": [None, 8], "embed": [8]}


def test_the_same_seed_gives_the_same_token_student(tmp_path, sequence_cache):
    rows, cache = sequence_cache
    params = token_params(arch={"kind": "tokens", "vocab_size": VOCAB, "width": 8, "layers": 1, "heads": 2})
    _train(tmp_path, rows, cache, params, "a")
    _train(tmp_path, rows, cache, params, "b")
    first = (tmp_path / "a/out/seed_0/model.safetensors").read_bytes()
    assert first == (tmp_path / "b/out/seed_0/model.safetensors").read_bytes()


def test_a_derived_mask_field_pads_each_batch_to_its_longest_row(sequence_cache):
    rows, _ = sequence_cache
    batches = FieldBatches(rows, {"input_ids": "input_ids", "attention_mask": "input_ids_mask"})
    picked = np.array([3, 0, 7])
    batch = batches(picked)
    lengths = np.diff(rows.fields["input_ids"].offsets)[picked]
    assert batch["input_ids"].shape == (3, lengths.max()) and batch["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), lengths)
    assert batch["attention_mask"].dtype == np.bool_
    assert batches.padded == {"input_ids": True, "attention_mask": True}


def test_the_token_student_pools_only_real_tokens():
    student = build_student({"kind": "tokens", "vocab_size": VOCAB, "width": 4}, (), CLASSES).eval()
    ids = torch.tensor([[1, 2, 3], [4, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = student(ids, mask)
    alone = student(torch.tensor([[4]]), torch.tensor([[1]]))
    torch.testing.assert_close(out.features["embed"][1], alone.features["embed"][0])
    torch.testing.assert_close(out.logits[1], alone.logits[0])
    assert not out.features["tokens"][1, 1:].any()


@pytest.mark.parametrize(
    ("inputs", "fields", "needle"),
    [
        ({"input_ids": "ids"}, None, "reads field 'ids' (students.seq.inputs.input_ids)"),
        ({"ids": "input_ids"}, None, "names argument 'ids' but its forward takes"),
        ({"attention_mask": "attention_mask"}, None, "its forward needs ['input_ids']"),
        (
            None,
            {"input_ids": "float"},
            "input 'input_ids' takes int/uint rows of rank 1 but field 'input_ids' is float32",
        ),
    ],
)
def test_a_field_that_does_not_fit_the_student_is_refused_in_one_line(
    tmp_path, sequence_cache, inputs, fields, needle
):
    rows, cache = sequence_cache
    if fields:
        ids = rows.fields["input_ids"]
        rows = SequenceRows(
            rows.sample_id,
            rows.split,
            rows.label,
            {**rows.fields, "input_ids": Ragged(ids.values.astype(np.float32), ids.offsets)},
        )
    params = token_params(inputs=inputs or ["input_ids", "attention_mask"])
    with pytest.raises(StudentInputError) as error:
        _train(tmp_path, rows, cache, params)
    message = str(error.value)
    assert needle in message and "\n" not in message and message.startswith("student 'seq'")
    assert not (tmp_path / "run/out").exists()


def test_per_token_teacher_taps_reach_the_loss_with_the_token_mask(sequence_cache):
    from pipeline.train.step import teacher_taps

    _, cache = sequence_cache
    batch = cache.batch(np.array([0, 5, 9]))
    features, mask = teacher_taps(batch)
    assert set(features) == {"pooled", "hidden"}
    assert features["hidden"].shape == (3, int(mask.shape[1]), WIDTH)
    np.testing.assert_array_equal(mask.sum(1).numpy(), batch.tokens.lengths.numpy())


def test_a_token_student_exports_with_named_dynamic_inputs_and_passes_parity(
    tmp_path, sequence_cache, trained
):
    import onnxruntime as ort

    from pipeline.export.params import ExportParams
    from pipeline.export.run import export_seed

    rows, _ = sequence_cache
    _, seed_dir = trained
    report = export_seed(seed_dir, tmp_path / "export", ExportParams(), fields=rows)
    parity = report["parity"]
    assert parity["passed"] and parity["batch_sizes"] == [1, 7, 64]
    assert parity["output_names"] == ["logits", "tokens", "embed"]
    session = ort.InferenceSession(str(tmp_path / "export/model.onnx"), providers=["CPUExecutionProvider"])
    declared = {i.name: (i.type, len(i.shape), isinstance(i.shape[1], str)) for i in session.get_inputs()}
    assert declared == {
        "input_ids": ("tensor(int64)", 2, True),
        "attention_mask": ("tensor(int64)", 2, True),
    }


def test_evaluate_feeds_a_token_student_the_same_padded_fields(sequence_cache, trained):
    from pipeline.evaluate.evaluation import evaluate_model, join_split, predict_logits
    from pipeline.students.inputs import PreparedRows
    from pipeline.students.trained import load_trained_student

    rows, cache = sequence_cache
    _, seed_dir = trained
    data = join_split(rows, cache, "test")
    assert isinstance(data.inputs, PreparedRows)
    student = load_trained_student(seed_dir)
    whole = predict_logits(student, data.inputs, batch_size=64)
    batched = predict_logits(student, data.inputs, batch_size=3)  # other padding, same logits
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-6 * np.abs(whole).max())
    one_by_one = np.concatenate(
        [
            student(**{k: torch.from_numpy(v) for k, v in FieldBatches(rows, FIELDS)(np.array([r])).items()})
            .logits.detach()
            .numpy()
            for r in data.inputs.rows
        ]
    )
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-5, atol=1e-6 * np.abs(whole).max())
    evaluation = evaluate_model({"seed_0": student}, data)
    assert 0.0 <= evaluation.per_seed["seed_0"]["accuracy"] <= 1.0


def test_dataloader_workers_read_the_named_inputs_and_change_no_weight(tmp_path, sequence_cache):
    rows, cache = sequence_cache
    _train(tmp_path, rows, cache, token_params(epochs=1), "inline")
    _train(tmp_path, rows, cache, token_params(epochs=1, loader_workers=2), "workers")
    inline = (tmp_path / "inline/out/seed_0/model.safetensors").read_bytes()
    assert inline == (tmp_path / "workers/out/seed_0/model.safetensors").read_bytes()


def test_exporting_a_token_student_without_its_fields_or_as_int8_is_refused_before_writing(tmp_path, trained):
    from pipeline.export.params import ExportParams
    from pipeline.export.run import ExportError, export_seed

    _, seed_dir = trained
    with pytest.raises(ExportError, match="reads named fields; give the prepared data"):
        export_seed(seed_dir, tmp_path / "a", ExportParams())
    with pytest.raises(ExportError, match="export.int8 is not supported yet for a student of named inputs"):
        export_seed(seed_dir, tmp_path / "b", ExportParams(int8=True), fields=object())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
