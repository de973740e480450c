"""An uncompressed memory-mapped copy of a finished cache, for caches too large for RAM.

A lazily read Zarr cache decodes one compressed inner chunk per touched row (~46 ms for a uniformly
random 256-row batch); a numpy gather from an uncompressed memory map costs a page fault per row
instead. So on first open every array (sample_id, split, label, logits, features/<tap>, sparse/*)
is materialised once, shard by shard, each shard checked against the manifest's sha256, into one
`.npy` file per array (`numpy.lib.format.open_memmap`) in a sidecar directory outside the DVC-tracked
store (default `<store>/../../.scratch/mmap/<key>/`, i.e. `data/.scratch/mmap/<key>/` for
`data/cache/store`). `<key>` is a digest of the cache's build fingerprint and manifest, so a rebuilt
cache gets a fresh sidecar, and the marker names the store it copies (its path relative to the
sidecars' directory, so moving a whole project keeps it): every open of a cache deletes the
sidecars of that same store whose key is not its own (older builds of it), the sidecars of an
older marker format, and the half-built copies of processes that are gone, so rebuilding a large
cache again and again does not fill the disk.

The build happens in `<key>.building-<pid>-<random>/`, the marker `complete.json` is written
(atomically) last, and only then is the directory renamed onto `<key>/`: a killed build is never
taken as finished, and two processes opening the same cache at once both end with one whole copy.
A sidecar without a matching marker is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.cache.format import CacheCorruptError, CacheMetadata, array_digest, array_path
from pipeline.cache.reader import MemoryCache
from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_json

MARKER_FILE = "complete.json"
MARKER_FORMAT = "distillery-cache-mmap"
MARKER_VERSION = 2
SMALL_ARRAYS = ("sample_id", "split", "label")


def sidecar_key(metadata: CacheMetadata) -> str:
    """32 hex digits naming a cache's sidecar: sha256 of its build fingerprint and manifest."""
    payload = json.dumps(
        {"build_fingerprint": metadata.build_fingerprint, "manifest": metadata.manifest}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def default_mmap_dir(store_dir: Path, metadata: CacheMetadata) -> Path:
    """`<store>/../../.scratch/mmap/<key>`: data/.scratch/mmap/<key> for data/cache/store."""
    return Path(store_dir).resolve().parent.parent / ".scratch" / "mmap" / sidecar_key(metadata)


def read_shard_verified(
    store, metadata: CacheMetadata, name: str, record: Mapping, verify: bool
) -> np.ndarray:
    """Array `name`'s rows of one manifest record, checked against its sha256 when `verify`."""
    rows = slice(int(record["start"]), int(record["stop"]))
    values = store.read(name, rows)
    if verify and array_digest(values) != record["sha256"][name]:
        raise CacheCorruptError(
            f"cache array {name!r} rows {rows.start}..{rows.stop - 1} in {store.path} do not match the "
            "manifest's sha256 (a shard file is missing or was altered); re-run `dvc repro cache`"
        )
    return values


class MmapCache(MemoryCache):
    """A finished cache served from its uncompressed memory-mapped sidecar.

    sample_id, split and label are in RAM; logits, features and the sparse form are read-only
    `np.memmap`s, so `batch(rows)` is a numpy gather (same TeacherBatch as `StoredCache`).
    `metadata` is the cache.json, `path` the store, `sidecar` the .npy directory, `built` whether
    this open built the sidecar (False: an existing one was reused).
    """

    def __init__(
        self,
        path: Path,
        metadata: CacheMetadata,
        sidecar: Path,
        arrays: Mapping[str, np.ndarray],
        built: bool,
    ) -> None:
        self._hold(arrays, metadata.layout.token_form)
        self.path, self.metadata, self.sidecar, self.built = path, metadata, sidecar, built


def _npy_path(directory: Path, name: str) -> Path:
    path = array_path(directory, name)  # "features/embed" -> features/embed.npy, inside `directory`
    return path.with_name(f"{path.name}.npy")


def store_identity(store_dir: Path, sidecars: Path) -> str:
    """The store `store_dir` as the sidecars in the directory `sidecars` name it: its path relative
    to that directory (the same after moving the whole project)."""
    return os.path.relpath(Path(store_dir).resolve(), Path(sidecars).resolve())


def _marker(metadata: CacheMetadata, store: str) -> dict:
    return {
        "format": MARKER_FORMAT,
        "format_version": MARKER_VERSION,
        "key": sidecar_key(metadata),
        "store": store,
        "build_fingerprint": metadata.build_fingerprint,
        "arrays": {
            name: {"row_shape": list(shape), "dtype": dtype}
            for name, (shape, dtype) in metadata.layout.arrays().items()
        },
        "num_rows": metadata.layout.num_rows,
    } | _ragged_marker(metadata)


def _ragged_marker(metadata: CacheMetadata) -> dict:
    """The ragged arrays' part of the marker (absent without any, so older sidecars stay valid)."""
    ragged = metadata.layout.ragged_arrays()
    if not ragged:
        return {}
    tokens = sum(int(record["tokens"]) for record in metadata.manifest)
    return {
        "ragged": {
            name: {"token_shape": list(shape), "dtype": dtype} for name, (shape, dtype) in ragged.items()
        },
        "num_tokens": tokens,
    }


def _shapes(metadata: CacheMetadata) -> dict[str, tuple[tuple[int, ...], str]]:
    """Array name -> (whole shape, dtype) of every .npy of the sidecar."""
    layout = metadata.layout
    tokens = sum(int(record.get("tokens", 0)) for record in metadata.manifest)
    shapes = {name: ((layout.num_rows, *shape), dtype) for name, (shape, dtype) in layout.arrays().items()}
    return shapes | {
        name: ((tokens, *shape), dtype) for name, (shape, dtype) in layout.ragged_arrays().items()
    }


def _open_finished(directory: Path, metadata: CacheMetadata, store: str) -> dict[str, np.ndarray] | None:
    """The sidecar's arrays when `directory` holds a finished sidecar of this cache, else None."""
    try:
        if json.loads((directory / MARKER_FILE).read_text()) != _marker(metadata, store):
            return None
        arrays = {}
        for name, (shape, dtype) in _shapes(metadata).items():
            array = np.load(_npy_path(directory, name), mmap_mode="r")
            if array.shape != shape or array.dtype != np.dtype(dtype):
                return None
            arrays[name] = array
        return arrays
    except (OSError, ValueError):  # no marker, bad JSON, a missing or truncated .npy
        return None


def _build(
    directory: Path, store, metadata: CacheMetadata, identity: str, verify: bool, progress: bool
) -> None:
    """Write every array into `directory` shard by shard (verified), then the marker."""
    layout = metadata.layout
    maps = {}
    for name, (shape, dtype) in _shapes(metadata).items():
        _npy_path(directory, name).parent.mkdir(parents=True, exist_ok=True)
        maps[name] = np.lib.format.open_memmap(
            _npy_path(directory, name), mode="w+", dtype=np.dtype(dtype), shape=shape
        )
    records = metadata.manifest
    if progress:
        from tqdm import tqdm

        records = tqdm(records, desc="cache -> mmap sidecar", unit="shard")
    token = 0
    for record in records:
        rows = slice(int(record["start"]), int(record["stop"]))
        tokens = slice(token, token + int(record.get("tokens", 0)))
        for name, target in maps.items():
            ragged = name in layout.ragged_arrays()
            target[tokens if ragged else rows] = read_shard_verified(store, metadata, name, record, verify)
        token = tokens.stop
    for target in maps.values():
        target.flush()
    del maps
    atomic_write_json(directory / MARKER_FILE, _marker(metadata, identity))


class MmapDirError(DistilleryError):
    """The sidecar directory given holds files that are not a cache's memory-mapped copy."""


def _remove_stale(directory: Path) -> None:
    """Delete a sidecar directory that is not a finished copy of this cache; refuse to delete
    one holding anything but .npy files and the marker (a wrong `mmap_dir` loses nothing)."""
    if not directory.exists():
        return
    foreign = [
        p
        for p in directory.rglob("*")
        if p.is_file() and p.suffix != ".npy" and p.name != MARKER_FILE and not p.name.startswith(".tmp-")
    ]
    if foreign or not directory.is_dir():
        raise MmapDirError(
            f"{directory} is not a cache's memory-mapped copy "
            f"(it holds {foreign[0] if foreign else 'a file'}); "
            "pass an empty or new directory as mmap_dir"
        )
    shutil.rmtree(directory)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove_dead_builds(parent: Path) -> None:
    """Delete `<key>.building-<pid>-*` directories whose process is gone (killed builds)."""
    for debris in parent.glob("*.building-*"):
        try:
            pid = int(debris.name.split(".building-", 1)[1].split("-", 1)[0])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(debris, ignore_errors=True)


def remove_stale_sidecars(
    store_dir: Path, metadata: CacheMetadata, mmap_dir: str | Path | None = None
) -> list[Path]:
    """Delete, beside this cache's sidecar directory, the sidecars that can never be used again:
    those of this same store with another key (older builds of it), those of an older marker
    format, and half-built copies of dead processes. Sidecars of other stores, and directories that
    are not sidecars, are left alone. Returns the directories deleted."""
    directory = Path(mmap_dir) if mmap_dir is not None else default_mmap_dir(store_dir, metadata)
    parent = directory.parent
    if not parent.is_dir():
        return []
    _remove_dead_builds(parent)
    identity, key, removed = store_identity(store_dir, parent), sidecar_key(metadata), []
    for candidate in parent.iterdir():
        if candidate == directory or ".building-" in candidate.name or not candidate.is_dir():
            continue
        try:
            marker = json.loads((candidate / MARKER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not a finished sidecar: maybe another program's directory
        if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
            continue
        older_format = marker.get("format_version") != MARKER_VERSION
        if older_format or (marker.get("store") == identity and marker.get("key") != key):
            try:
                _remove_stale(candidate)
            except MmapDirError:
                continue  # holds files of its own: never deleted
            removed.append(candidate)
    return removed


def open_sidecar(
    store_dir: Path,
    metadata: CacheMetadata,
    store,
    mmap_dir: str | Path | None = None,
    verify: bool = True,
    progress: bool = False,
) -> MmapCache:
    """The MmapCache of the finished cache at `store_dir`, building its sidecar if needed.

    mmap_dir: the sidecar directory (default `default_mmap_dir`). Reused when its marker matches
    this cache (build fingerprint, manifest digest, array shapes and dtypes); otherwise deleted
    and rebuilt from `store` (a ZarrStore or ParquetStore), every shard checked against the
    manifest's sha256 when `verify`: CacheCorruptError naming the array and rows, and nothing is
    left behind. Disk: the cache's uncompressed size (see `layout_nbytes`).
    """
    directory = Path(mmap_dir) if mmap_dir is not None else default_mmap_dir(store_dir, metadata)
    identity = store_identity(store_dir, directory.parent)
    arrays = _open_finished(directory, metadata, identity)
    built = arrays is None
    if built:
        directory.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_builds(directory.parent)
        building = Path(
            tempfile.mkdtemp(prefix=f"{directory.name}.building-{os.getpid()}-", dir=directory.parent)
        )
        try:
            _build(building, store, metadata, identity, verify, progress)
            arrays = _open_finished(directory, metadata, identity)  # another process may have finished first
            if arrays is None:
                _remove_stale(directory)  # half-built or of another cache: never taken as finished
                try:
                    os.rename(building, directory)
                except OSError:
                    pass  # another process put its finished copy there first
                arrays = _open_finished(directory, metadata, identity)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        if arrays is None:
            raise CacheCorruptError(
                f"the memory-mapped copy of {store_dir} at {directory} could not be read back "
                "after building it; delete that directory and retry"
            )
    small = {name: np.array(arrays[name]) for name in SMALL_ARRAYS}  # ids, splits, labels: in RAM
    return MmapCache(Path(store_dir), metadata, directory, {**arrays, **small}, built)
