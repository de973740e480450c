"""data/prepared on disk: round trip, fingerprint, atomic replacement, refusal of tampered files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data.prepared import PreparedDataError, load_prepared, make_prepared, write_prepared


def _data(n=40, shape=(1, 4, 4)):
    rng = np.random.default_rng(1)
    split = np.array(["train", "val", "test", "unlabelled"] * (n // 4))
    label = rng.integers(0, 5, n)
    label[split == "unlabelled"] = -1
    return make_prepared(np.arange(n) * 3, split, label, rng.random((n, *shape)), num_classes=5)


def test_prepared_data_round_trips_exactly(tmp_path):
    data = _data()
    write_prepared(data, tmp_path / "prepared")
    loaded = load_prepared(tmp_path / "prepared")
    for name in ("sample_id", "split", "label", "inputs"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(data, name))
        assert getattr(loaded, name).dtype == getattr(data, name).dtype
    assert loaded.num_classes == 5 and loaded.fingerprint == data.fingerprint
    assert loaded.input_shape == (1, 4, 4)


def test_meta_json_holds_shape_classes_counts_and_fingerprint(tmp_path):
    data = _data()
    write_prepared(data, tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["input_shape"] == [1, 4, 4] and meta["num_classes"] == 5
    assert meta["fingerprint"] == data.fingerprint
    assert sum(meta["class_counts"]["unlabelled"].values()) == 10
    assert set(meta["class_counts"]["unlabelled"]) == {"-1"}


@pytest.mark.parametrize("field", ["sample_id", "split", "label", "inputs"])
def test_fingerprint_changes_with_any_column(field):
    data = _data()
    arrays = {name: getattr(data, name).copy() for name in ("sample_id", "split", "label", "inputs")}
    arrays[field].reshape(-1)[1] += 1
    changed = make_prepared(**arrays, num_classes=5)
    assert changed.fingerprint != data.fingerprint


def test_rewrite_replaces_the_directory_and_leaves_no_scratch(tmp_path):
    write_prepared(_data(40), tmp_path / "prepared")
    (tmp_path / "prepared" / "stale.txt").write_text("old")
    write_prepared(_data(20), tmp_path / "prepared")
    assert len(load_prepared(tmp_path / "prepared")) == 20
    assert not (tmp_path / "prepared" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_load_refuses_files_that_do_not_match_meta(tmp_path):
    write_prepared(_data(), tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["fingerprint"] = "0" * 64
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PreparedDataError, match="does not match"):
        load_prepared(tmp_path)


def test_load_of_a_missing_directory_says_to_run_prepare(tmp_path):
    with pytest.raises(PreparedDataError, match="distillery prepare"):
        load_prepared(tmp_path / "nothing")


def test_rows_of_a_split_can_skip_unlabelled_rows():
    data = make_prepared([1, 2, 3], ["train", "train", "val"], [0, -1, 1], np.zeros((3, 2)), 2)
    assert data.rows("train").tolist() == [0, 1]
    assert data.rows("train", labelled_only=True).tolist() == [0]
