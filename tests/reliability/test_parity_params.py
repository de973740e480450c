"""A parity check that would check nothing is refused through the command line (issue 12, item 6):
batch sizes of 0 (or none at all) for the students' export and for the built-in teacher."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import refused
from tests.reliability.project import base_params, copy_project, stage_argv, write_params


@pytest.mark.parametrize("sizes", [[0], []], ids=["zero", "none"])
def test_export_parity_batch_sizes_that_check_nothing_are_refused(
    sizes, tmp_path, built_project, capsys, record
):
    project = copy_project(built_project, tmp_path / "p")
    before = {p.name: p.read_bytes() for p in (project / "export" / "kd").iterdir()}
    params = base_params(project)
    params["export"]["parity_batch_sizes"] = sizes
    line = refused(capsys, stage_argv(project, "export", write_params(tmp_path / "params.yaml", params)))
    assert "ParamsError" in line and "export.parity_batch_sizes" in line
    assert {p.name: p.read_bytes() for p in (project / "export" / "kd").iterdir()} == before
    record(f"`export.parity_batch_sizes: {sizes}` (a parity check of no rows)", line)


def test_teacher_parity_batch_sizes_of_zero_are_refused(tmp_path, built_project, capsys, record):
    params = write_params(tmp_path / "params.yaml", {"teacher": {"parity": {"batch_sizes": [0]}}})
    argv = ["teacher", "--params", str(params), "--prepared", str(built_project / "prepared")]
    line = refused(capsys, [*argv, "--out", str(tmp_path / "teacher")])
    assert "ParamsError" in line and "teacher.parity.batch_sizes" in line and ">= 1" in line
    assert not (tmp_path / "teacher").exists()
    record("`teacher.parity.batch_sizes: [0]`", line)
