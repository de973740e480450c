"""teacher.inputs: a multi-input ONNX teacher fed by field name, checked up front, one line per mistake."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import TensorProto

from pipeline.teacher.session import TeacherInputError, TeacherModelError, open_teacher
from tests.sequences.helpers import Ragged, expected_outputs, sequence_rows, sequence_teacher

FIELDS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}


@pytest.fixture
def teacher_path(tmp_path):
    return sequence_teacher(tmp_path / "seq.onnx")


def test_a_two_input_int64_teacher_runs_on_named_arrays_with_dynamic_batch_and_sequence(teacher_path):
    teacher = open_teacher(teacher_path, inputs=FIELDS, provider="cpu")
    rows = sequence_rows()
    teacher.check_fields(rows.fields)
    for batch in (slice(0, 1), slice(3, 10)):
        feed = teacher.feed(rows.fields, batch)
        assert feed.arrays["input_ids"].dtype == np.int64
        assert feed.arrays["input_ids"].shape[1] == feed.lengths.max()
        outputs = teacher.run(feed.arrays)
        for b, row in enumerate(range(batch.start, batch.stop)):
            want = expected_outputs(rows, row)
            np.testing.assert_allclose(outputs["logits"][b], want["logits"], rtol=1e-6)
            np.testing.assert_allclose(outputs["hidden"][b, : feed.lengths[b]], want["hidden"], rtol=1e-6)


def test_io_binding_feeds_every_named_input(teacher_path):
    teacher = open_teacher(teacher_path, inputs=FIELDS, provider="cpu")
    feed = teacher.feed(sequence_rows().fields, slice(0, 5))
    bound, plain = teacher._run_bound(feed.arrays, device_type="cpu"), teacher.run(feed.arrays)
    assert set(bound) == set(plain)
    for name in plain:
        np.testing.assert_array_equal(bound[name], plain[name])


def test_an_input_teacher_inputs_does_not_feed_is_named(teacher_path):
    with pytest.raises(TeacherModelError, match=r"map 'attention_mask' to prepared fields in teacher.inputs"):
        open_teacher(teacher_path, inputs={"input_ids": "input_ids"}, provider="cpu")


def test_a_missing_field_is_one_line_naming_input_and_field(teacher_path):
    teacher = open_teacher(teacher_path, inputs={**FIELDS, "attention_mask": "mask"}, provider="cpu")
    with pytest.raises(TeacherInputError) as error:
        teacher.check_fields(sequence_rows().fields)
    message = str(error.value)
    assert "\n" not in message
    assert (
        "input 'attention_mask' is fed from field 'mask'" in message
        and "['attention_mask', 'input_ids']" in message
    )


def test_a_field_of_another_dtype_names_both_dtypes(teacher_path):
    rows = sequence_rows()
    ids = rows.fields["input_ids"]
    fields = {**rows.fields, "input_ids": Ragged(ids.values.astype(np.int32), ids.offsets)}
    teacher = open_teacher(teacher_path, inputs=FIELDS, provider="cpu")
    with pytest.raises(
        TeacherInputError,
        match=r"input 'input_ids' takes int64 \[batch, sequence\] but field 'input_ids' is int32 "
        r"\[rows, length\] \(the dtype differs\)",
    ):
        teacher.check_fields(fields)


def test_a_field_of_another_rank_names_both_shapes(teacher_path):
    rows = sequence_rows()
    fields = {**rows.fields, "attention_mask": np.ones(len(rows.sample_id), np.int64)}
    teacher = open_teacher(teacher_path, inputs=FIELDS, provider="cpu")
    with pytest.raises(
        TeacherInputError, match=r"field 'attention_mask' is int64 \[rows\] \(the rank differs\)"
    ):
        teacher.check_fields(fields)


def test_a_sequence_longer_than_the_model_takes_names_the_rows(teacher_path):
    rows = sequence_rows(max_len=9)
    teacher = open_teacher(teacher_path, inputs=FIELDS, provider="cpu", max_length=6)
    lengths = np.diff(rows.fields["input_ids"].offsets)
    long_ids = [int(i) for i in rows.sample_id[lengths > 6][:5]]
    with pytest.raises(TeacherInputError) as error:
        teacher.check_fields(rows.fields, lambda r: rows.sample_id[r].tolist())
    message = str(error.value)
    assert (
        f"rows of up to {lengths.max()} tokens" in message
        and "takes at most 6 (teacher.max_length)" in message
    )
    assert ", ".join(map(str, long_ids)) in message


def test_fields_of_one_sequence_must_agree_on_each_rows_length(teacher_path):
    rows = sequence_rows()
    mask = rows.fields["attention_mask"]
    offsets = mask.offsets.copy()
    offsets[1:-1] += 1  # row 0 one longer, the last one shorter
    fields = {**rows.fields, "attention_mask": dataclasses.replace(mask, offsets=offsets)}
    teacher = open_teacher(teacher_path, inputs=FIELDS, provider="cpu")
    with pytest.raises(TeacherInputError, match="differ in length on 2 row"):
        teacher.check_fields(fields)


def test_the_single_input_form_is_unchanged(tmp_path):
    from tests.teacher.conftest import tiny_onnx

    teacher = open_teacher(tiny_onnx(tmp_path / "t.onnx"), provider="cpu")
    assert teacher.input_fields == {"input": "input"} and teacher.input_name == "input"
    assert teacher.run(np.zeros((2, 1, 4, 4), np.float32))["logits"].shape == (2, 3)


def test_a_non_numeric_input_is_refused(tmp_path):
    path = sequence_teacher(tmp_path / "s.onnx", id_type=TensorProto.STRING)
    with pytest.raises((TeacherInputError, TeacherModelError), match="input 'input_ids' is STRING"):
        open_teacher(path, inputs=FIELDS, provider="cpu")
