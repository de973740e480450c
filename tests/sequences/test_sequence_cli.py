"""A multi-input sequence teacher end to end through the real CLI: `distillery prepare` (Parquet with
ragged token ids and masks) -> `teacher` (your ONNX: input_ids + attention_mask int64) -> `cache`
(per-token hidden states ragged) -> `train` (a token student on the same named fields, matching the
teacher's tokens under the mask) -> `export` (named dynamic inputs, parity) -> `evaluate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.sequences.helpers import VOCAB, sequence_rows, sequence_teacher

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

PARAMS = {
    "prepare": {
        "dataset": {
            "kind": "parquet",
            "path": "data/seq.parquet",
            "id_column": "id",
            "label_column": "label",
            "split_column": "split",
            "fields": ["input_ids", "attention_mask"],
        },
        "seed": 0,
    },
    "teacher": {
        "onnx": "seq.onnx",
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"},
        "max_length": 16,
        "provider": "cpu",
    },
    "cache": {"rows_per_chunk": 16, "chunks_per_shard": 2, "batch_size": 16, "kl_sample_rows": 64},
    "students": {
        "seq": {
            "arch": {"kind": "tokens", "vocab_size": VOCAB, "width": 8},
            "inputs": ["input_ids", "attention_mask"],
            "loss": {
                "kd": {"kind": "hinton", "weight": 1.0, "temperature": 2.0},
                "tokens": {
                    "kind": "feature",
                    "weight": 1.0,
                    "student_tap": "tokens",
                    "teacher_tap": "hidden",
                },
            },
            "epochs": 2,
            "batch_size": 16,
            "seeds": [0],
        }
    },
    "export": {"seed": None},
    "evaluate": {},
}


def _write_dataset(root: Path) -> None:
    rows = sequence_rows(num_rows=64, max_len=9)
    ids, mask = rows.fields["input_ids"], rows.fields["attention_mask"]
    split = np.array(["train", "val", "test", "unlabelled"])[rows.split]
    label = [None if s == "unlabelled" else int(v) for s, v in zip(split, rows.label)]
    (root / "data").mkdir()
    pq.write_table(
        pa.table(
            {
                "id": rows.sample_id,
                "label": pa.array(label, pa.int64()),
                "split": split,
                "input_ids": pa.ListArray.from_arrays(
                    pa.array(ids.offsets.astype(np.int32)), pa.array(ids.values)
                ),
                "attention_mask": pa.ListArray.from_arrays(
                    pa.array(mask.offsets.astype(np.int32)), pa.array(mask.values)
                ),
            }
        ),
        root / "data/seq.parquet",
    )


def _distillery(root: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(BIN / "distillery"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`distillery {' '.join(args)}` failed:\n{output[-4000:]}"
    return output


@pytest.mark.slow
def test_a_two_input_sequence_teacher_runs_prepare_cache_train_export_evaluate(tmp_path):
    if not (BIN / "distillery").exists():
        pytest.skip(f"needs distillery in {BIN} (`make setup`)")
    _write_dataset(tmp_path)
    sequence_teacher(tmp_path / "seq.onnx")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    _distillery(tmp_path, "prepare")
    _distillery(tmp_path, "teacher")
    _distillery(tmp_path, "cache", "--no-progress")
    _distillery(tmp_path, "train", "--student", "seq", "--no-progress")
    config = json.loads((tmp_path / "data/train/seq/seed_0/student.json").read_text())
    assert set(config["inputs"]) == {"input_ids", "attention_mask"}
    _distillery(tmp_path, "export", "--student", "seq")
    parity = json.loads((tmp_path / "data/export/seq/parity.json").read_text())["parity"]
    assert parity["passed"] and parity["output_names"] == ["logits", "tokens", "embed"]
    _distillery(tmp_path, "evaluate", "--student", "seq")
    metrics = json.loads((tmp_path / "data/evaluate/seq/metrics.json").read_text())
    assert metrics
