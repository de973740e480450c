"""User-written names are checked against one safe pattern before they become paths or commands."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from pipeline.config import StrictModel
from pipeline.io import OutputBusyError, output_lock
from pipeline.names import InvalidNameError, SafeName, check_name, child_path


@pytest.mark.parametrize("name", ["hinton", "born_again_g1", "ta-student", "A1", "_x", "x" * 64])
def test_safe_names_pass_unchanged(name):
    assert check_name(name, "student") == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../../docs", "x;touch /tmp/pwned", "a b", "-rf", "a/b", "a.b", "x" * 65, "é", 3, None],
)
def test_unsafe_names_are_refused_naming_the_rule(name):
    with pytest.raises(InvalidNameError, match="student name .* is not allowed: use 1-64 characters"):
        check_name(name, "student")


def test_a_300_character_name_is_shown_shortened():
    with pytest.raises(InvalidNameError) as caught:
        check_name("y" * 300, "student")
    assert len(str(caught.value)) < 200


def test_child_path_stays_inside_its_root(tmp_path):
    assert child_path(tmp_path, "hinton") == tmp_path / "hinton"
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "root_link")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "root" / "escape")
    with pytest.raises(InvalidNameError, match="resolves outside"):
        child_path(tmp_path / "root", "escape")


def test_safe_name_in_a_params_model_names_the_key():
    class Section(StrictModel):
        students: dict[SafeName, int]

    assert Section(students={"ok": 1}).students == {"ok": 1}
    with pytest.raises(ValidationError, match="is not allowed"):
        Section(students={"x;rm": 1})


def test_a_second_writer_of_one_output_is_refused_at_once(tmp_path):
    target = tmp_path / "cache" / "store"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from pipeline.io import output_lock
        with output_lock({str(target)!r}, "distillery cache"):
            print("held", flush=True)
            time.sleep(30)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match="being written by another `distillery cache`"):
            with output_lock(target, "distillery cache"):
                pass
    finally:
        process.kill()
        process.wait()
    with output_lock(target, "distillery cache"):  # a killed holder leaves no stale lock
        pass
