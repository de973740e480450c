"""The embedding metrics wired into evaluate and the leaderboard (issue 18): per seed and mean ± std
against the cached teacher tap, with known answers on synthetic embeddings (the teacher itself, a
rotation, a narrower student), the encode speed of two ONNX encoders, and the leaderboard's columns
and plot."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch

from pipeline.cache.reader import MemoryCache
from pipeline.evaluate.embedding_eval import embedding_report, encode_speed, student_embeddings
from pipeline.evaluate.evaluation import EvaluationError, join_split
from pipeline.evaluate.leaderboard import build_leaderboard, leaderboard_rows
from pipeline.evaluate.leaderboard_tables import to_csv, to_markdown
from pipeline.evaluate.metrics import MetricInputError
from pipeline.evaluate.params import EmbeddingParams, EvaluateParams, LatencyParams
from pipeline.evaluate.run import embedding_block, evaluate_student_dir
from pipeline.students.trained import load_trained_student
from pipeline.text.tokenizer import TokenizedText
from tests.evaluate.conftest import save_student
from tests.evaluate.test_leaderboard import PNG_MAGIC, fake_metrics
from tests.sequences.helpers import sequence_teacher


def _rotation(width: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((width, width)))
    return q


def test_a_student_equal_to_the_teacher_scores_one_everywhere_and_zero_spread():
    teacher = np.random.default_rng(0).standard_normal((40, 8))
    spread, per_seed = embedding_report({"seed_0": teacher, "seed_1": teacher.copy()}, teacher, k=5)
    for name in ("mean_cosine", "knn_agreement", "similarity_spearman"):
        assert spread[name]["mean"] == pytest.approx(1.0) and spread[name]["std"] == pytest.approx(0.0)
    assert set(per_seed) == {"seed_0", "seed_1"}


def test_a_rotated_student_keeps_neighbours_and_similarities_but_not_directions():
    teacher = np.random.default_rng(1).standard_normal((50, 6))
    rotated = teacher @ _rotation(6)
    spread, per_seed = embedding_report({"seed_0": rotated}, teacher, k=10)
    assert spread["knn_agreement"]["mean"] == pytest.approx(1.0)
    assert spread["similarity_spearman"]["mean"] == pytest.approx(1.0)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    expected_cosine = np.mean(np.sum(unit(rotated) * unit(teacher), axis=1))
    assert per_seed["seed_0"]["mean_cosine"] == pytest.approx(expected_cosine)
    assert expected_cosine < 0.9


def test_seeds_spread_as_mean_and_sample_std():
    rng = np.random.default_rng(2)
    teacher = rng.standard_normal((30, 4))
    students = {f"seed_{k}": teacher + 0.5 * rng.standard_normal((30, 4)) for k in range(3)}
    spread, per_seed = embedding_report(students, teacher, k=5)
    values = [per_seed[s]["knn_agreement"] for s in students]
    assert spread["knn_agreement"]["mean"] == pytest.approx(np.mean(values))
    assert spread["knn_agreement"]["std"] == pytest.approx(np.std(values, ddof=1))


def test_a_narrower_student_gets_neighbours_and_spearman_but_no_cosine():
    teacher = np.random.default_rng(3).standard_normal((20, 8))
    spread, _ = embedding_report({"seed_0": teacher[:, :3]}, teacher, k=3)
    assert set(spread) == {"knn_agreement", "similarity_spearman"}


def test_a_student_without_the_tap_is_named_with_the_taps_it_has(tmp_path):
    module = load_trained_student(save_student(tmp_path / "seed_0"))
    with pytest.raises(MetricInputError, match=r"no tap 'pooled' \(it has \['embed', 'hidden1'\]\)"):
        student_embeddings(module, np.zeros((3, 8, 8), np.float32), "pooled")


def _embedding_cache(prepared, cache, module):
    """`cache` with the per-row tap `pooled` = the student's own `embed` on each row (a known answer)."""
    by_id = {int(s): i for i, s in enumerate(prepared.sample_id)}
    rows = np.array([by_id[int(s)] for s in cache.sample_id])
    pooled = student_embeddings(module, prepared.inputs[rows], "embed")
    return MemoryCache(cache.sample_id, cache.split, cache.label, None, {"pooled": pooled})


def test_join_split_reads_the_asked_teacher_tap_and_names_the_taps_there_are(prepared_and_cache, tmp_path):
    prepared, cache = prepared_and_cache
    module = load_trained_student(save_student(tmp_path / "seed_0"))
    embedded = _embedding_cache(prepared, cache, module)
    data = join_split(prepared, embedded, "test", features=("pooled",))
    np.testing.assert_allclose(
        data.teacher_features["pooled"], student_embeddings(module, data.inputs, "embed"), rtol=1e-6
    )
    with pytest.raises(EvaluationError, match=r"no per-row tap 'cls' \(it has \['pooled'\]\)"):
        join_split(prepared, embedded, "test", features=("cls",))


def test_evaluate_writes_the_embedding_metrics_against_the_teacher_tap(prepared_and_cache, tmp_path):
    prepared, cache = prepared_and_cache
    train = tmp_path / "train" / "enc"
    for seed in (0, 1):
        save_student(train / f"seed_{seed}", seed, name="enc")
    embedded = _embedding_cache(prepared, cache, load_trained_student(train / "seed_0"))
    data = join_split(prepared, embedded, "test", features=("pooled",))
    params = EvaluateParams(
        latency=LatencyParams(batch_sizes=(1,)),
        embedding=EmbeddingParams(teacher_tap="pooled", student_tap="embed", k=5),
    )
    reports = evaluate_student_dir(train, data, params, {}, None, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report == json.loads(json.dumps(reports["enc"]))
    assert "agreement" not in report  # the teacher has no logits
    seed_0 = report["embedding"]["per_seed"]["seed_0"]
    assert seed_0 == pytest.approx({"mean_cosine": 1.0, "knn_agreement": 1.0, "similarity_spearman": 1.0})
    assert report["embedding"]["per_seed"]["seed_1"]["knn_agreement"] < 1.0  # another initialisation
    assert report["embedding"] | {"per_seed": None} == {
        "teacher_tap": "pooled",
        "student_tap": "embed",
        "k": 5,
        "rows": 40,
        "per_seed": None,
    }
    assert report["knn_agreement"]["mean"] == pytest.approx(
        np.mean([s["knn_agreement"] for s in report["embedding"]["per_seed"].values()])
    )


def test_embedding_block_refuses_a_split_joined_without_the_tap(prepared_and_cache, tmp_path):
    prepared, cache = prepared_and_cache
    modules = {"seed_0": load_trained_student(save_student(tmp_path / "seed_0"))}
    params = EvaluateParams(embedding=EmbeddingParams())
    with pytest.raises(EvaluationError, match="joined without the teacher tap 'sentence_embedding'"):
        embedding_block(modules, join_split(prepared, cache, "test"), params)


def test_encode_speed_times_both_encoders_on_the_same_sentences_and_gives_their_ratio(tmp_path):
    teacher = sequence_teacher(tmp_path / "teacher.onnx", logits=False)
    student = sequence_teacher(tmp_path / "student.onnx", logits=False)
    lengths = np.array([3, 7, 1, 5, 2])
    values = np.arange(lengths.sum()) % 20
    tokenized = TokenizedText(values, np.concatenate([[0], np.cumsum(lengths)]), 8, 0, 0)
    speed = encode_speed(student, teacher, tokenized, (1, 2), max_sentences=5)
    assert set(speed) == {"student", "teacher", "speedup_b1", "speedup_b2"}
    for b in (1, 2):
        ratio = speed["student"][f"sentences_per_s_b{b}"] / speed["teacher"][f"sentences_per_s_b{b}"]
        assert speed[f"speedup_b{b}"] == pytest.approx(ratio) and ratio > 0


def _embedding_metrics(model, params, knn, cosine, speedup=None):
    report = fake_metrics(model, 0.5, 0.0, params)
    report |= {
        "mean_cosine": {"mean": cosine, "std": 0.01},
        "knn_agreement": {"mean": knn, "std": 0.02},
        "similarity_spearman": {"mean": 0.8, "std": 0.0},
        "embedding": {
            "k": 10,
            **(
                {
                    "encode": {
                        "student": {"sentences_per_s_b1": 70.0 * speedup, "sentences_per_s_b64": 40.0},
                        "teacher": {"sentences_per_s_b1": 70.0, "sentences_per_s_b64": 20.0},
                        "speedup_b1": speedup,
                        "speedup_b64": 2.0,
                    }
                }
                if speedup
                else {}
            ),
        },
    }
    return report


def test_the_leaderboard_shows_embedding_columns_ranks_ties_by_knn_and_plots_quality(tmp_path):
    root = tmp_path / "evaluate"
    for name, payload in {
        "quarter": _embedding_metrics("quarter", 5_000_000, 0.72, 0.91, speedup=3.5),
        "sixteenth": _embedding_metrics("sixteenth", 1_400_000, 0.55, 0.84),
    }.items():
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(json.dumps(payload))
    rows = build_leaderboard(root, tmp_path / "board")
    assert [r["model"] for r in rows] == ["quarter", "sixteenth"]  # equal accuracy: by kNN agreement
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert float(parsed[0]["knn_agreement_mean"]) == 0.72 and float(parsed[0]["mean_cosine_std"]) == 0.01
    assert float(parsed[0]["encode_speedup_b1"]) == 3.5 and parsed[1]["encode_speedup_b1"] == ""
    assert float(parsed[0]["encode_student_b1"]) == 245.0 and float(parsed[0]["encode_teacher_b64"]) == 20.0
    markdown = to_markdown(rows)
    header = "| cos to teacher | kNN agr. | sim. Spearman | sent/s b1: student / teacher (×) | sent/s b64: "
    assert header in markdown
    assert "| 0.9100 | 0.7200 | 0.8000 | 245 / 70 (3.5×) | 40 / 20 (2.0×) |" in markdown
    assert "| 0.8400 | 0.5500 | 0.8000 | - | - |" in markdown
    assert (tmp_path / "board" / "plots" / "embedding_vs_params.png").read_bytes()[:8] == PNG_MAGIC


def test_a_classification_leaderboard_has_no_embedding_columns_or_plot(tmp_path):
    rows = leaderboard_rows([fake_metrics("a", 0.9, 0.0, 100)])
    assert "cos to teacher" not in to_markdown(rows) and rows[0]["knn_agreement_mean"] is None
    root = tmp_path / "evaluate" / "a"
    root.mkdir(parents=True)
    (root / "metrics.json").write_text(json.dumps(fake_metrics("a", 0.9, 0.0, 100)))
    build_leaderboard(tmp_path / "evaluate", tmp_path / "board")
    assert not (tmp_path / "board" / "plots" / "embedding_vs_params.png").exists()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
