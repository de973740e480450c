"""Atomic file writes: a reader (or DVC) never sees a half-written file.

Each writer puts the bytes into a temporary file in the target's own directory (so the rename stays
on one filesystem), flushes and fsyncs it, then `os.replace`s it onto the target. A process killed
at any point leaves either the old file or the new one, plus at most a `.tmp-*` file that no reader
looks at.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from pipeline.errors import DistilleryError


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Any]:
    """A binary handle on a temp file beside `path`, fsynced and renamed onto `path` when the block
    ends without an error (removed when it raises)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    with _atomic_file(path) as handle:
        handle.write(data)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    """Write `payload` as indented JSON (keys in insertion order, trailing newline) atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def atomic_copy(source: str | Path, path: str | Path) -> Path:
    """Copy the file `source` to `path` atomically, streamed (a teacher's weights file can be GBs)."""
    path = Path(path)
    with _atomic_file(path) as handle, Path(source).open("rb") as reader:
        shutil.copyfileobj(reader, handle, 1 << 20)
    return path


def replace_dir(scratch: str | Path, target: str | Path) -> Path:
    """Move the finished directory `scratch` onto `target`, replacing what was there.

    Both must be on one filesystem. The old target is first renamed aside, then removed, so at
    every instant `target` is either the old complete directory, absent, or the new one.
    """
    scratch, target = Path(scratch), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}.{os.getpid()}")
        os.replace(target, old)
    os.replace(scratch, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


class OutputBusyError(DistilleryError):
    """Another process is writing the same output directory right now."""


@contextlib.contextmanager
def output_lock(directory: str | Path, command: str) -> Iterator[Path]:
    """Hold an exclusive lock on `directory` (a `.lock-<name>` file beside it) while writing it.

    A second writer of the same output fails at once with `OutputBusyError` naming the directory,
    instead of both writing and destroying each other's work. The lock is an OS file lock
    (`filelock`), released when the process exits, even by SIGKILL, so a killed run never leaves a
    stale lock behind. Once it is held, what killed writers of `directory` left behind is deleted
    (`remove_stale_temporaries`): no one else can be writing there. command: what the user ran,
    for the message (e.g. "distillery cache").
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(directory.parent / f".lock-{directory.name}")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise OutputBusyError(
            f"{directory} is being written by another `{command}` right now; wait for it to finish "
            "(or stop it), then re-run"
        ) from None
    try:
        remove_stale_temporaries(directory)
        yield directory
    finally:
        lock.release()


STALE_NAMES = re.compile(r"\.tmp-.+|\.old-.+\.\d+")
"""What an interrupted writer leaves: `.tmp-*` (an atomic write or a staging directory that was
never renamed into place) and `.old-<name>.<pid>` (a `replace_dir` killed between its two renames)."""


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete every file or directory named like `STALE_NAMES` below `directory`, and the
    `.old-<name>.<pid>` of `directory` itself beside it. Only safe while holding `output_lock` on
    `directory` (a live writer's temporary files look the same). Returns what was deleted."""
    directory = Path(directory)
    found = [
        p
        for p in directory.parent.glob(f".old-{glob.escape(directory.name)}.*")
        if STALE_NAMES.fullmatch(p.name)
    ]
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            if STALE_NAMES.fullmatch(name):
                found.append(Path(root) / name)
        dirs[:] = [name for name in dirs if not STALE_NAMES.fullmatch(name)]
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found
