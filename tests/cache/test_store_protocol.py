"""Every store satisfies one `Store` protocol, and a new format is one class plus one line in `STORES`:
a toy store of plain `.npy` files, written here and registered by name, builds, resumes, opens,
verifies and reads back like the real ones."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache import store as store_module
from pipeline.cache.format import CacheCorruptError, CacheLayout, array_path
from pipeline.cache.open import open_cache
from pipeline.cache.params import CacheParams
from pipeline.cache.store import STORES, Store, store_class
from tests.cache.helpers import FakeTeacher, build, make_rows, small_params


class NpyStore:
    """One `.npy` file per array per shard: `<array>/shard-<k>.npy`."""

    kind = "npy"
    reads_rows = False

    def __init__(self, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> None:
        self.path, self.layout = Path(path), layout

    @classmethod
    def create(cls, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> NpyStore:
        Path(path).mkdir(parents=True, exist_ok=True)
        return cls(path, layout)

    def _file(self, name: str, shard_index: int) -> Path:
        return array_path(self.path, name) / f"shard-{shard_index:06d}.npy"

    def write_shard(self, shard_index: int, rows: slice, arrays: Mapping[str, np.ndarray]) -> None:
        for name in self.layout.arrays():
            self._file(name, shard_index).parent.mkdir(parents=True, exist_ok=True)
            np.save(self._file(name, shard_index), arrays[name])

    def read(self, name: str, rows: slice) -> np.ndarray:
        try:
            return np.load(self._file(name, rows.start // self.layout.rows_per_shard))
        except (OSError, ValueError) as error:
            raise CacheCorruptError(
                f"cache array {name!r} rows {rows.start}..{rows.stop - 1}: {error}"
            ) from None

    def stored_arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        stored = {}
        for name in self.layout.arrays():
            parts = [
                np.load(f, mmap_mode="r") for f in sorted(array_path(self.path, name).glob("shard-*.npy"))
            ]
            if parts:
                stored[name] = ((sum(len(p) for p in parts), *parts[0].shape[1:]), str(parts[0].dtype))
        return stored

    def remove_debris(self) -> None:
        pass


@pytest.mark.parametrize("kind", list(STORES))
def test_every_store_in_the_table_has_every_method_of_the_protocol(kind):
    cls = store_class(kind)
    assert cls.kind == kind and isinstance(cls.reads_rows, bool)
    for name, member in vars(Store).items():
        if name.startswith("_") or not (callable(member) or isinstance(member, classmethod)):
            continue
        if name == "read_rows" and not cls.reads_rows:
            continue  # only stores that read arbitrary rows cheaply offer it
        expected = inspect.signature(getattr(Store, name)).parameters.keys()
        assert inspect.signature(getattr(cls, name)).parameters.keys() == expected, f"{cls.__name__}.{name}"
    assert CacheParams(store=kind).store == kind


def test_a_new_store_is_one_class_and_one_line_in_the_table(tmp_path, monkeypatch):
    monkeypatch.setitem(STORES, "npy", f"{__name__}:NpyStore")
    params = CacheParams.model_construct(**{**small_params(sparse_top_k=3).model_dump(), "store": "npy"})
    rows, teacher = make_rows(), FakeTeacher()
    result = build(tmp_path, rows, teacher, params)
    assert sorted(p.name for p in (result.store_dir / "logits").iterdir())[0] == "shard-000000.npy"
    cache = open_cache(result.store_dir, rows.fingerprint, "t" * 64)
    reference = open_cache(
        build(tmp_path, rows, teacher, small_params(sparse_top_k=3), name="zarr").store_dir
    )
    for name in ("sample_id", "split", "label", "logits"):
        np.testing.assert_array_equal(getattr(cache, name), getattr(reference, name))
    np.testing.assert_array_equal(cache.features["conv"], reference.features["conv"])
    np.testing.assert_array_equal(cache.sparse[1], reference.sparse[1])
    np.save(array_path(result.store_dir, "logits") / "shard-000002.npy", np.zeros((32, 7), np.float16))
    with pytest.raises(CacheCorruptError, match=r"'logits' rows 64\.\.95 .*manifest"):
        open_cache(result.store_dir)  # the manifest checks a new store's bytes like any other's
    assert store_module.store_class("npy") is NpyStore
