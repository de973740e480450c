"""The cache through the real command line (issue 12): teacher outputs that do not follow the batch,
two runs at once, an output name that is a path, what killed runs leave on disk, and a damaged or
lying cache.json / zarr.json. Each is one line naming the thing and the fix, and loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from stages.cli import main
from tests.cache.helpers import tree_bytes
from tests.reliability.conftest import refused
from tests.reliability.project import INPUT_SHAPE, NUM_CLASSES, copy_project, stage_argv, write_params

ROOT = Path(__file__).resolve().parents[2]
FLAT = int(np.prod(INPUT_SHAPE))


def _teacher(path: Path, nodes: list, outputs: dict[str, str]) -> Path:
    """A teacher: flat = Flatten(input), logits = flat W, embed = tanh(flat V), then `nodes`;
    `outputs` maps each graph output to the tensor it returns (shapes left undeclared)."""
    rng = np.random.default_rng(0)
    body = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["logits_raw"]),
        helper.make_node("MatMul", ["flat", "V"], ["embed_pre"]),
        helper.make_node("Tanh", ["embed_pre"], ["embed_raw"]),
        *nodes,
        *[helper.make_node("Identity", [tensor], [name]) for name, tensor in outputs.items()],
    ]
    initializers = [
        numpy_helper.from_array(rng.normal(size=(FLAT, NUM_CLASSES)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=(FLAT, 8)).astype(np.float32), "V"),
        numpy_helper.from_array(np.array([1, FLAT], np.int64), "fixed_shape"),
    ]
    graph = helper.make_graph(
        body,
        "broken_teacher",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *INPUT_SHAPE])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _mean_over_batch(out: str, source: str, keepdims: int = 1, axes=(0,)) -> object:
    return helper.make_node("ReduceMean", [source], [out], axes=list(axes), keepdims=keepdims)


BROKEN_TEACHERS = {
    "a tap reduced over the batch (its batch size is 1)": (
        [_mean_over_batch("embed_mean", "embed_raw")],
        {"logits": "logits_raw", "embed": "embed_mean"},
        "'embed' has shape [1, 8] for a batch of 2",
    ),
    "1-D logits": (
        [helper.make_node("ReduceMax", ["logits_raw"], ["logits_1d"], axes=[1], keepdims=0)],
        {"logits": "logits_1d", "embed": "embed_raw"},
        "'logits' has shape [2]",
    ),
    "logits of batch 2B": (
        [helper.make_node("Concat", ["logits_raw", "logits_raw"], ["logits_2b"], axis=0)],
        {"logits": "logits_2b", "embed": "embed_raw"},
        "'logits' has shape [4, 4] for a batch of 2",
    ),
    "a tap with the batch not first": (
        [helper.make_node("Transpose", ["embed_raw"], ["embed_t"], perm=[1, 0])],
        {"logits": "logits_raw", "embed": "embed_t"},
        "'embed' has shape [8, 2] for a batch of 2",
    ),
    "a scalar tap": (
        [_mean_over_batch("embed_scalar", "embed_raw", keepdims=0, axes=(0, 1))],
        {"logits": "logits_raw", "embed": "embed_scalar"},
        "'embed' has shape [] for a batch of 2",
    ),
    "a tap reshaped to a fixed [1, 16]": (
        [
            _mean_over_batch("flat_mean", "flat"),
            helper.make_node("Reshape", ["flat_mean", "fixed_shape"], ["flat_fixed"]),
        ],
        {"logits": "logits_raw", "embed": "flat_fixed"},
        "'embed' has shape [1, 16] for a batch of 2",
    ),
    "a model that reshapes its batch to a fixed [1, 16] (fails for other batch sizes)": (
        [helper.make_node("Reshape", ["flat", "fixed_shape"], ["flat_fixed"])],
        {"logits": "logits_raw", "embed": "flat_fixed"},
        "failed on a batch of 2 rows",
    ),
}


@pytest.mark.parametrize(
    "item",
    list(BROKEN_TEACHERS),
    ids=[
        "batch-mean",
        "1d-logits",
        "batch-2b",
        "batch-not-first",
        "scalar-tap",
        "fixed-1x16",
        "reshape-fails",
    ],
)
def test_teacher_outputs_that_do_not_follow_the_batch_are_refused_before_anything_is_written(
    item, tmp_path, built_project, capsys, record
):
    nodes, outputs, expected = BROKEN_TEACHERS[item]
    project = copy_project(built_project, tmp_path / "p")
    _teacher(project / "teacher" / "model.onnx", nodes, outputs)
    before = tree_bytes(project / "cache")
    line = refused(capsys, stage_argv(project, "cache"))
    assert "TeacherOutputError" in line and expected in line, line
    assert str(project / "teacher" / "model.onnx") in line
    assert tree_bytes(project / "cache") == before  # the old cache is intact
    assert not (project / "scratch" / "cache" / "store").exists()  # refused before the scratch store
    record(f"teacher outputs: {item}, at `distillery cache`", line)
    if item.startswith("a tap reduced"):  # the teacher stage catches it up front, too
        params = write_params(
            tmp_path / "teacher.yaml",
            {"teacher": {"onnx": str(project / "teacher" / "model.onnx"), "provider": "cpu"}},
        )
        argv = ["teacher", "--params", str(params), "--prepared", str(project / "prepared")]
        line = refused(capsys, [*argv, "--out", str(tmp_path / "adopted")])
        assert "TeacherOutputError" in line and expected in line
        assert not (tmp_path / "adopted" / "model.onnx").exists()
        record(f"teacher outputs: {item}, at `distillery teacher`", line)


def test_a_teacher_output_whose_shape_changes_on_a_later_batch_is_refused_naming_the_rows(tmp_path):
    from pipeline.cache.teacher_outputs import TeacherOutputError
    from tests.cache.helpers import FakeTeacher, build, make_rows

    class ShrinksLater(FakeTeacher):
        def run(self, inputs):
            outputs = super().run(inputs)
            if inputs[0, 0] == make_rows().inputs[42, 0]:
                outputs["embed"] = outputs["embed"][:1]  # a batch-dependent bug, on rows 42..51 only
            return outputs

    with pytest.raises(TeacherOutputError, match=r"rows 42\.\.51\): output 'embed' has shape \[1, 5\]"):
        build(tmp_path, teacher=ShrinksLater())


def _hold_lock(directory: Path) -> subprocess.Popen:
    """A process holding `output_lock(directory)` until killed."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pipeline.io import output_lock\n"
            f"with output_lock({str(directory)!r}, 'distillery cache'):\n"
            "    print('held', flush=True)\n    time.sleep(600)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("held", ["out", "scratch"])
def test_a_second_cache_run_at_once_is_refused_and_the_cache_kept(
    held, tmp_path, built_project, capsys, record
):
    project = copy_project(built_project, tmp_path / "p")
    before = tree_bytes(project / "cache" / "store")
    argv = stage_argv(project, "cache")
    if held == "scratch":  # another output, the same scratch: as a chain_cache run with --scratch left out
        argv[argv.index("--out") + 1] = str(project / "chains" / "c1")
    holder = _hold_lock(project / "cache" if held == "out" else project / "scratch" / "cache")
    try:
        line = refused(capsys, argv)
    finally:
        holder.kill()
        holder.wait()
    assert "OutputBusyError" in line and "distillery cache" in line
    assert tree_bytes(project / "cache" / "store") == before
    record(f"two `distillery cache` at once (the same {held} directory)", line)


def test_a_store_marked_complete_without_its_arrays_is_refused(tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    store = project / "cache" / "store"
    for child in store.iterdir():  # what two racing runs left: only cache.json, marked complete
        if child.is_dir():
            shutil.rmtree(child)
    line = refused(capsys, stage_argv(project, "train"))
    assert "IncompleteCacheError" in line and "marked complete but its store lacks the arrays" in line
    record("a store whose cache.json is marked complete but holds no arrays, at `distillery train`", line)


def test_finalize_refuses_to_mark_a_store_complete_without_its_arrays(tmp_path):
    from pipeline.cache.build import create_store, finalize, open_build
    from pipeline.cache.format import IncompleteCacheError
    from pipeline.cache.shards import write_shard
    from tests.cache.helpers import FakeTeacher, make_rows, small_params

    rows, teacher = make_rows(), FakeTeacher()
    build = create_store(tmp_path / "scratch", rows, teacher, "t" * 64, rows.fingerprint, small_params())
    for shard in range(build.layout.num_shards):
        write_shard(build, shard, teacher)
    shutil.rmtree(build.store_dir / "logits")  # another process deleted the arrays under it
    with pytest.raises(IncompleteCacheError, match=r"lacks the arrays \['logits'\]"):
        finalize(open_build(tmp_path / "scratch", rows), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert json.loads((build.store_dir / "cache.json").read_text())["complete"] is False


def test_a_teacher_output_named_as_a_path_never_leaves_the_store(tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["cache"].update(store="parquet", in_memory_max_mb=0)  # the Parquet store and the mmap reader
    write_params(project / "params.yaml", params)
    escape = "../../../../escaped"
    _teacher(project / "teacher" / "model.onnx", [], {"logits": "logits_raw", escape: "embed_raw"})
    line = refused(capsys, stage_argv(project, "cache"))
    assert "TeacherOutputError" in line and repr(escape) in line and "teacher.tap_names" in line
    assert not list(tmp_path.rglob("escaped*")) and not list(tmp_path.parent.glob("escaped*"))
    record("a teacher output named `../../../../escaped` (Parquet store, memory-mapped reader)", line)


def test_a_cache_json_naming_an_array_outside_the_store_is_refused(tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    path = project / "cache" / "store" / "cache.json"
    metadata = json.loads(path.read_text())
    metadata["layout"]["feature_shapes"]["../../escaped"] = [8]
    path.write_text(json.dumps(metadata))
    line = refused(capsys, stage_argv(project, "train"))
    assert "CacheCorruptError" in line and str(path) in line and "dvc repro cache" in line
    assert not list(tmp_path.rglob("escaped*"))
    record("a cache.json naming a tap `../../escaped`, at `distillery train`", line)


def test_what_killed_runs_left_is_cleaned_up_by_the_next_run(tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    planted = [
        project / "cache" / ".old-store.4194303",  # SIGKILL between replace_dir's two renames
        project / "cache" / ".tmp-plots-k1ll3d",  # the plots' staging directory
        project / "cache" / ".tmp-report.json.x8a2k",  # a 0-byte atomic write
        project / "scratch" / "cache" / "progress" / ".tmp-shard-000001.json.q9",
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.startswith((".old-", ".tmp-plots")):
            (path / "logits").mkdir(parents=True)
            (path / "logits" / "zarr.json").write_text("{}")
        else:
            path.write_bytes(b"")
    assert main(stage_argv(project, "cache")) == 0
    assert [p for p in planted if p.exists()] == []
    record(
        "leftovers of killed cache runs (`.old-store.<pid>`, `.tmp-*` files and directories in the "
        "output and scratch directories)",
        "no error: the next `distillery cache` deletes them (it holds the output's lock, so no one else "
        "is writing there)",
    )


def test_memory_mapped_copies_of_older_builds_are_deleted(tmp_path, built_project, capsys, record):
    from pipeline.cache.mmap_store import MARKER_FILE

    project = copy_project(built_project, tmp_path / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["cache"]["in_memory_max_mb"] = 0  # every open goes through the memory-mapped copy
    write_params(project / "params.yaml", params)
    sidecars = project / ".scratch" / "mmap"
    assert main(stage_argv(project, "cache")) == 0
    (first,) = [p for p in sidecars.iterdir() if (p / MARKER_FILE).exists()]
    other = sidecars / ("0" * 32)  # another store's copy (a chain cache): kept
    shutil.copytree(first, other)
    marker = json.loads((other / MARKER_FILE).read_text())
    (other / MARKER_FILE).write_text(json.dumps({**marker, "store": "../../chains/c1/store"}))
    dead = sidecars / f"{first.name}.building-4194303-abc"  # a build killed half-way
    dead.mkdir()
    params["cache"]["logits_dtype"] = "float32"  # a rebuild: a new cache, a new copy
    write_params(project / "params.yaml", params)
    assert main(stage_argv(project, "cache")) == 0
    left = sorted(p.name for p in sidecars.iterdir())
    assert first.name not in left and dead.name not in left and other.name in left and len(left) == 2
    record(
        "a memory-mapped copy (data/.scratch/mmap) of an older build of the same cache",
        "no error: the next open of the cache deletes it (copies of other caches are kept)",
    )


def _damage(project: Path, how: str) -> Path:
    store = project / "cache" / "store"
    if how == "cache.json claiming 10^12 rows":
        path = store / "cache.json"
        metadata = json.loads(path.read_text())
        metadata["layout"]["num_rows"] = 10**12
        path.write_text(json.dumps(metadata))
    elif how == "truncated cache.json":
        path = store / "cache.json"
        path.write_bytes(path.read_bytes()[:200])
    elif how == "cache.json without its layout":
        path = store / "cache.json"
        metadata = json.loads(path.read_text())
        del metadata["layout"]
        path.write_text(json.dumps(metadata))
    elif how == "truncated zarr.json":
        path = store / "logits" / "zarr.json"
        path.write_bytes(path.read_bytes()[:50])
    else:  # a zarr.json that is JSON but not an array's metadata
        path = store / "features" / "embed" / "zarr.json"
        path.write_text("[1, 2, 3]")
    return path


DAMAGE = [
    "cache.json claiming 10^12 rows",
    "truncated cache.json",
    "cache.json without its layout",
    "truncated zarr.json",
    "zarr.json that is not an array's",
]


@pytest.mark.parametrize(
    "how", DAMAGE, ids=["rows-1e12", "truncated", "no-layout", "zarr-truncated", "zarr-list"]
)
def test_a_damaged_cache_json_or_zarr_json_is_one_line_naming_the_file(
    how, tmp_path, built_project, capsys, record
):
    project = copy_project(built_project, tmp_path / "p")
    path = _damage(project, how)
    line = refused(capsys, stage_argv(project, "train"))
    assert "CacheCorruptError" in line and str(path) in line and "dvc repro cache" in line, line
    assert not (project / "train" / "kd" / "seed_0" / "checkpoint.json").exists()
    record(f"{how}, at `distillery train`", line)
