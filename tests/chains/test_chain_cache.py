"""Chains of teachers: an exported student is the teacher of the next cache, with no new code.

The cache stage takes any ONNX file with input `input` and output `logits` (+ taps); a student's
export has exactly that. Also: the stage's sharded build (`cluster.shard_cache`) writes the same
bytes as the single-process build.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import yaml

from pipeline.cache.open import open_cache
from tests.cache.helpers import tree_bytes

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def chain_project(tmp_path_factory):
    """(root, prepared_dir, root-teacher cache store, trained + exported assistant ONNX)."""
    from pipeline.export.params import ExportParams
    from pipeline.export.run import export_student_dir
    from pipeline.train.run import train_student
    from tests.cluster.student_project import students, write_project

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("chain")
    prepared_dir, cache_dir = write_project(root)
    assistant = students(cache_dir, names=("kd",))["kd"]
    train_student(
        "assistant",
        assistant,
        prepared_dir,
        root / "train" / "assistant",
        root / "scratch" / "assistant",
        progress=False,
    )
    export_student_dir(root / "train" / "assistant", root / "export", ExportParams())
    return root, prepared_dir, cache_dir, root / "export" / "assistant" / "model.onnx"


def _write_params(path, **cluster):
    path.write_text(
        yaml.safe_dump(
            {
                "cache": {"rows_per_chunk": 32, "chunks_per_shard": 2, "batch_size": 48},
                "teacher": {"provider": "cpu", "intra_op_threads": 1},
                "cluster": {"kind": "local", "threads_per_worker": 1, "memory": "2GB", **cluster},
            }
        )
    )
    return path


def _run_cache_stage(root, prepared_dir, teacher, out, params):
    from stages import cache as cache_stage

    args = argparse.Namespace(
        params=str(params),
        prepared=str(prepared_dir),
        teacher=str(teacher),
        out=str(out),
        scratch=str(out.parent / f"{out.name}-scratch"),
        no_progress=True,
    )
    assert cache_stage.run(args) == 0
    return out


def test_an_exported_student_is_the_teacher_of_a_chain_cache(chain_project, tmp_path):
    from pipeline.data.prepared import load_prepared
    from pipeline.students.trained import load_trained_student
    from pipeline.teacher.session import teacher_sha256

    root, prepared_dir, _, assistant_onnx = chain_project
    out = _run_cache_stage(
        root, prepared_dir, assistant_onnx, tmp_path / "chain", _write_params(tmp_path / "params.yaml")
    )
    prepared = load_prepared(prepared_dir)
    cache = open_cache(out / "store", prepared.fingerprint, teacher_sha256(assistant_onnx))
    assert len(cache) == len(prepared)
    assert set(cache.schema.feature_shapes) == {"hidden1", "hidden2", "embed"}  # the student's taps
    # The cached logits are the assistant's own (torch), to the stored float16.
    student = load_trained_student(root / "train" / "assistant" / "seed_0")
    rows = np.arange(len(cache))
    order = np.argsort(prepared.sample_id)
    position = order[np.searchsorted(prepared.sample_id, np.asarray(cache.sample_id), sorter=order)]
    with torch.no_grad():
        expected = student(torch.from_numpy(prepared.inputs[position])).logits.numpy()
    np.testing.assert_allclose(cache.batch(rows).logits.numpy(), expected, rtol=2e-3, atol=2e-3)
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"] == str(assistant_onnx)
    assert 0.0 <= report["teacher_accuracy"]["test"] <= 1.0


def test_a_student_trains_from_the_chain_cache(chain_project, tmp_path):
    from pipeline.train.run import train_student
    from tests.cluster.student_project import students

    root, prepared_dir, _, assistant_onnx = chain_project
    out = _run_cache_stage(
        root, prepared_dir, assistant_onnx, tmp_path / "chain", _write_params(tmp_path / "params.yaml")
    )
    params = students(out / "store", names=("kd",))["kd"]
    summary = train_student(
        "ta_student", params, prepared_dir, tmp_path / "train", tmp_path / "scratch", progress=False
    )
    assert 0.0 < summary["models"]["ta_student"]["val_acc_mean"] <= 1.0


def test_the_sharded_cache_stage_writes_the_bytes_of_the_single_process_stage(chain_project, tmp_path):
    root, prepared_dir, _, assistant_onnx = chain_project
    single = _run_cache_stage(
        root, prepared_dir, assistant_onnx, tmp_path / "single", _write_params(tmp_path / "single.yaml")
    )
    sharded = _run_cache_stage(
        root,
        prepared_dir,
        assistant_onnx,
        tmp_path / "sharded",
        _write_params(tmp_path / "sharded.yaml", workers=2, shard_cache=True),
    )
    assert tree_bytes(sharded / "store") == tree_bytes(single / "store")
    single_report = json.loads((single / "report.json").read_text())
    sharded_report = json.loads((sharded / "report.json").read_text())
    assert sharded_report["teacher_accuracy"] == single_report["teacher_accuracy"]


def test_a_chain_student_is_scored_against_its_own_teacher_and_the_root_teacher(chain_project, tmp_path):
    from pipeline.data.prepared import load_prepared
    from pipeline.evaluate.evaluation import join_split
    from pipeline.evaluate.params import EvaluateParams
    from pipeline.evaluate.run import evaluate_student_dir
    from pipeline.students.trained import load_trained_student
    from pipeline.train.run import train_student
    from tests.cluster.student_project import students

    root, prepared_dir, root_cache, assistant_onnx = chain_project
    chain = _run_cache_stage(
        root, prepared_dir, assistant_onnx, tmp_path / "chain", _write_params(tmp_path / "params.yaml")
    )
    params = students(chain / "store", names=("kd",))["kd"]
    train_student(
        "ta_student",
        params,
        prepared_dir,
        tmp_path / "train" / "ta_student",
        tmp_path / "scratch",
        progress=False,
    )
    prepared = load_prepared(prepared_dir)
    own = join_split(prepared, open_cache(chain / "store"), "test")
    reference = join_split(prepared, open_cache(root_cache), "test")
    report = evaluate_student_dir(
        tmp_path / "train" / "ta_student",
        own,
        EvaluateParams(),
        params.model_dump(mode="json"),
        None,
        tmp_path / "evaluate",
        root=reference,
        teacher="assistant",
    )["ta_student"]
    assert report["teacher"] == "assistant"
    student = load_trained_student(tmp_path / "train" / "ta_student" / "seed_0")
    with torch.no_grad():
        logits = student(torch.from_numpy(reference.inputs)).logits.numpy()
    expected = np.mean(logits.argmax(1) == reference.teacher_logits.argmax(1))
    assert report["root_agreement"]["mean"] == pytest.approx(expected)
    written = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert list(written)[:3] == ["model", "recipe", "teacher"]
