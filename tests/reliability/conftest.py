"""Fixtures of the reliability tests: a built tiny project, the command line, and the record of
every message a user sees (written to a JSON file when DISTILLERY_RELIABILITY_RECORD names one,
which is how make_table.py builds docs/reliability.md from a real run)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from stages.cli import main
from tests.reliability.project import build_project

_RECORDS: list[dict[str, str]] = []

NUMPY_REPR = re.compile(r"\bnp\.(str_|bytes_|bool_?|u?int\d*|float\d*|complex\d*)\(|\barray\(\[|\bdtype\('")
"""What a numpy value looks like when formatted inside a list or with !r (`np.str_('val')`,
`np.int64(3)`, `array([1, 2])`, `dtype('<U5')`): never in a message a user reads."""


@pytest.fixture(scope="session")
def built_project(tmp_path_factory) -> Path:
    """A tiny project after `distillery cache/train/export/evaluate` (do not modify: copy it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_project(tmp_path_factory.mktemp("built"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def record(request):
    """record(item, message): note the message a user saw for `item` under this test's name."""

    def _record(item: str, message: str) -> None:
        _RECORDS.append(
            {"item": item, "test": request.node.name, "file": request.node.path.name, "message": message}
        )

    return _record


def refused(capsys, argv: list[str], code: int = 1) -> str:
    """Run `distillery <argv>` in-process; assert exit code `code` (1: bad input or state, 2: a bad
    command line) and exactly one error line `distillery <stage>: <Error>: <message>` and no
    traceback; return that line."""
    capsys.readouterr()
    try:
        got = main(argv)
    except SystemExit as exit_:  # argparse exits on a bad command line
        got = exit_.code
    captured = capsys.readouterr()
    assert got == code, f"exit code {got}; stderr: {captured.err}"
    assert "Traceback" not in captured.err + captured.out
    prefix = f"distillery {argv[0]}: "
    lines = [line for line in captured.err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, captured.err
    head = lines[0][len(prefix) :]
    assert head.split(": ", 1)[0].endswith("Error"), lines[0]
    assert not NUMPY_REPR.search(lines[0]), f"a numpy repr in the message: {lines[0]}"
    # the error is the last thing printed, and a multi-line message only where the error lists key paths
    tail = captured.err[captured.err.index(lines[0]) :].rstrip("\n")
    assert tail == lines[0], captured.err
    return lines[0]


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("DISTILLERY_RELIABILITY_RECORD")
    if target and _RECORDS:
        Path(target).write_text(json.dumps(_RECORDS, indent=2) + "\n")
