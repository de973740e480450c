"""The prepared data's fingerprint, computed while the rows stream by (docs/data_and_teacher.md §6).

The cache compares it to refuse a cache built on other data, so it covers the index (ids, splits,
labels, the user's string ids and class names), every field's bytes and the read-time transforms (a
changed normalisation makes every cache stale). Data of one float32 field named `input` and no
transforms (the digits default, and every format-1 dataset) hashes exactly as format 1 did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

from pipeline.data.fields import FieldSpec, Ragged

LEGACY_FIELD = "input"


def is_legacy(fields: Mapping[str, FieldSpec], transforms: Mapping[str, list]) -> bool:
    """True for the format-1 shape of data: one fixed float32 field `input`, no transforms."""
    spec = fields.get(LEGACY_FIELD)
    return (
        len(fields) == 1
        and spec is not None
        and not spec.variable
        and spec.dtype == "float32"
        and not any(transforms.values())
    )


class Fingerprinter:
    """sha256 of the index, then the fields' bytes as `update` sees them in row order.

    Format 1 (`is_legacy`): header {rows, input_shape, num_classes[, class_names]}, then the ids
    (<i8), split codes (i1), labels (<i8), the inputs (<f4, C order), then the user's string ids
    (UTF-8, each + NUL). Otherwise the header names every field ({dtype, shape}) and the transforms,
    and each field (sorted by name) contributes the sha256 of its little-endian bytes (a variable
    field: of its row lengths <i8, then of its values) in place of the inputs.
    """

    def __init__(
        self,
        sample_id: np.ndarray,
        split: np.ndarray,
        label: np.ndarray,
        num_classes: int,
        fields: Mapping[str, FieldSpec],
        transforms: Mapping[str, list] | None = None,
        user_id: np.ndarray | None = None,
        class_names=None,
    ):
        transforms = {k: v for k, v in (transforms or {}).items() if v}
        self.legacy = is_legacy(fields, transforms)
        self.fields = dict(sorted(fields.items()))
        self.user_id = user_id
        header: dict = {"rows": len(sample_id)}
        if self.legacy:
            header["input_shape"] = list(fields[LEGACY_FIELD].shape)
        else:
            header["fields"] = {name: spec.to_json() for name, spec in self.fields.items()}
        header["num_classes"] = int(num_classes)
        if class_names is not None:
            header["class_names"] = list(class_names)
        if transforms:
            header["transforms"] = transforms
        self.digest = hashlib.sha256(json.dumps(header, sort_keys=not self.legacy).encode())
        for array, dtype in ((sample_id, "<i8"), (split, "i1"), (label, "<i8")):
            self.digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
        self.parts = {name: (hashlib.sha256(), hashlib.sha256()) for name in self.fields}

    def update(self, chunk: Mapping[str, np.ndarray | Ragged]) -> None:
        """The next rows of every field, in row order (values in their stored dtype)."""
        if self.legacy:
            self.digest.update(np.ascontiguousarray(chunk[LEGACY_FIELD], dtype="<f4").tobytes())
            return
        for name, spec in self.fields.items():
            lengths_hash, values_hash = self.parts[name]
            values = chunk[name]
            little = np.dtype(spec.dtype).newbyteorder("<")
            if isinstance(values, Ragged):
                lengths_hash.update(np.ascontiguousarray(values.lengths(), "<i8").tobytes())
                values = values.values[values.offsets[0] : values.offsets[-1]]
            values_hash.update(np.ascontiguousarray(values, dtype=little).tobytes())

    def hexdigest(self) -> str:
        """The fingerprint (call once every row went through `update`)."""
        if not self.legacy:
            for name, spec in self.fields.items():
                lengths_hash, values_hash = self.parts[name]
                self.digest.update((lengths_hash.digest() if spec.variable else b"") + values_hash.digest())
        if self.user_id is not None:
            for text in self.user_id.tolist():
                self.digest.update(text.encode("utf-8") + b"\0")
        return self.digest.hexdigest()
