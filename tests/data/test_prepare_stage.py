"""`distillery prepare` end to end on the built-in digits, with a label budget and an omitted class."""

from __future__ import annotations

import numpy as np

from pipeline.data.prepare import TEACHER_TRAIN_DIR
from pipeline.data.prepared import load_prepared
from pipeline.data.split import TRAIN
from pipeline.teacher.build import teacher_training_data
from stages.cli import main


def test_prepare_stage_writes_students_data_and_the_teachers_full_train(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  label_budget: {per_class: 10}\n  omit_classes: [3]\n")
    out = tmp_path / "prepared"
    assert main(["prepare", "--params", str(params), "--out", str(out)]) == 0
    assert "prepare: wrote" in capsys.readouterr().out
    data = load_prepared(out)
    counts = np.bincount(data.label[data.split == TRAIN], minlength=10)
    assert counts[3] == 0 and (np.delete(counts, 3) == 10).all()
    teacher_rows = teacher_training_data(out, data, "full_train")
    assert (teacher_rows.split == TRAIN).all() and (teacher_rows.label == 3).sum() > 100
    assert teacher_training_data(out, data, "transfer_set") is data

    params.write_text("prepare: {}\n")  # back to no budget: the stale teacher_train must go
    assert main(["prepare", "--params", str(params), "--out", str(out)]) == 0
    assert not (out / TEACHER_TRAIN_DIR).exists()


def test_prepare_stage_reports_a_params_typo_without_a_traceback(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  test_fracton: 0.2\n")
    assert main(["prepare", "--params", str(params), "--out", str(tmp_path / "p")]) == 1
    assert "prepare.test_fracton: unknown key; did you mean 'test_fraction'?" in capsys.readouterr().err
