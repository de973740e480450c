"""`distillery cache` with `cache.token_logits` through the real CLI: the report gives the stored
form's bytes per token; bad inputs are refused in one line, and the cache already written is kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.data.fields import Ragged
from pipeline.data.writer import write_arrays
from tests.cache.helpers import tree_bytes
from tests.cache.token_helpers import VOCAB, lm_rows, lm_teacher
from tests.sequences.helpers import sequence_rows, sequence_teacher

ROOT = Path(__file__).resolve().parents[2]


def _cache(root: Path, model: str, **params) -> subprocess.CompletedProcess:
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages.cli", "cache", "--params", str(root / "params.yaml")]
    command += ["--prepared", str(root / "prepared"), "--teacher", str(root / model)]
    command += ["--out", str(root / "cache"), "--scratch", str(root / "scratch"), "--no-progress"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _write_prepared(root: Path, rows, num_classes: int) -> None:
    fields = {name: Ragged(f.values, f.offsets) for name, f in rows.fields.items()}
    write_arrays(root / "prepared", rows.sample_id, rows.split, rows.label, num_classes, fields)


def _cache_params(**token_logits):
    return {"rows_per_chunk": 4, "chunks_per_shard": 2, "batch_size": 3, "token_logits": token_logits}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Prepared LM rows (ragged input_ids, V classes) and a cache of them in the sampled form."""
    root = tmp_path_factory.mktemp("lm")
    rows = lm_rows()
    _write_prepared(root, rows, VOCAB)
    lm_teacher(root / "lm.onnx")
    teacher = {"provider": "cpu", "inputs": {"input_ids": "input_ids"}}
    done = _cache(root, "lm.onnx", cache=_cache_params(form="sampled", draws=16), teacher=teacher)
    assert done.returncode == 0, done.stderr
    return root


def test_the_cache_stage_reports_the_sampled_forms_bytes_per_token(project):
    report = json.loads((project / "cache" / "report.json").read_text())
    form = report["token_form"]
    assert form["form"] == "sampled" and form["draws"] == 16 and form["tokens"] == report["tokens"] > 0
    assert 1 <= form["mean_distinct_ids"] <= 16
    assert form["bytes_per_token_ragged"] < form["bytes_per_token_padded"] == 16 * 5 + 4
    assert form["dense_bytes_per_token"] == 2 * VOCAB


def test_a_sequence_longer_than_teacher_max_length_is_refused_keeping_the_cache(project):
    before = tree_bytes(project / "cache" / "store")
    teacher = {"provider": "cpu", "inputs": {"input_ids": "input_ids"}, "max_length": 3}
    refused = _cache(project, "lm.onnx", cache=_cache_params(form="sampled", draws=16), teacher=teacher)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert lines[-1].startswith("distillery cache: ") and "teacher.max_length" in lines[-1], refused.stderr
    assert tree_bytes(project / "cache" / "store") == before


def test_a_token_form_over_logits_per_row_is_refused_naming_the_param(project):
    before = tree_bytes(project / "cache" / "store")
    rows = sequence_rows(num_rows=12)
    _write_prepared(project, rows, 3)
    sequence_teacher(project / "seq.onnx")
    teacher = {"provider": "cpu", "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"}}
    refused = _cache(project, "seq.onnx", cache=_cache_params(form="top_k", k=2), teacher=teacher)
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert "cache.token_logits.form is top_k" in last and "per row" in last, refused.stderr
    assert tree_bytes(project / "cache" / "store") == before
