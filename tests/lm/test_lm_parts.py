"""The LM scenario's parts: the causal-LM student arch, the `caches:` variants of the cache stage, the
leaderboard's LM columns, and the prepared token dataset's sentence sample."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from pipeline.config import ParamsError
from pipeline.evaluate.leaderboard import leaderboard_rows
from pipeline.evaluate.leaderboard_tables import to_markdown
from pipeline.evaluate.lm_columns import lm_cell
from pipeline.students.registry import build_student, parse_arch
from pipeline.text.corpus import Corpus, CorpusParams
from pipeline.text.lm_scenario import SentenceCounts, sample_rows

ARCH = {"kind": "causal_lm", "vocab_size": 50, "layers": 1, "width": 16, "heads": 2, "context": 12}


def test_a_causal_lm_student_gives_next_token_logits_per_position_and_a_masked_hidden_tap():
    torch.manual_seed(0)
    student = build_student(ARCH, (), 1)
    ids = torch.randint(0, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    out = student(ids, mask)
    assert out.logits.shape == (3, 7, 50) and out.features["hidden"].shape == (3, 7, 16)
    assert torch.all(out.features["hidden"][1, 4:] == 0)
    alone = student(ids[1:2, :4], mask[1:2, :4]).logits  # padding changes no real token's logits
    torch.testing.assert_close(out.logits[1:2, :4], alone, rtol=1e-5, atol=1e-5 * alone.abs().max().item())
    assert student.tap_shapes == {"hidden": (None, 16)} and student.max_sequence == 12
    names = list(student.state_dict())  # the tied output layer is stored once (safetensors refuses shares)
    assert "lm.token_embedding.weight" in names and not any("head" in name for name in names)


def test_a_causal_lm_arch_refuses_a_width_that_does_not_split_into_heads():
    with pytest.raises(ParamsError, match="width 15 is not a multiple of heads 2"):
        parse_arch({**ARCH, "width": 15})


def _params_file(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return argparse.Namespace(params=str(path), variant=None)


def test_the_cache_stage_reads_a_named_variant_and_refuses_an_unknown_one_naming_those_there(tmp_path):
    from stages.cache import CacheVariantError, _cache_params

    args = _params_file(tmp_path, "caches:\n  sampled: {token_logits: {form: sampled, draws: 8}}\n")
    args.variant = "sampled"
    assert _cache_params(args).token_logits.draws == 8
    args.variant = "top_k"
    with pytest.raises(CacheVariantError, match=r"no caches\.top_k \(caches: sampled\)"):
        _cache_params(args)
    args = _params_file(tmp_path, "caches:\n  sampled: {token_logits: {form: sampeld}}\n")
    args.variant = "sampled"
    with pytest.raises(ParamsError, match=r"caches\.sampled\.token_logits\.form"):
        _cache_params(args)


def _lm_report(model: str, perplexity: float) -> dict:
    return {
        "model": model,
        "recipe": "causal_lm | 1 token_kd(T=1)",
        "teacher": f"data/caches/{model}/store",
        "params": 1000,
        "seeds": 1,
        "perplexity": {"mean": perplexity, "std": 0.0},
        "top1_agreement": {"mean": 0.9, "std": 0.0},
        "kl_to_teacher": {"mean": 0.01, "std": 0.0},
        "teacher_perplexity": 80.0,
        "cache_bytes_per_token": {"top_k": 58.31, "dense": 1810.0}[model],
    }


def test_an_lm_board_ranks_by_perplexity_and_shows_only_the_lm_columns():
    rows = leaderboard_rows([_lm_report("top_k", 150.0), _lm_report("dense", 83.2)])
    assert [row["model"] for row in rows] == ["dense", "top_k"]
    board = to_markdown(rows)
    assert (
        "| student | family / recipe | params | learned from | cache B/token | perplexity | top-1 agr. "
        "| KL to teacher |" in board
    )
    assert "| 1,810.0 | 83.20 | 0.9000 | 0.0100 |" in board and "| 58.3 | 150.00 |" in board
    assert lm_cell({"perplexity_mean": 80.0}, "cache_bytes_per_token") == "-"  # e.g. the teacher's row
    assert "acc (mean" not in board


def test_a_classification_board_gets_no_lm_column():
    report = {"model": "mlp", "params": 10, "seeds": 1, "accuracy": {"mean": 0.9, "std": 0.0}}
    assert "perplexity" not in to_markdown(leaderboard_rows([report]))


def test_the_sentence_sample_is_seeded_per_split_and_keeps_corpus_order():
    splits = ("train",) * 10 + ("val",) * 4 + ("test",) * 6
    corpus = Corpus(
        tuple(f"d#{i}" for i in range(20)), ("d",) * 20, splits, ("x",) * 20, CorpusParams(), "py", "f"
    )
    rows = sample_rows(corpus, SentenceCounts(train=3, test=100), seed=0)
    assert np.all(np.diff(rows) > 0) and len(rows) == 3 + 4 + 6
    assert np.array_equal(rows, sample_rows(corpus, SentenceCounts(train=3, test=100), seed=0))
    assert not np.array_equal(rows, sample_rows(corpus, SentenceCounts(train=3, test=100), seed=1))
