"""The leaderboard from metrics files: the teacher first, best student next, CSV and Markdown agree."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from pipeline.evaluate.leaderboard import LeaderboardError, collect_metrics, leaderboard_rows
from pipeline.evaluate.leaderboard_tables import CSV_COLUMNS, to_csv, to_markdown, write_leaderboard
from pipeline.evaluate.metrics import accuracy
from pipeline.evaluate.plots import accuracy_vs_params
from pipeline.evaluate.reference import teacher_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_metrics(model: str, acc: float, std: float, params: int, **extra) -> dict:
    spread = lambda v: {"mean": v, "std": 0.0}  # noqa: E731
    return {
        "model": model,
        "recipe": f"{model} recipe",
        "params": params,
        "seeds": 3,
        "accuracy": {"mean": acc, "std": std},
        "top5": spread(0.99),
        "nll": spread(0.3),
        "ece": spread(0.02),
        "agreement": spread(0.95),
        "kl_T1": spread(0.1),
        "latency_ms": {"cpu_b1": 0.05, "cpu_b64": 0.4, "cuda_b1": "n/a", "cuda_b64": "n/a"},
        **extra,
    }


@pytest.fixture
def evaluate_dir(tmp_path):
    root = tmp_path / "evaluate"
    entries = {
        "small": fake_metrics("small", 0.81, 0.01, 900),
        "kd": fake_metrics(
            "kd",
            0.93,
            0.004,
            5000,
            temperature=4.0,
            kl_T={"mean": 0.2, "std": 0.01},
            int8={"accuracy_change": -0.0125},
        ),
        "cohort": {"members": {"cohort/a": fake_metrics("cohort/a", 0.90, 0.0, 3000)}},
    }
    for name, payload in entries.items():
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(json.dumps(payload))
        (root / name / "calibration.tsv").write_text("label\n")
    return root


def test_leaderboard_ranks_students_by_accuracy_under_the_teacher(evaluate_dir):
    teacher = fake_metrics("teacher (reference)", 0.97, 0.0, 90000)
    rows = leaderboard_rows(collect_metrics(evaluate_dir), teacher)
    assert [r["model"] for r in rows] == ["teacher (reference)", "kd", "cohort/a", "small"]
    assert rows[1]["kl_T_mean"] == 0.2 and rows[2]["kl_T_mean"] is None
    assert rows[1]["int8_accuracy_change"] == -0.0125


def test_csv_and_markdown_hold_the_same_rows(evaluate_dir, tmp_path):
    rows = leaderboard_rows(collect_metrics(evaluate_dir))
    md_path, csv_path, _ = write_leaderboard(rows, tmp_path / "board")
    table = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert tuple(table[0]) == CSV_COLUMNS
    assert [r["model"] for r in table] == ["kd", "cohort/a", "small"]
    assert float(table[0]["accuracy_mean"]) == 0.93 and table[0]["latency_ms_cuda_b1"] == "n/a"
    assert table[2]["kl_T_mean"] == ""
    markdown = md_path.read_text()
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(lines) == 2 + 3  # header, rule, three students
    assert "| kd | kd recipe | 5,000 | 0.9300 ± 0.0040 |" in markdown
    assert "-0.0125" in markdown and "n/a" in markdown


def test_the_dvc_metrics_file_holds_every_model_s_measured_numbers(evaluate_dir, tmp_path):
    rows = leaderboard_rows(collect_metrics(evaluate_dir))
    rows[0]["nll_mean"] = float("nan")  # not JSON: left out, like an unmeasured column
    metrics = json.loads(write_leaderboard(rows, tmp_path / "board")[2].read_text())
    assert list(metrics) == ["kd", "cohort/a", "small"]
    assert metrics["kd"]["accuracy_mean"] == 0.93 and metrics["kd"]["int8_accuracy_change"] == -0.0125
    assert "kl_T_mean" not in metrics["small"] and "nll_mean" not in metrics["kd"]
    assert "latency_ms_cuda_b1" not in metrics["kd"]  # "n/a" is not a number


def test_an_empty_evaluate_directory_says_what_to_run(tmp_path):
    with pytest.raises(LeaderboardError, match="dvc repro evaluate"):
        collect_metrics(tmp_path)


def test_a_foreign_metrics_file_is_named(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "metrics.json").write_text('{"acc": 1}')
    with pytest.raises(LeaderboardError, match="x/metrics.json: not an evaluate metrics file"):
        collect_metrics(tmp_path)


def test_teacher_reference_row_scores_the_cached_logits_on_the_labelled_test_rows(prepared_and_cache):
    _, cache = prepared_and_cache
    report, bins = teacher_report(cache, "test", num_parameters=777, latency_ms={"latency_ms_cpu_b1": 0.2})
    test = (cache.split == 2) & (cache.label >= 0)
    expected = accuracy(cache.logits[test].astype(np.float32), cache.label[test])
    assert report["accuracy"] == {"mean": pytest.approx(expected), "std": 0.0}
    assert report["agreement"]["mean"] == 1.0 and report["kl_T1"]["mean"] == 0.0
    assert report["params"] == 777 and report["latency_ms"] == {"cpu_b1": 0.2}
    assert int(bins.count.sum()) == int(test.sum()) == 36
    assert "teacher" in to_markdown(leaderboard_rows([], report))


def test_accuracy_vs_parameters_plot_is_written(tmp_path):
    path = accuracy_vs_params(
        ["a", "b"],
        [100, 1000],
        [0.8, 0.9],
        [0.01, 0.0],
        tmp_path / "acc.png",
        reference=("teacher", 10000, 0.95),
    )
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_build_leaderboard_writes_tables_and_both_plots(evaluate_dir, tmp_path, prepared_and_cache):
    from pipeline.evaluate.evaluation import calibration_tsv
    from pipeline.evaluate.leaderboard import build_leaderboard

    _, cache = prepared_and_cache
    teacher, teacher_bins = teacher_report(cache, "test", num_parameters=5000)
    (evaluate_dir / "kd" / "calibration.tsv").write_text(calibration_tsv({"seed_0": teacher_bins}))
    rows = build_leaderboard(evaluate_dir, tmp_path / "board", teacher, teacher_bins)
    assert rows[0]["model"] == "teacher (reference)" and len(rows) == 4
    for name in ("leaderboard.md", "leaderboard.csv"):
        assert (tmp_path / "board" / name).stat().st_size > 0
    for name in ("accuracy_vs_params.png", "reliability.png"):
        assert (tmp_path / "board" / "plots" / name).read_bytes().startswith(PNG_MAGIC)


def test_training_curves_are_drawn_from_the_dvclive_files_of_every_seed(tmp_path, evaluate_dir):
    from pipeline.evaluate.leaderboard import build_leaderboard
    from pipeline.evaluate.plots import read_dvclive_tsv

    for run in ("kd/seed_0", "kd/seed_1", "cohort/a/seed_0"):
        tsv = tmp_path / "train" / run / "live" / "plots" / "metrics" / "val" / "acc.tsv"
        tsv.parent.mkdir(parents=True)
        tsv.write_text("step\tacc\n0\t0.5\n1\t0.75\n")
    steps, values = read_dvclive_tsv(tsv)
    assert steps.tolist() == [0.0, 1.0] and values.tolist() == [0.5, 0.75]
    build_leaderboard(evaluate_dir, tmp_path / "board", train_root=tmp_path / "train")
    assert (tmp_path / "board" / "plots" / "curves_val_acc.png").read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "board" / "plots" / "curves_train_loss.png").exists()


def test_curve_files_are_each_models_lowest_seed_whatever_the_students(tmp_path):
    from pipeline.evaluate.leaderboard import write_curve_files

    for run, value in (("kd/seed_10", "0.9"), ("kd/seed_2", "0.7"), ("cohort/a/seed_0", "0.6")):
        for metric in ("val/acc", "train/loss"):
            tsv = tmp_path / "train" / run / "live" / "plots" / "metrics" / f"{metric}.tsv"
            tsv.parent.mkdir(parents=True, exist_ok=True)
            tsv.write_text(f"step\t{metric.split('/')[1]}\n0\t{value}\n")
    (tmp_path / "curves" / "val" / "acc").mkdir(parents=True)
    (tmp_path / "curves" / "val" / "acc" / "gone.tsv").write_text("a student since removed")
    written = write_curve_files({"": tmp_path / "train"}, tmp_path / "curves", ["val/acc"])
    files = sorted(
        p.relative_to(tmp_path / "curves").as_posix() for p in (tmp_path / "curves").rglob("*.tsv")
    )
    assert (
        files
        == ["val/acc/cohort/a.tsv", "val/acc/kd.tsv"]
        == [p.relative_to(tmp_path / "curves").as_posix() for p in sorted(written)]
    )
    assert (tmp_path / "curves" / "val" / "acc" / "kd.tsv").read_text() == "step\tacc\n0\t0.7\n"  # seed 2


def test_the_sweeps_metrics_are_collected_under_their_own_names(tmp_path, evaluate_dir):
    sweep = tmp_path / "sweep" / "evaluate" / "kd"
    sweep.mkdir(parents=True)
    (sweep / "metrics.json").write_text(json.dumps(fake_metrics("kd", 0.95, 0.0, 5000)))
    assert [r["model"] for r in collect_metrics(tmp_path / "sweep" / "evaluate", "sweep")] == ["sweep/kd"]
    assert collect_metrics(tmp_path / "nothing", "sweep", required=False) == []
    with pytest.raises(LeaderboardError, match="no <student>/metrics.json"):
        collect_metrics(tmp_path / "nothing")


def test_the_weakest_class_is_shown_by_the_users_class_name():
    spread = lambda m: {"mean": m, "std": 0.0}  # noqa: E731
    report = {
        "model": "kd",
        "accuracy": spread(0.9),
        "seeds": 1,
        "per_class": {"ant": spread(0.95), "bee|wasp": spread(0.71), "cat": spread(0.9)},
    }
    rows = leaderboard_rows([report, {"model": "old", "accuracy": spread(0.8), "seeds": 1}])
    assert rows[0]["weakest_class"] == "bee|wasp" and rows[0]["weakest_class_accuracy"] == 0.71
    assert rows[1]["weakest_class"] is None  # a metrics.json written before per-class accuracy
    markdown = to_markdown(rows)
    assert "| weakest class |" in markdown and "| bee\\|wasp 0.710 |" in markdown
    assert "weakest_class,weakest_class_accuracy" in to_csv(rows).splitlines()[0]
