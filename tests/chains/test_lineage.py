"""The leaderboard says what each student learned from, and scores chain students against the root teacher."""

from __future__ import annotations

import json

import pytest

from pipeline.config import ParamsError
from pipeline.evaluate.leaderboard import collect_metrics, leaderboard_rows
from pipeline.evaluate.leaderboard_tables import to_markdown
from pipeline.evaluate.lineage import chain_store, is_root_cache, learned_from, validate_chains

CHAINS = {"ta": {"teacher": "assistant"}, "born_again": {"teacher": "born_again_g1"}}
HINTON = {"ce": {"kind": "ce", "weight": 0.5}, "kd": {"kind": "hinton", "weight": 0.5}}


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ({"loss": HINTON}, "teacher"),
        ({"loss": HINTON, "cache": "data/cache/store"}, "teacher"),
        ({"loss": HINTON, "cache": "./data/cache//store"}, "teacher"),
        ({"loss": HINTON, "cache": "data/chains/ta/store"}, "assistant"),
        ({"loss": HINTON, "cache": chain_store("born_again")}, "born_again_g1"),
        ({"loss": {"ce": {"kind": "ce", "weight": 1.0}}, "cache": "data/chains/ta/store"}, "labels"),
        ({"loss": {"s": {"kind": "smoothing", "weight": 1.0}}}, "labels"),
        ({"loss": HINTON, "cache": "elsewhere/store"}, "elsewhere/store"),
    ],
)
def test_learned_from_names_the_root_teacher_the_chain_teacher_or_labels(recipe, expected):
    assert learned_from(recipe, CHAINS) == expected


def test_validated_chains_name_their_teachers_and_bad_ones_are_refused():
    chains = validate_chains(CHAINS)
    assert learned_from({"loss": HINTON, "cache": "data/chains/ta/store"}, chains) == "assistant"
    assert validate_chains(None) == {}
    with pytest.raises(ParamsError, match="teacher"):
        validate_chains({"ta": {"techer": "assistant"}})
    with pytest.raises(ParamsError, match="chain name .* is not allowed"):
        validate_chains({"../x": {"teacher": "assistant"}})


def test_the_root_cache_is_recognised_however_the_path_is_written():
    assert is_root_cache("data/cache/store") and is_root_cache("data/cache/store/")
    assert not is_root_cache("data/chains/ta/store")


def _metrics(model, acc, teacher, agreement, root_agreement):
    spread = lambda v: {"mean": v, "std": 0.0}  # noqa: E731
    return {
        "model": model,
        "recipe": "mlp | 0.5 ce + 0.5 hinton(T=4)",
        "teacher": teacher,
        "params": 1000,
        "seeds": 1,
        "accuracy": spread(acc),
        "agreement": spread(agreement),
        "root_agreement": spread(root_agreement),
        "kl_T1": spread(0.1),
    }


def test_the_leaderboard_shows_chain_rows_next_to_direct_distillation(tmp_path):
    for name, teacher, root in (
        ("direct_student", "teacher", 0.95),
        ("ta_student", "assistant", 0.93),
        ("assistant", "teacher", 0.97),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(
            json.dumps(_metrics(name, root - 0.02, teacher, 0.96, root))
        )
    rows = leaderboard_rows(collect_metrics(tmp_path))
    assert {r["model"]: (r["teacher"], r["root_agreement_mean"]) for r in rows} == {
        "assistant": ("teacher", 0.97),
        "direct_student": ("teacher", 0.95),
        "ta_student": ("assistant", 0.93),
    }
    markdown = to_markdown(rows)
    assert "| learned from | agreement | root agr. |" in markdown
    assert "| assistant | 0.9600 | 0.9300 |" in markdown  # ta_student's row
