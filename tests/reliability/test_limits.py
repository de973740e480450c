"""Resource limits: input built to exhaust time or memory is refused at once with one line (issue
12, item 9): a YAML alias bomb, a params file of many megabytes, and a cluster whose workers can
never run a task."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.conftest import refused
from tests.reliability.project import base_params, stage_argv, write_params


def _train_with(params_path: Path, built_project: Path, tmp_path: Path) -> list[str]:
    argv = stage_argv(built_project, "train", params=params_path)
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    argv[argv.index("--scratch") + 1] = str(tmp_path / "scratch")
    return argv


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, built_project, capsys, record):
    """Nine levels of nine aliases: 9^9 (387 million) values from 10 lines. Expanded (by validation,
    or by an error message printing the input) it took 74 s and 2.8 GB, then a traceback."""
    levels = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for k in range(1, 9):
        levels.append(f"lol{k}: &lol{k} [" + ", ".join([f"*lol{k - 1}"] * 9) + "]")
    text = (built_project / "params.yaml").read_text().replace("    epochs: 1\n", "    epochs: *lol8\n", 1)
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(levels) + "\n" + text)
    line = refused(capsys, _train_with(path, built_project, tmp_path))
    assert "ParamsError" in line and "aliases (*name) expand the file to more than 1,000,000 values" in line
    assert len(line) < 400
    record(
        "params: a YAML alias bomb (9 levels of 9 aliases, 387 million values)",
        line.replace(str(tmp_path), "<tmp>"),
    )


def test_shared_values_written_by_yaml_safe_dump_are_still_read(tmp_path, built_project):
    """`yaml.safe_dump` writes an anchor and an alias for a value that occurs twice; that is fine."""
    import yaml

    from pipeline.config import read_params_file

    params = base_params(built_project)
    params["students"]["copy"] = params["students"]["kd"]  # the same dict: dumped as &id001 / *id001
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert "*id001" in path.read_text()
    assert read_params_file(path)["students"]["copy"] == params["students"]["kd"]


def test_a_params_file_of_many_megabytes_is_refused_at_once(tmp_path, built_project, capsys, record):
    path = tmp_path / "params.yaml"
    padding = "# " + "x" * 98 + "\n"
    path.write_text((built_project / "params.yaml").read_text() + padding * 50_000)  # 5 MB
    line = refused(capsys, _train_with(path, built_project, tmp_path))
    assert "ParamsError" in line and "larger than 1 MiB, the limit of a params file" in line
    record("params: a 5 MB params file", line.replace(str(tmp_path), "<tmp>"))


def test_a_cluster_memory_too_small_for_a_worker_is_refused_naming_the_setting(
    tmp_path, built_project, capsys, record
):
    """`cluster.memory: 1MB` hung `distillery sweep` for 822 s: the worker joined, was paused over
    its limit and restarted forever, so no task ever started."""
    params = base_params(built_project)
    params["cluster"] = {"kind": "local", "workers": 1, "memory": "1MB"}
    params["sweep"] = {"students": ["kd"]}
    path = write_params(tmp_path / "params.yaml", params)
    argv = ["sweep", "--params", str(path), "--prepared", str(built_project / "prepared"), "--out",
            str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch"), "--report",
            str(tmp_path / "report.json"), "--no-progress"]  # fmt: skip
    line = refused(capsys, argv)
    assert "ParamsError: cluster.memory: 1MB is less than the 256 MiB a Dask worker needs" in line
    record("`cluster.memory: 1MB`, at `distillery sweep`", line)


@pytest.mark.slow
def test_a_cluster_whose_workers_never_run_a_task_times_out_naming_the_settings(record):
    """Past the params check (a limit the worker still outgrows, here forced to 1 MB): the engine
    waits `start_timeout_s` for a first task to run, then fails naming cluster.memory."""
    from pipeline.cluster.engine import ClusterStartError, open_client
    from pipeline.cluster.params import LocalParams

    params = LocalParams.model_construct(
        **{**LocalParams().model_dump(), "workers": 1, "memory": "1MB", "start_timeout_s": 5.0}
    )
    with pytest.raises(ClusterStartError) as caught:
        with open_client(params):
            pass
    message = str(caught.value)
    assert "none ran a task within 5 s" in message and "cluster.memory '1MB'" in message
    record("a cluster whose workers join but never run a task (memory limit below a worker's own)",
           f"ClusterStartError: {message}")  # fmt: skip
