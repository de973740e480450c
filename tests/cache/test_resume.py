"""A killed cache build resumes from its progress records and ends byte-identical; shards written
by separate processes give the same bytes as one process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cache.helpers import build, tree_bytes

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.cache._build_subprocess", str(tmp), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    """The files of an uninterrupted build in this process."""
    return tree_bytes(build(tmp_path_factory.mktemp("reference")).store_dir)


@pytest.mark.parametrize(
    "kill_point, shard", [("after_record", 1), ("mid_shard", 2), ("in_teacher", 3), ("in_finalize", 0)]
)
def test_cache_resumes_after_sigkill_byte_identical(tmp_path, reference, kill_point, shard):
    killed = _run(tmp_path, "build", kill_point, str(shard))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "cache" / "store").exists()
    rerun = _run(tmp_path, "build")
    assert rerun.returncode == 0, rerun.stderr
    assert tree_bytes(tmp_path / "cache" / "store") == reference
    assert not (tmp_path / "cache" / "scratch").exists()


def test_two_processes_writing_alternate_shards_match_one_process(tmp_path, reference):
    assert _run(tmp_path, "create").returncode == 0
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.cache._build_subprocess", str(tmp_path), "shards", shards],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shards in ("0,2,4", "1,3")
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.stderr.read()
    finalized = _run(tmp_path, "finalize")
    assert finalized.returncode == 0, finalized.stderr
    assert tree_bytes(tmp_path / "cache" / "store") == reference
