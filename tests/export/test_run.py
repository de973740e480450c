"""Exporting a student directory: which seed, the parity report, int8, and no partial files when killed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.export.params import ExportParams
from pipeline.export.quantize import onnx_logits
from pipeline.export.run import ExportError, export_seed, export_student_dir, pick_seed
from pipeline.teacher.export import OnnxExportError

from .conftest import ARCHS, INPUT_SHAPE, NUM_CLASSES, save_student


def labelled_rows(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *INPUT_SHAPE)).astype(np.float32), rng.integers(0, NUM_CLASSES, n)


def test_the_lowest_seed_is_exported_unless_one_is_named(tmp_path):
    seeds = [tmp_path / "seed_10", tmp_path / "seed_2"]
    assert pick_seed(seeds, None).name == "seed_2"
    assert pick_seed(seeds, 10).name == "seed_10"
    with pytest.raises(ExportError, match="export.seed: 3 was not trained .*seed_10, seed_2"):
        pick_seed(seeds, 3)


def test_export_writes_model_and_parity_report_for_each_model_of_a_student(tmp_path):
    for seed in (1, 0):
        save_student(tmp_path / "train" / "kd" / f"seed_{seed}", ARCHS["mlp"], seed, name="kd")
    reports = export_student_dir(tmp_path / "train" / "kd", tmp_path / "export", ExportParams())
    assert list(reports) == ["kd"]
    out = tmp_path / "export" / "kd"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "parity.json"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["seed"] == 0 and parity["parity"]["passed"] is True
    assert parity["parity"]["output_names"] == ["logits", "hidden1", "hidden2", "embed"]
    assert parity["parity"]["batch_sizes"] == [1, 7, 64]


def test_parity_batches_are_drawn_from_the_rows_given_and_recorded(tmp_path):
    save_student(tmp_path / "train" / "kd" / "seed_0", ARCHS["cnn"], name="kd")
    rows, _ = labelled_rows(40)
    params = ExportParams(parity_batch_sizes=(3, 40), parity_seed=5)
    reports = export_student_dir(tmp_path / "train" / "kd", tmp_path / "export", params, parity_rows=rows)
    parity = json.loads((tmp_path / "export" / "kd" / "parity.json").read_text())["parity"]
    assert parity == reports["kd"]["parity"]
    assert parity["inputs"] == {"source": "prepared rows", "seed": 5} and parity["batch_sizes"] == [3, 40]
    for stats in parity["outputs"].values():  # the figure used, per output
        assert {"scale", "tolerance", "max_abs_diff", "relative_error", "passed"} <= stats.keys()


@pytest.mark.parametrize("sizes", [[0], [], [1, -2]])
def test_parity_batch_sizes_below_one_or_none_are_refused(sizes):
    from pipeline.config import ParamsError, validate_section

    with pytest.raises(ParamsError, match="export.parity_batch_sizes: .*(>= 1|at least one)"):
        validate_section(ExportParams, {"parity_batch_sizes": sizes}, "export")


def test_int8_quantisation_runs_and_reports_its_accuracy_change(tmp_path):
    seed_dir = save_student(tmp_path / "train" / "seed_0", ARCHS["cnn"])
    inputs, labels = labelled_rows()
    report = export_seed(seed_dir, tmp_path / "out", ExportParams(int8=True), (inputs, labels))
    int8 = report["int8"]
    assert (tmp_path / "out" / "model.int8.onnx").exists()
    fp32_accuracy = float(np.mean(onnx_logits(tmp_path / "out" / "model.onnx", inputs).argmax(1) == labels))
    assert int8["accuracy_fp32"] == pytest.approx(fp32_accuracy)
    assert int8["accuracy_change"] == pytest.approx(int8["accuracy_int8"] - int8["accuracy_fp32"])
    assert int8["rows"] == 64 and 0.0 <= int8["agreement_with_fp32"] <= 1.0
    assert int8["bytes_int8"] < int8["bytes_fp32"]
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["int8"] == int8


def test_int8_without_labelled_rows_is_refused(tmp_path):
    seed_dir = save_student(tmp_path / "seed_0", ARCHS["mlp"])
    with pytest.raises(ExportError, match="no labelled rows"):
        export_seed(seed_dir, tmp_path / "out", ExportParams(int8=True))


def test_killed_export_leaves_no_partial_onnx_and_no_report(tmp_path, monkeypatch):
    seed_dir = save_student(tmp_path / "seed_0", ARCHS["mlp"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "parity.json").write_text('{"stale": true}')  # from an earlier run: must not vouch for anything
    import torch.onnx

    def dies_mid_write(module, args, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x08\x0a half an onnx file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch.onnx, "export", dies_mid_write)
    with pytest.raises((KeyboardInterrupt, OnnxExportError)):
        export_seed(seed_dir, out, ExportParams())
    assert list(out.iterdir()) == []


def test_killed_quantisation_leaves_the_checked_model_but_no_int8_file_and_no_report(tmp_path, monkeypatch):
    seed_dir = save_student(tmp_path / "seed_0", ARCHS["mlp"])
    import onnxruntime.quantization

    def dies_mid_write(source, target, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        export_seed(seed_dir, tmp_path / "out", ExportParams(int8=True), labelled_rows(8))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx"]


def test_turning_int8_off_removes_the_int8_model_of_an_earlier_run(tmp_path):
    seed_dir = save_student(tmp_path / "seed_0", ARCHS["mlp"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.int8.onnx").write_bytes(b"old")
    report = export_seed(seed_dir, tmp_path / "out", ExportParams(int8=False))
    assert "int8" not in report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "parity.json"]
