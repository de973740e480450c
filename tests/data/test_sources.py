"""The user's data through each adapter (Parquet, npz, Zarr), and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from pipeline.config import ParamsError
from pipeline.data.checks import (
    DatasetFileNotFoundError,
    DuplicateSampleIdError,
    InputShapeError,
    LabelRangeError,
    MissingColumnError,
    NonFiniteInputError,
    SplitValueError,
)
from pipeline.data.prepare import prepare_dataset
from pipeline.data.split import TRAIN, UNLABELLED_SPLIT
from tests.data.conftest import make_params


def write_parquet(path, ids, x, y, split=None, names=("id", "label", "input"), fixed=True):
    flat = x.reshape(len(x), -1)
    values = pa.array(flat.reshape(-1))
    inputs = (
        pa.FixedSizeListArray.from_arrays(values, flat.shape[1])
        if fixed
        else pa.array([row.tolist() for row in flat], pa.list_(pa.float32()))
    )
    columns = {
        names[0]: pa.array(ids),
        names[1]: pa.array([None if v < 0 else int(v) for v in y], pa.int64()),
        names[2]: inputs,
    }
    if split is not None:
        columns["split"] = pa.array(split)
    pq.write_table(pa.table(columns), path)
    return str(path)


def write_zarr(path, **arrays):
    group = zarr.open_group(str(path), mode="w")
    for name, array in arrays.items():
        group.create_array(name, data=array)
    return str(path)


def parquet_params(path, **dataset):
    return make_params(dataset={"kind": "parquet", "path": path, "input_shape": [2, 3], **dataset})


# --- each adapter -------------------------------------------------------------------------------


def test_parquet_adapter_reads_ids_labels_inputs_and_null_labels(tmp_path, arrays):
    ids, x, y = arrays
    y = y.copy()
    y[:6] = -1
    data = prepare_dataset(parquet_params(write_parquet(tmp_path / "d.parquet", ids, x, y))).dataset
    np.testing.assert_array_equal(data.sample_id, ids)
    np.testing.assert_array_equal(data.inputs, x)
    assert data.num_classes == 3 and data.input_shape == (2, 3)
    assert (data.split[:6] == UNLABELLED_SPLIT).all() and (data.label[:6] == -1).all()


def test_parquet_adapter_takes_configured_column_names_and_variable_lists(tmp_path, arrays):
    ids, x, y = arrays
    path = write_parquet(tmp_path / "d.parquet", ids, x, y, names=("key", "target", "pixels"), fixed=False)
    data = prepare_dataset(
        parquet_params(path, id_column="key", label_column="target", input_column="pixels")
    ).dataset
    np.testing.assert_array_equal(data.inputs, x)


def test_parquet_adapter_keeps_the_users_split(tmp_path, arrays):
    ids, x, y = arrays
    split = np.array(["train", "val", "test"] * 20)
    path = write_parquet(tmp_path / "d.parquet", ids, x, y, split=split)
    data = prepare_dataset(parquet_params(path, split_column="split")).dataset
    np.testing.assert_array_equal(data.split, np.tile([0, 1, 2], 20))


def test_parquet_without_input_shape_keeps_inputs_flat(tmp_path, arrays):
    ids, x, y = arrays
    path = write_parquet(tmp_path / "d.parquet", ids, x, y)
    data = prepare_dataset(make_params(dataset={"kind": "parquet", "path": path})).dataset
    assert data.input_shape == (6,)


def test_npz_adapter_reads_named_arrays_and_numbers_rows_without_ids(tmp_path, arrays):
    ids, x, y = arrays
    np.savez(tmp_path / "d.npz", images=x, targets=y)
    data = prepare_dataset(
        make_params(
            dataset={
                "kind": "npz",
                "path": str(tmp_path / "d.npz"),
                "x_array": "images",
                "y_array": "targets",
                "id_array": None,
            }
        )
    ).dataset
    np.testing.assert_array_equal(data.sample_id, np.arange(60))
    np.testing.assert_array_equal(data.inputs, x)
    assert (data.split == TRAIN).sum() == 3 * (20 - 4 - 3)


def test_npz_float_labels_with_nan_mean_no_label(tmp_path, arrays):
    ids, x, y = arrays
    y = y.astype(float)
    y[0] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=y, ids=ids)
    data = prepare_dataset(make_params(dataset={"kind": "npz", "path": str(tmp_path / "d.npz")})).dataset
    assert data.label[0] == -1 and data.split[0] == UNLABELLED_SPLIT


def test_zarr_adapter_reads_a_group_with_its_own_split(tmp_path, arrays):
    ids, x, y = arrays
    split = np.array(["train", "test", "val", "unlabelled"] * 15)
    y = np.where(split == "unlabelled", -1, y)
    path = write_zarr(tmp_path / "d.zarr", x=x, y=y, ids=ids, split=split.astype(np.dtypes.StringDType()))
    data = prepare_dataset(
        make_params(dataset={"kind": "zarr", "path": path, "split_array": "split"})
    ).dataset
    np.testing.assert_array_equal(data.sample_id, ids)
    np.testing.assert_array_equal(data.inputs, x)
    np.testing.assert_array_equal(data.split, np.tile([0, 2, 1, 3], 15))


def test_user_train_rows_without_label_become_unlabelled(tmp_path, arrays):
    ids, x, y = arrays
    y = y.copy()
    y[0] = -1
    np.savez(tmp_path / "d.npz", x=x, y=y, ids=ids, split=np.array(["train"] * 60))
    data = prepare_dataset(
        make_params(dataset={"kind": "npz", "path": str(tmp_path / "d.npz"), "split_array": "split"})
    ).dataset
    assert data.split[0] == UNLABELLED_SPLIT and (data.split[1:] == TRAIN).all()


# --- bad input ----------------------------------------------------------------------------------


def _npz(tmp_path, **arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    return make_params(dataset={"kind": "npz", "path": str(tmp_path / "d.npz"), "num_classes": 3})


def test_labels_out_of_range_name_rows_and_fix(tmp_path, arrays):
    ids, x, y = arrays
    y = y.copy()
    y[[4, 7]] = [3, -2]
    with pytest.raises(LabelRangeError, match=r"\[0, 3\).*rows 4, 7.*num_classes"):
        prepare_dataset(_npz(tmp_path, x=x, y=y, ids=ids))


def test_duplicate_sample_ids_are_named(tmp_path, arrays):
    ids, x, y = arrays
    ids = ids.copy()
    ids[[1, 2]] = ids[0]
    ids[10] = ids[11]
    with pytest.raises(DuplicateSampleIdError, match="100, 111"):
        prepare_dataset(_npz(tmp_path, x=x, y=y, ids=ids))


def test_missing_file_names_the_params_key(tmp_path):
    with pytest.raises(DatasetFileNotFoundError, match="prepare.dataset.path"):
        prepare_dataset(make_params(dataset={"kind": "parquet", "path": str(tmp_path / "none.parquet")}))


def test_missing_parquet_column_lists_the_columns_present(tmp_path, arrays):
    ids, x, y = arrays
    path = write_parquet(tmp_path / "d.parquet", ids, x, y)
    with pytest.raises(MissingColumnError, match=r"'pixels'.*\['id', 'label', 'input'\]"):
        prepare_dataset(parquet_params(path, input_column="pixels"))


def test_missing_zarr_array_lists_the_arrays_present(tmp_path, arrays):
    ids, x, y = arrays
    path = write_zarr(tmp_path / "d.zarr", x=x, labels=y)
    with pytest.raises(MissingColumnError, match=r"'y', 'ids'.*\['labels', 'x'\]"):
        prepare_dataset(make_params(dataset={"kind": "zarr", "path": path}))


def test_nan_inputs_name_the_rows(tmp_path, arrays):
    ids, x, y = arrays
    x = x.copy()
    x[5, 1, 2] = np.nan
    x[9, 0, 0] = np.inf
    with pytest.raises(NonFiniteInputError, match="rows 5, 9"):
        prepare_dataset(_npz(tmp_path, x=x, y=y, ids=ids))


def test_inputs_of_different_lengths_are_refused(tmp_path, arrays):
    ids, x, y = arrays
    rows = [row.reshape(-1).tolist() for row in x]
    rows[3] = rows[3][:-1]
    table = pa.table({"id": ids, "label": y, "input": pa.array(rows, pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(InputShapeError, match=r"different sizes.*rows \[3\]"):
        prepare_dataset(make_params(dataset={"kind": "parquet", "path": str(tmp_path / "d.parquet")}))


def test_input_shape_that_does_not_fit_is_refused(tmp_path, arrays):
    ids, x, y = arrays
    path = write_parquet(tmp_path / "d.parquet", ids, x, y)
    with pytest.raises(InputShapeError, match=r"6 values but input_shape \[4, 4\]"):
        prepare_dataset(parquet_params(path, input_shape=[4, 4]))


def test_unknown_split_values_are_refused(tmp_path, arrays):
    ids, x, y = arrays
    path = write_parquet(tmp_path / "d.parquet", ids, x, y, split=np.array(["train", "validation"] * 30))
    with pytest.raises(SplitValueError, match="validation"):
        prepare_dataset(parquet_params(path, split_column="split"))


def test_a_misspelt_dataset_key_is_a_params_error():
    with pytest.raises(ParamsError, match="prepare.dataset.input_colum.*input_column"):
        make_params(dataset={"kind": "parquet", "path": "x", "input_colum": "x"})
