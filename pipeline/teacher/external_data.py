"""ONNX models whose weights lie in external data files beside the .onnx (models over 2 GB).

Protobuf caps one file at 2 GiB, so a large model keeps its tensors in separate files that the
.onnx names by a location relative to its own directory (`model.onnx.data`). Whoever copies or
hashes a teacher must take those files along: `external_data_files` lists them, refusing a
location that leaves the model's directory (absolute, `..`, a symlink out) or a file that is not
there, with the fix; `teacher_sha256` (pipeline/teacher/session.py) hashes them with the .onnx.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import onnx

from pipeline.errors import DistilleryError


class ExternalDataError(DistilleryError):
    """A model's external data file is missing or lies outside the model's directory."""


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers, sparse initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def external_data_locations(model: onnx.ModelProto) -> list[str]:
    """The external data locations (as written in the model, relative to its directory) of every
    tensor stored outside the .onnx, unique, in first-use order; [] for a single-file model."""
    locations: dict[str, None] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            locations[entries.get("location", "")] = None
    return list(locations)


def external_data_files(model: onnx.ModelProto, path: str | Path) -> list[Path]:
    """The external data files of the model read from `path`, checked: each location is relative,
    stays inside the model's directory and exists. Raises ExternalDataError naming the file and the fix."""
    path = Path(path)
    root = path.parent.resolve()
    files = []
    for location in external_data_locations(model):
        parts = PurePosixPath(location.replace("\\", "/")).parts
        inside = location and not PurePosixPath(location).is_absolute() and ".." not in parts
        target = path.parent / location
        if not inside or not target.resolve().is_relative_to(root):
            raise ExternalDataError(
                f"{path}: its weights are in the external data file {location!r}, outside the model's "
                f"directory; keep the data beside the .onnx: onnx.save(onnx.load({str(path)!r}), path, "
                f"save_as_external_data=True, location={path.name + '.data'!r})"
            )
        if not target.is_file():
            raise ExternalDataError(
                f"{path}: its weights are in the external data file {location!r}, which is missing "
                f"({target}); copy it beside {path.name} (torch.onnx.export writes both files), or "
                f"re-export the model"
            )
        files.append(target)
    return files
