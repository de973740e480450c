"""The `cache` and `inspect` stages end to end on a tiny ONNX teacher exported here."""

from __future__ import annotations

import argparse
import json
import logging
import warnings

import pytest
import yaml

from pipeline.cache.format import StaleCacheError
from pipeline.cache.open import open_cache
from tests.cache.helpers import make_rows

torch = pytest.importorskip("torch")


class _TinyTeacher(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(8, 4)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, x):
        embed = torch.tanh(self.embed(x))
        return self.head(embed) * 4, embed


def _export(path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        torch.onnx.export(
            _TinyTeacher().eval(),
            (torch.zeros(2, 8),),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=["input"],
            output_names=["logits", "embed"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from pipeline.data.prepared import make_prepared, write_prepared

    root = tmp_path_factory.mktemp("project")
    rows = make_rows(200)
    write_prepared(make_prepared(rows.sample_id, rows.split, rows.label, rows.inputs, 5), root / "prepared")
    _export(root / "model.onnx")
    params = {
        "cache": {"rows_per_chunk": 16, "chunks_per_shard": 4, "batch_size": 32, "sparse_top_k": 2},
        "teacher": {"provider": "cpu"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _args(root, **extra):
    return argparse.Namespace(
        params=str(root / "params.yaml"),
        prepared=str(root / "prepared"),
        teacher=str(root / "model.onnx"),
        out=str(root / "cache"),
        scratch=str(root / "scratch"),
        no_progress=True,
        **extra,
    )


def test_cache_stage_writes_store_report_and_plots(project, caplog):
    from pipeline.data.prepared import load_prepared
    from pipeline.teacher.session import teacher_sha256
    from stages import cache as cache_stage

    with caplog.at_level(logging.INFO):
        assert cache_stage.run(_args(project)) == 0
    assert "teacher runs on CPUExecutionProvider" in caplog.text
    report = json.loads((project / "cache" / "report.json").read_text())
    assert report["rows"] == 200 and report["logits_dtype"] == "float16"
    assert report["stored_kl_goal_met"] and report["stored_kl_vs_fp32"]["T1"]["p99"] <= 1e-5
    assert report["sparse"]["top_k"] == 2
    assert sorted(p.name for p in (project / "cache" / "plots").iterdir()) == [
        "entropy_vs_temperature.png",
        "kl_error.png",
        "reliability.png",
    ]
    data = load_prepared(project / "prepared")
    cache = open_cache(project / "cache" / "store", data.fingerprint, teacher_sha256(project / "model.onnx"))
    assert cache.schema.feature_shapes == {"embed": (4,)}
    with pytest.raises(StaleCacheError):
        open_cache(project / "cache" / "store", teacher_sha256="0" * 64)


def test_inspect_recomputes_the_fp32_reference(project, capsys):
    from stages import inspect as inspect_stage

    if not (project / "cache" / "store").exists():
        pytest.skip("needs the cache stage test's output")
    args = argparse.Namespace(
        cache=str(project / "cache" / "store"),
        out=str(project / "inspect"),
        teacher=str(project / "model.onnx"),
        prepared=str(project / "prepared"),
        sample_rows=50,
    )
    assert inspect_stage.run(args) == 0
    report = json.loads((project / "inspect" / "report.json").read_text())
    stage_report = json.loads((project / "cache" / "report.json").read_text())
    assert report["stored_kl_vs_fp32"]["rows"] == 50
    assert report["teacher_accuracy"] == stage_report["teacher_accuracy"]
    assert '"teacher_accuracy"' in capsys.readouterr().out
