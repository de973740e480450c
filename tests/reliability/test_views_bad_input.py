"""Bad view params through the real command line (issue 16 item 6): one line each, nothing lost."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import refused
from tests.reliability.project import base_params, copy_project, stage_argv, student_recipe, write_params

VIEWS = {"count": 2, "seed": 0, "transforms": [{"kind": "flip"}, {"kind": "shift", "pixels": 1}]}


def _params(project, views=VIEWS, student_views=None, path=None):
    params = base_params(project)
    params["cache"]["views"] = views
    params["students"]["kd"] = student_recipe(project, views=student_views)
    return write_params(path or project / "params.yaml", params)


@pytest.mark.parametrize(
    ("views", "error", "pattern"),
    [
        (
            {"count": 2, "transforms": [{"kind": "crop", "size": 5}]},
            "TransformError",
            r"transform 0 \(crop\): size \[5, 5\] is larger than the image \[4, 4\]",
        ),
        ({"count": 0, "transforms": [{"kind": "flip"}]}, "ParamsError", r"cache\.views\.count"),
    ],
    ids=["crop-larger-than-image", "zero-views"],
)
def test_a_view_spec_that_cannot_be_cached_is_refused_at_start(
    views, error, pattern, tmp_path, built_project, capsys, record
):
    import re

    project = copy_project(built_project, tmp_path / "p")
    before = (project / "cache" / "store" / "cache.json").read_bytes()
    line = refused(capsys, stage_argv(project, "cache", _params(project, views)))
    assert error in line and re.search(pattern, line), line
    assert (project / "cache" / "store" / "cache.json").read_bytes() == before  # the old cache is intact
    assert not (project / "scratch" / "cache" / "store").exists()  # refused before the teacher ran
    record(f"cache.views: {'a crop larger than the image' if error == 'TransformError' else 'count 0'}", line)


@pytest.fixture(scope="module")
def view_project(tmp_path_factory, built_project):
    from stages.cli import main

    project = copy_project(built_project, tmp_path_factory.mktemp("views") / "p")
    assert main(stage_argv(project, "cache", _params(project, student_views=2))) == 0
    return project


def test_students_whose_views_do_not_fit_the_cache_are_refused(view_project, tmp_path, capsys, record):
    cases = {
        "a student asking for more views than cached": (
            _params(view_project, student_views=3, path=tmp_path / "more.yaml"),
            r"ViewsMismatchError: students\.kd\.views is 3 but the cache holds 2 views per sample",
        ),
        "a view cache read by a student expecting none": (
            _params(view_project, path=tmp_path / "none.yaml"),
            r"ViewsMismatchError: the cache at .* holds 2 views per sample but students\.kd\.views is "
            r"not set",
        ),
        "a stale view cache after a spec change": (
            _params(view_project, VIEWS | {"seed": 1}, student_views=2, path=tmp_path / "stale.yaml"),
            r"StaleCacheError: the cache at .* was built with cache\.views [0-9a-f]{12} but the params "
            r"ask for [0-9a-f]{12}; re-run `dvc repro cache`",
        ),
    }
    import re

    for item, (params, pattern) in cases.items():
        line = refused(capsys, stage_argv(view_project, "train", params))
        assert re.search(pattern, line), line
        record(item, line)
    assert main_ok(view_project, _params(view_project, student_views=2, path=tmp_path / "ok.yaml"))


def main_ok(project, params) -> bool:
    from stages.cli import main

    return main(stage_argv(project, "train", params)) == 0


def test_a_student_asking_for_views_of_a_single_view_cache_is_refused(
    tmp_path, built_project, capsys, record
):
    params = base_params(built_project)
    params["students"]["kd"] = student_recipe(built_project, views=2)
    path = write_params(tmp_path / "params.yaml", params)
    argv = stage_argv(built_project, "train", path)
    argv[argv.index("--out") + 1] = str(tmp_path / "out")  # the built project stays as it is
    argv[argv.index("--scratch") + 1] = str(tmp_path / "scratch")
    line = refused(capsys, argv)
    assert "ViewsMismatchError: students.kd.views is 2 but the cache at" in line and "holds no views" in line
    record("a student asking for views of a single-view cache", line)


def test_the_sweep_refuses_a_stale_view_cache_before_any_task_starts(view_project, tmp_path, capsys, record):
    params = _params(view_project, VIEWS | {"seed": 1}, student_views=2, path=tmp_path / "stale.yaml")
    argv = [
        "sweep",
        "--params",
        str(params),
        "--prepared",
        str(view_project / "prepared"),
        "--students",
        "kd",
        "--out",
        str(tmp_path / "sweep"),
        "--scratch",
        str(tmp_path / "scratch"),
        "--report",
        str(tmp_path / "report.json"),
        "--no-progress",
    ]
    line = refused(capsys, argv)
    assert "StaleCacheError: the cache at" in line and "re-run `dvc repro cache`" in line, line
    assert not (tmp_path / "report.json").exists()  # refused before the cluster started
    record("a stale view cache given to `distillery sweep`", line)
