"""Streamed sources round-trip through `distillery prepare`'s writer: Parquet with several (ragged)
columns, a Hugging Face `save_to_disk` directory, an image folder; and their one-line refusals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.dataset import open_prepared
from pipeline.data.fields import FieldSpec
from pipeline.data.prepare import write_prepared_outputs
from pipeline.data.streamed_sources import EmptyClassError, ImageDecodeError
from tests.data.conftest import make_params

N = 40


def _tokens(rng):
    return [rng.integers(1, 50, size=int(k)).tolist() for k in rng.integers(2, 12, size=N)]


def _prepare(tmp_path, dataset, **extra):
    write_prepared_outputs(make_params(dataset=dataset, **extra), tmp_path / "out", rows_per_chunk=7)
    return open_prepared(tmp_path / "out")


def test_parquet_with_several_columns_keeps_dtypes_and_ragged_rows(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(N, 2, 3), dtype=np.uint8)
    tokens = _tokens(rng)
    table = pa.table(
        {
            "id": [f"row-{i}" for i in range(N)],
            "label": np.arange(N) % 2,
            "pixels": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 6),
            "input_ids": pa.array(tokens, pa.list_(pa.int64())),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=9)
    source = {
        "kind": "parquet",
        "path": str(tmp_path / "d.parquet"),
        "fields": ["pixels", "input_ids"],
        "field_shapes": {"pixels": [2, 3]},
    }
    data = _prepare(tmp_path, source, transforms={"pixels": [{"kind": "scale", "factor": 0.5}]})
    assert data.fields == {"pixels": FieldSpec("uint8", (2, 3)), "input_ids": FieldSpec("int64", (None,))}
    position = {uid: i for i, uid in enumerate(data.user_id.tolist())}
    rows = np.array([position["row-3"], position["row-30"]])
    got = data.read(rows)
    np.testing.assert_allclose(got["pixels"], pixels[[3, 30]] * 0.5)
    assert [got["input_ids"].row(i).tolist() for i in range(2)] == [tokens[3], tokens[30]]


def test_a_hugging_face_save_to_disk_dataset_dict_keeps_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    tokens = _tokens(rng)
    part = {
        "input_ids": tokens[:30],
        "attention_mask": [[1] * len(t) for t in tokens[:30]],
        "label": (np.arange(30) % 3).tolist(),
    }
    test = {
        "input_ids": tokens[30:],
        "attention_mask": [[1] * len(t) for t in tokens[30:]],
        "label": (np.arange(10) % 3).tolist(),
    }
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(part), "test": datasets.Dataset.from_dict(test)}
    ).save_to_disk(str(tmp_path / "hf"))
    data = _prepare(
        tmp_path, {"kind": "hf_disk", "path": str(tmp_path / "hf"), "fields": ["input_ids", "attention_mask"]}
    )
    stored = datasets.load_from_disk(str(tmp_path / "hf"))["train"].data.table.schema.field("input_ids").type
    assert data.fields["input_ids"] == FieldSpec(str(np.dtype(stored.value_type.to_pandas_dtype())), (None,))
    assert set(data.fields) == {"input_ids", "attention_mask"}
    assert len(data.rows("test")) == 10
    got = data.read(data.rows("test")[:2], ["input_ids"])["input_ids"]
    assert got.row(0).tolist() == tokens[30]


def _image_folder(tmp_path, empty_class=False, broken=False):
    from PIL import Image

    rng = np.random.default_rng(2)
    for name in ("cat", "dog"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(0 if empty_class and name == "dog" else 12):
            Image.fromarray(rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / name / f"{i}.png"
            )
    if broken:
        (tmp_path / "imgs" / "cat" / "bad.png").write_bytes(b"not a png")
    return {"kind": "image_folder", "path": str(tmp_path / "imgs"), "size": [4, 4]}


def test_an_image_folder_becomes_uint8_pixels_with_class_names(tmp_path):
    data = _prepare(tmp_path, _image_folder(tmp_path))
    assert data.fields == {"pixels": FieldSpec("uint8", (3, 4, 4))} and data.class_names == ("cat", "dog")
    assert data.read([0], transform=False)["pixels"].dtype == np.uint8 and len(data) == 24
    assert "cat/0.png" in data.user_id.tolist()


def test_an_image_that_fails_to_decode_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"imgs/cat/bad.png: cannot be decoded"):
        _prepare(tmp_path, _image_folder(tmp_path, broken=True))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_an_empty_class_folder_is_one_line(tmp_path):
    with pytest.raises(EmptyClassError, match=r"class 'dog' has no .png/.jpg/.jpeg image"):
        _prepare(tmp_path, _image_folder(tmp_path, empty_class=True))


def _hf_images(tmp_path, broken_row: int | None = None):
    """A save_to_disk Dataset of 16 RGB images (an `Image` feature, PNG bytes inside the Arrow file)
    of 6 x 5 pixels, labels 0/1; returns the images as (N, 3, 6, 5) uint8."""
    import io

    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(16, 6, 5, 3), dtype=np.uint8)
    encoded = []
    for i, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append({"bytes": b"not a png" if i == broken_row else buffer.getvalue(), "path": None})
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    rows = {"img": encoded, "label": (np.arange(16) % 2).tolist()}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    return pixels.transpose(0, 3, 1, 2)


def test_a_hugging_face_image_column_is_decoded_to_uint8_pixels_of_the_size_asked(tmp_path):
    pixels = _hf_images(tmp_path)
    source = {"kind": "hf_disk", "path": str(tmp_path / "hf"), "fields": ["img"]}
    data = _prepare(tmp_path, {**source, "image_size": [6, 5]})  # the stored size: decoded exactly
    assert data.fields == {"img": FieldSpec("uint8", (3, 6, 5))}
    got = data.read(np.arange(16), ["img"], transform=False)["img"]
    order = np.argsort(data.user_id.astype(np.int64)) if data.user_id is not None else np.arange(16)
    np.testing.assert_array_equal(got[order], pixels)
    smaller = _prepare(tmp_path / "grey", {**source, "image_size": [4, 4], "image_mode": "L"})
    assert smaller.fields == {"img": FieldSpec("uint8", (1, 4, 4))}


def test_a_hugging_face_image_column_without_a_size_or_with_a_broken_image_is_one_line(tmp_path):
    from pipeline.data.streamed_sources import FieldColumnError

    _hf_images(tmp_path, broken_row=9)
    source = {"kind": "hf_disk", "path": str(tmp_path / "hf"), "fields": ["img"]}
    with pytest.raises(FieldColumnError, match=r"column 'img' holds images .*image_size: \[height, width\]"):
        _prepare(tmp_path, source)
    with pytest.raises(ImageDecodeError, match=r"column 'img' row 9: cannot be decoded as an image"):
        _prepare(tmp_path, {**source, "image_size": [6, 5]})
    assert not (tmp_path / "out").exists()
