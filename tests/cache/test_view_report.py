"""The cache report of a view cache: the usual figures on the original rows only, and a `views` block
(count, rows, teacher accuracy on plain-labelled views, entropy at T, top-1 agreement with the
original), checked on a hand-made cache with known answers and against a single-view build."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from pipeline.cache.open import open_cache
from pipeline.cache.report import cache_report, write_plots
from pipeline.transforms.views import VIEW_DTYPE
from tests.cache.helpers import build, small_params
from tests.cache.test_views import ImageTeacher, image_rows, view_params

# samples 10 (train, 0), 11 (unlabelled), 12 (test, 1), 13 (train, 1); two classes, logits [0, d] or [d, 0]
ORIGINALS = [(10, 0, 0, [2, 0]), (11, 3, -1, [0, 2]), (12, 2, 1, [0, 3]), (13, 0, 1, [0, 1])]
# (sample, view, lam, logits): 10 v1 is a wrong plain view, 13 v0 a wrong mixed one, 11 is unlabelled
VIEWS = [
    (10, 0, 1.0, [3, 0]),
    (10, 1, 1.0, [0, 1]),
    (11, 0, 0.6, [0, 5]),
    (11, 1, 1.0, [4, 0]),
    (13, 0, 0.5, [1, 0]),
    (13, 1, 1.0, [0, 2]),
]


class HandMadeViewCache:
    """A reader-like view cache of the rows above (originals first, then the views)."""

    def __init__(self) -> None:
        split = {sample: code for sample, code, _, _ in ORIGINALS}
        label = {sample: lab for sample, _, lab, _ in ORIGINALS}
        self.sample_id = np.array([r[0] for r in ORIGINALS] + [r[0] for r in VIEWS], np.int64)
        self.view = np.array([-1] * len(ORIGINALS) + [r[1] for r in VIEWS], np.int32)
        self.split = np.array([split[s] for s in self.sample_id], np.int8)
        self.label = np.array([label[s] for s in self.sample_id], np.int64)
        self.logits = np.array([r[3] for r in ORIGINALS] + [r[3] for r in VIEWS], np.float32)
        self.lam = np.array([1.0] * len(ORIGINALS) + [r[2] for r in VIEWS], np.float32)
        self.schema = SimpleNamespace(view_count=2)

    def view_records(self, rows: np.ndarray) -> np.ndarray:
        records = np.zeros(len(rows), VIEW_DTYPE)
        records["lam"] = self.lam[rows]
        return records


def binary_entropy(margin: float, temperature: float) -> float:
    """Entropy in nats of softmax([0, margin] / T), in closed form."""
    p = 1 / (1 + np.exp(-margin / temperature))
    return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def test_a_view_cache_report_keeps_its_figures_on_the_originals_and_adds_a_views_block():
    report = cache_report(HandMadeViewCache())
    assert report["rows"] == 4 and report["rows_per_split"] == {
        "train": 2,
        "val": 0,
        "test": 1,
        "unlabelled": 1,
    }
    # every original is right; with the views counted, train accuracy would be 3/6
    assert report["teacher_accuracy"] == {"train": 1.0, "test": 1.0}
    for t in (1, 4):
        expected = np.mean([binary_entropy(m, t) for m in (2, 2, 3, 1)])
        np.testing.assert_allclose(report["entropy_nats"][f"T{t}"], expected, rtol=1e-6)
    views = report["views"]
    assert views["count"] == 2 and views["rows"] == 6
    # plain-labelled views: 10 v0 right, 10 v1 wrong, 13 v1 right (13 v0 is mixed, 11 unlabelled)
    assert views["labelled_views"] == 3
    np.testing.assert_allclose(views["teacher_accuracy"], 2 / 3, rtol=1e-12)
    # same top-1 as the original: 10 v0, 11 v0, 13 v1
    np.testing.assert_allclose(views["top1_agrees_with_original"], 0.5, rtol=1e-12)
    for t in (1, 2, 4, 8):
        expected = np.mean([binary_entropy(m, t) for m in (3, 1, 5, 4, 1, 2)])
        np.testing.assert_allclose(views["entropy_nats"][f"T{t:g}"], expected, rtol=1e-6)
    json.dumps(report, allow_nan=False)


def test_a_built_view_cache_reports_what_its_single_view_cache_reports_plus_views(tmp_path):
    rows = image_rows()
    built = build(tmp_path, rows, ImageTeacher(), view_params(sparse_top_k=2))
    cache = open_cache(built.store_dir)
    report = cache_report(cache, built.reference_rows, built.reference_logits)
    single_build = build(
        tmp_path, rows, ImageTeacher(), small_params(features_dtype="float32", sparse_top_k=2), "one"
    )
    single = cache_report(open_cache(single_build.store_dir))
    for key in (
        "rows",
        "rows_per_split",
        "teacher_accuracy",
        "teacher_ece_15",
        "entropy_nats",
        "top5_mass_T1",
        "sparse",
    ):
        assert report[key] == single[key], key
    views = report["views"]
    assert views["count"] == 3 and views["rows"] == len(cache) - len(rows.sample_id)
    assert 0 <= views["top1_agrees_with_original"] <= 1
    assert report["stored_kl_vs_fp32"]["rows"] == len(built.reference_rows)
    np.testing.assert_allclose(
        report["bytes_per_sample"] * len(rows.sample_id), views["bytes_per_row"] * len(cache), rtol=1e-12
    )
    assert "reliability.png" in {p.name for p in write_plots(cache, report, tmp_path / "plots")}
