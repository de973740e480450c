"""String sample ids and class names through every source, kept in the prepared data, and every kind
of label that is neither a class index nor a class name refused with the way to map it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.checks import DuplicateSampleIdError, SampleIdTypeError
from pipeline.data.ids import SampleIdCollisionError, sample_keys, string_key
from pipeline.data.labels import ClassNameError, LabelTypeError, parse_labels
from pipeline.data.prepare import prepare_dataset
from pipeline.data.prepared import load_prepared, make_prepared, write_prepared
from pipeline.data.split import TRAIN
from tests.data.conftest import make_params
from tests.data.test_sources import write_zarr

NAMES = np.array(["dog", "Cat", "cat"])  # sorted: Cat < cat < dog (code points)


@pytest.fixture
def named(arrays):
    """The 60-row dataset with string ids `img-000100`.. and class names instead of 0, 1, 2."""
    ids, x, y = arrays
    return np.array([f"img-{i:06d}" for i in ids]), x, NAMES[y]


def _npz(tmp_path, **arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    return make_params(dataset={"kind": "npz", "path": str(tmp_path / "d.npz")})


def _parquet(tmp_path, ids, x, labels):
    flat = x.reshape(len(x), -1)
    table = pa.table(
        {
            "id": pa.array(ids),
            "label": pa.array(labels),
            "input": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    return make_params(
        dataset={"kind": "parquet", "path": str(tmp_path / "d.parquet"), "input_shape": [2, 3]}
    )


def _zarr(tmp_path, ids, x, y):
    string = np.dtypes.StringDType()
    path = write_zarr(tmp_path / "d.zarr", x=x, y=y.astype(string), ids=ids.astype(string))
    return make_params(dataset={"kind": "zarr", "path": path})


@pytest.mark.parametrize("source", ["npz", "parquet", "zarr"])
def test_string_ids_and_class_names_are_accepted_from_every_source(source, tmp_path, named):
    ids, x, y = named
    params = {
        "npz": lambda: _npz(tmp_path, x=x, y=y, ids=ids),
        "parquet": lambda: _parquet(tmp_path, ids.tolist(), x, y.tolist()),
        "zarr": lambda: _zarr(tmp_path, ids, x, y),
    }[source]()
    data = prepare_dataset(params).dataset
    assert data.class_names == ("Cat", "cat", "dog") and data.num_classes == 3
    assert data.user_id.tolist() == ids.tolist()
    np.testing.assert_array_equal(data.sample_id, [string_key(i) for i in ids])
    np.testing.assert_array_equal(data.label, np.searchsorted(["Cat", "cat", "dog"], y))
    assert data.shown_ids([0, 59]) == ["img-000100", "img-000159"]
    assert data.ids_of(data.sample_id[[3, 7]]) == ["img-000103", "img-000107"]
    assert data.ids_of([12345]) == ["key 12345"]  # a key the data does not hold


def test_every_source_gives_the_same_prepared_data(tmp_path, named):
    ids, x, y = named
    fingerprints = {
        prepare_dataset(_npz(tmp_path, x=x, y=y, ids=ids)).dataset.fingerprint,
        prepare_dataset(_parquet(tmp_path, ids.tolist(), x, y.tolist())).dataset.fingerprint,
        prepare_dataset(_zarr(tmp_path, ids, x, y)).dataset.fingerprint,
    }
    assert len(fingerprints) == 1


def test_the_key_of_a_string_id_is_a_stable_63_bit_hash():
    digest = hashlib.blake2b(b"img-000123", digest_size=8).digest()
    assert string_key("img-000123") == int.from_bytes(digest, "little") & (2**63 - 1)
    assert string_key("img-000123") == 6734619518984445709  # the same on every machine, every run
    assert 0 <= string_key("\u00e9t\u00e9") < 2**63


def test_integer_ids_are_their_own_keys():
    keys, user_id = sample_keys(np.array([5, 3, 9], dtype=np.int32), "src")
    assert keys.dtype == np.int64 and keys.tolist() == [5, 3, 9] and user_id is None


def test_two_strings_with_one_key_are_refused(monkeypatch):
    monkeypatch.setattr("pipeline.data.ids.string_key", lambda text: 7)
    with pytest.raises(SampleIdCollisionError, match="'a' and 'b' hash to the same 63-bit key 7; rename one"):
        sample_keys(np.array(["a", "b"]), "src")


def test_a_duplicate_string_id_is_named_as_the_user_wrote_it(tmp_path, named):
    ids, x, y = named
    ids = ids.copy()
    ids[9] = ids[4]
    with pytest.raises(DuplicateSampleIdError, match="img-000104 occur more than once"):
        prepare_dataset(_npz(tmp_path, x=x, y=y, ids=ids))


@pytest.mark.parametrize(
    "ids, match",
    [
        ([1.5] * 60, "integers or strings, got float64 values; an integer id column with nulls reads"),
        ([True] * 60, "integers or strings, got bool values; map them"),
    ],
)
def test_ids_that_are_neither_integers_nor_strings_say_what_to_do(ids, match, tmp_path, arrays):
    _, x, y = arrays
    with pytest.raises(SampleIdTypeError, match=match):
        prepare_dataset(_npz(tmp_path, x=x, y=y, ids=np.array(ids)))


def test_a_parquet_row_without_an_id_is_named(tmp_path, named):
    ids, x, y = named
    with pytest.raises(SampleIdTypeError, match=r"rows 2 have no id \(null\)"):
        prepare_dataset(_parquet(tmp_path, [None if i == 2 else v for i, v in enumerate(ids)], x, y.tolist()))


def test_class_names_with_missing_labels(tmp_path, named):
    ids, x, y = named
    labels = [None if i < 6 else v for i, v in enumerate(y.tolist())]  # Parquet null = no label
    data = prepare_dataset(_parquet(tmp_path, ids.tolist(), x, labels)).dataset
    assert (data.label[:6] == -1).all() and data.class_names == ("Cat", "cat", "dog")
    npz = prepare_dataset(_npz(tmp_path, x=x, y=np.where(np.arange(60) < 6, "", y), ids=ids)).dataset
    assert npz.fingerprint == data.fingerprint  # "" in a string array is the same as null


def test_a_num_classes_that_differs_from_the_names_is_refused(tmp_path, named):
    ids, x, y = named
    np.savez(tmp_path / "d.npz", x=x, y=y, ids=ids)
    params = make_params(dataset={"kind": "npz", "path": str(tmp_path / "d.npz"), "num_classes": 4})
    with pytest.raises(LabelTypeError, match="name 3 classes .*num_classes is 4; .*remove num_classes"):
        prepare_dataset(params)


def test_omit_classes_takes_class_names(tmp_path, named):
    ids, x, y = named
    np.savez(tmp_path / "d.npz", x=x, y=y, ids=ids)
    dataset = {"kind": "npz", "path": str(tmp_path / "d.npz")}
    data = prepare_dataset(make_params(dataset=dataset, omit_classes=["cat"])).dataset
    assert not ((data.split == TRAIN) & (data.label == 1)).any() and (data.label == 1).any()
    with pytest.raises(
        ClassNameError, match="prepare.omit_classes: no class named 'cow'; class names: Cat, cat, dog"
    ):
        prepare_dataset(make_params(dataset=dataset, omit_classes=["cow"]))


def test_string_ids_and_class_names_round_trip_through_data_prepared(tmp_path, named):
    ids, x, y = named
    data = prepare_dataset(_npz(tmp_path, x=x, y=y, ids=ids)).dataset
    write_prepared(data, tmp_path / "prepared")
    loaded = load_prepared(tmp_path / "prepared")
    assert loaded.fingerprint == data.fingerprint and loaded.class_names == data.class_names
    assert loaded.user_id.tolist() == data.user_id.tolist()
    np.testing.assert_array_equal(loaded.sample_id, data.sample_id)
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert meta["class_names"] == ["Cat", "cat", "dog"] and meta["sample_ids"] == "string"
    assert pq.read_schema(tmp_path / "prepared" / "index.parquet").field("user_id").type == pa.string()


def test_the_fingerprint_covers_string_ids_and_class_names(named, arrays):
    ids, x, y = named
    split = np.zeros(60, np.int8)
    label = np.searchsorted(["Cat", "cat", "dog"], y)
    keys = [string_key(i) for i in ids]
    base = make_prepared(keys, split, label, x, 3, ids, ("Cat", "cat", "dog"))
    renamed = ids.copy()
    renamed[0] = "img-x"
    assert (
        make_prepared(keys, split, label, x, 3, renamed, ("Cat", "cat", "dog")).fingerprint
        != base.fingerprint
    )
    assert make_prepared(keys, split, label, x, 3, ids, ("A", "cat", "dog")).fingerprint != base.fingerprint


def test_data_with_integer_ids_and_labels_hashes_as_before(arrays):
    ids, x, y = arrays
    split = np.zeros(60, np.int8)
    digest = hashlib.sha256(json.dumps({"rows": 60, "input_shape": [2, 3], "num_classes": 3}).encode())
    for array, dtype in ((ids, "<i8"), (split, "i1"), (y, "<i8"), (x, "<f4")):
        digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    assert make_prepared(ids, split, y, x, 3).fingerprint == digest.hexdigest()  # caches stay valid


# --- labels neither indices nor names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.array([0.0, 1.5, 2.0]), r"rows 1 hold fractions \(1.5\); map each row to one class: np.rint"),
        (np.array([True, False, True]), r"labels are true/false; map them to classes: y.astype\(int\)"),
        (np.zeros((3, 1), np.int64), r"labels have shape \[3, 1\]; .* y.reshape\(-1\)"),
        (np.eye(3), r"labels have shape \[3, 3\], several values per row; .* y.argmax\(axis=1\)"),
        (np.array([[0, 1], [1], None], dtype=object), r"labels of rows 0, 1 are list values, not one class"),
        (np.array(["a", 1, None], dtype=object), r"labels mix class names \(rows 0\) and numbers \(rows 1\)"),
        (np.array([True, None, False], dtype=object), r"labels are true/false"),
    ],
    ids=["fractions", "bools", "column", "one-hot", "nested", "mixed", "bools-with-nulls"],
)
def test_labels_neither_indices_nor_names_say_how_to_map_them(labels, match):
    with pytest.raises(LabelTypeError, match=match):
        parse_labels(labels, "src")


def test_labels_as_objects_with_nulls_parse_as_numbers_or_names():
    numbers = parse_labels(np.array([2, None, 0], dtype=object), "src")
    assert numbers.index.tolist() == [2, -1, 0] and numbers.class_names is None
    names = parse_labels(np.array([b"b", None, "a", ""], dtype=object), "src")
    assert names.index.tolist() == [1, -1, 0, -1] and names.class_names == ("a", "b")
