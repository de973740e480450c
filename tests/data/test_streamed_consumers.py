"""Prepared data read from its shards in bounded memory gives what the whole array gives: random rows,
training, evaluation, the label curve and the export's parity batches (issue 14 item 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.data.dataset import FieldView, open_prepared
from pipeline.data.prepared import PreparedData, open_for_reading, open_for_training
from pipeline.data.writer import write_arrays
from tests.train.helpers import NUM_CLASSES, make_cache, make_prepared, student_params

SCALE = [{"kind": "scale", "factor": 1 / 255}]


def _on_disk(tmp_path, block_rows: int = 16):
    """The train helpers' 260 rows as uint8 `pixels` (1, 8, 8) scaled at read time, several shards;
    (the dataset on disk, the same data whole in memory)."""
    base = make_prepared()
    pixels = np.clip(base.inputs * 40 + 128, 0, 255).astype(np.uint8)
    write_arrays(
        tmp_path / "prepared",
        base.sample_id,
        base.split,
        base.label,
        NUM_CLASSES,
        {"pixels": pixels},
        transforms={"pixels": SCALE},
        block_rows=block_rows,
        blocks_per_shard=3,
    )
    data = open_prepared(tmp_path / "prepared")
    data.pixels = pixels  # what was written, for the tests to compare with
    return data, data.to_memory()


def test_random_rows_read_from_the_shards_equal_the_whole_array_in_any_order(tmp_path):
    data, whole = _on_disk(tmp_path)
    assert len(data.meta["shards"]) > 3
    rows = np.random.default_rng(0).integers(0, len(data), 100)  # every shard, repeats, any order
    np.testing.assert_array_equal(data.inputs[rows], whole.inputs[rows])
    np.testing.assert_array_equal(data.inputs.at(rows)[10:20], whole.inputs[rows[10:20]])
    stored = data.read(rows, ["pixels"], transform=False)["pixels"]
    assert stored.dtype == np.uint8 and np.array_equal(stored, data.pixels[rows])


def test_bool_fields_are_read_from_their_blocks(tmp_path):
    flags = np.random.default_rng(1).random((40, 3)) > 0.5
    write_arrays(tmp_path / "p", np.arange(40), np.zeros(40), np.zeros(40), 2, {"flags": flags}, block_rows=8)
    rows = np.array([39, 0, 8, 8, 17])
    assert np.array_equal(open_prepared(tmp_path / "p").read(rows)["flags"], flags[rows])


def test_named_fields_and_large_data_stay_on_disk_small_digits_shaped_data_is_loaded(tmp_path):
    data, _ = _on_disk(tmp_path)
    assert isinstance(open_for_reading(data.directory), type(data))  # `pixels`: fed by name, kept on disk
    index, source = open_for_training(data.directory)
    assert source is not None and index.inputs.shape == (len(data), 0)
    assert index.fingerprint == data.fingerprint
    x = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)
    write_arrays(tmp_path / "digits", np.arange(30), np.zeros(30), np.zeros(30), 10, {"input": x})
    index, source = open_for_training(tmp_path / "digits")
    assert source is None and isinstance(index, PreparedData) and np.array_equal(index.inputs, x)


def test_training_from_the_shards_in_the_loop_or_in_loader_workers_gives_the_whole_arrays_weights(tmp_path):
    from pipeline.train.run import train_from_reader

    data, whole = _on_disk(tmp_path)
    cache = make_cache(whole)
    params = student_params(epochs=2)
    train_from_reader("s", params, cache, whole, tmp_path / "a", tmp_path / "sa", progress=False)
    index, source = open_for_training(data.directory)
    train_from_reader("s", params, cache, index, tmp_path / "b", tmp_path / "sb", progress=False, source=source)
    workers = student_params(epochs=2, loader_workers=2)  # the single input read in 2 DataLoader workers
    train_from_reader("s", workers, cache, index, tmp_path / "c", tmp_path / "sc", progress=False, source=source)
    a = load_file(tmp_path / "a/seed_0/model.safetensors")
    for other in "bc":
        b = load_file(tmp_path / other / "seed_0/model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), other


def test_evaluation_reads_the_split_per_batch_and_predicts_what_the_whole_array_predicts(tmp_path):
    from pipeline.evaluate.evaluation import join_split, predict_logits
    from pipeline.students.registry import build_student

    data, whole = _on_disk(tmp_path)
    cache = make_cache(whole)
    streamed, held = join_split(data, cache, "test"), join_split(whole, cache, "test")
    assert isinstance(streamed.inputs, FieldView) and isinstance(held.inputs, np.ndarray)
    assert np.array_equal(streamed.sample_id, held.sample_id) and np.array_equal(streamed.labels, held.labels)
    torch.manual_seed(0)
    model = build_student({"kind": "mlp", "hidden": [16]}, (1, 8, 8), NUM_CLASSES)
    np.testing.assert_array_equal(
        predict_logits(model, streamed.inputs, 7), predict_logits(model, held.inputs, 7)
    )
    np.testing.assert_array_equal(streamed.labelled_inputs()[:], held.labelled_inputs())


def test_the_label_curve_on_data_on_disk_matches_the_curve_on_the_whole_array(tmp_path):
    from pipeline.train.label_curve import LabelCurveParams, run_label_curve
    from pipeline.train.params import validate_students

    data, whole = _on_disk(tmp_path)
    cache = make_cache(whole)
    students = validate_students({"kd": student_params().model_dump(mode="json")})
    curve = LabelCurveParams(per_class=[2], students=["kd"], seeds=[0], held_back=False, steps=4)
    on_disk = run_label_curve(curve, students, cache, data, tmp_path / "a", progress=False)
    in_memory = run_label_curve(curve, students, cache, whole, tmp_path / "b", progress=False)
    assert on_disk == in_memory


@pytest.mark.parametrize("sizes", [(1, 7, 64)])
def test_parity_batches_drawn_from_rows_on_disk_are_the_batches_drawn_from_the_array(tmp_path, sizes):
    from pipeline.teacher.export import parity_batches

    data, whole = _on_disk(tmp_path)
    for a, b in zip(parity_batches(data.inputs, sizes, 3), parity_batches(whole.inputs, sizes, 3)):
        np.testing.assert_array_equal(a, b)


def test_int8_accuracy_is_measured_on_test_rows_read_per_batch_from_the_shards(tmp_path):
    from pipeline.export.quantize import int8_report, quantize_int8
    from pipeline.export.run import int8_rows
    from pipeline.export.student_onnx import export_student
    from pipeline.students.registry import build_student

    data, whole = _on_disk(tmp_path)
    on_disk, in_memory = int8_rows(data), int8_rows(whole)
    assert isinstance(on_disk[0], FieldView)  # a view: the split is read one batch at a time
    np.testing.assert_array_equal(on_disk[0][:], in_memory[0])
    np.testing.assert_array_equal(on_disk[1], in_memory[1])
    torch.manual_seed(0)
    student = build_student({"kind": "mlp", "hidden": [16]}, (1, 8, 8), NUM_CLASSES).eval()
    export_student(student, (1, 8, 8), tmp_path / "model.onnx")
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    reports = [int8_report(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", *rows) for rows in (on_disk, in_memory)]
    assert reports[0] == reports[1] and reports[0]["rows"] == len(in_memory[1]) > 0


def test_training_on_cached_views_of_data_on_disk_gives_the_weights_of_the_whole_array(tmp_path):
    from pipeline.cache.open import open_cache
    from pipeline.cache.params import CacheParams
    from pipeline.cache.writer import build_cache
    from pipeline.train.run import train_from_reader
    from tests.train.test_views import VIEWS, EchoTeacher

    data, whole = _on_disk(tmp_path)
    params = CacheParams(views=VIEWS, features_dtype="float32", rows_per_chunk=64, batch_size=50)
    built = build_cache(
        data, EchoTeacher(), "t" * 64, data.fingerprint, params, tmp_path / "store", tmp_path / "scratch", progress=False
    )
    cache = open_cache(built.store_dir, data.fingerprint)
    student = student_params(epochs=2, views=2)
    train_from_reader("s", student, cache, whole, tmp_path / "a", tmp_path / "sa", progress=False)
    index, source = open_for_training(data.directory)  # the views replayed from rows read per batch
    train_from_reader("s", student, cache, index, tmp_path / "b", tmp_path / "sb", progress=False, source=source)
    a = load_file(tmp_path / "a/seed_0/model.safetensors")
    b = load_file(tmp_path / "b/seed_0/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
