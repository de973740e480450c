"""The GPT-style LM: causal, padding-proof, trainable in a few steps, saved and loaded exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.text.lm import (
    CausalLM,
    LMConfig,
    SequenceTooLongError,
    build_lm,
    parameter_count,
    student_config,
    teacher_config,
)
from pipeline.text.lm_train import (
    LMTrainParams,
    compare_to_teacher,
    evaluate_lm,
    load_lm,
    save_lm,
    train_lm,
    unigram_baseline,
)
from pipeline.text.tokenizer import TokenizedText

TINY = LMConfig(vocab_size=40, context=16, layers=1, width=32, heads=2, dropout=0.0)


def _ragged(rows: list[list[int]]) -> TokenizedText:
    offsets = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    return TokenizedText(np.concatenate(rows).astype(np.int64), offsets, 16, 0, 0)


def test_changing_a_later_token_never_changes_earlier_logits():
    model = build_lm(TINY).eval()
    ids = torch.randint(4, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    for position in (0, 5, 11):
        changed = ids.clone()
        changed[:, position] = (changed[:, position] + 7) % 36 + 4
        with torch.no_grad():
            before, after = model(ids), model(changed)
        torch.testing.assert_close(after[:, :position], before[:, :position], rtol=0, atol=0)
        assert not torch.allclose(after[:, position], before[:, position])


def test_padding_left_or_right_leaves_the_real_tokens_logits_unchanged():
    model = build_lm(TINY).eval()
    ids = torch.tensor([[2, 9, 17, 30, 3]])
    with torch.no_grad():
        alone = model(ids)[0]
        right = model(torch.tensor([[2, 9, 17, 30, 3, 0, 0]]), torch.tensor([[1, 1, 1, 1, 1, 0, 0]]))[0, :5]
        left = model(torch.tensor([[0, 0, 2, 9, 17, 30, 3]]), torch.tensor([[0, 0, 1, 1, 1, 1, 1]]))[0, 2:]
    scale = alone.abs().max()
    torch.testing.assert_close(right, alone, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(left, alone, rtol=0, atol=1e-5 * scale)


def test_a_sequence_longer_than_the_context_is_refused_naming_the_fix():
    with pytest.raises(SequenceTooLongError, match="max_length <= 16"):
        build_lm(TINY)(torch.zeros((1, 17), dtype=torch.int64))


def test_the_student_is_the_same_family_smaller_and_returns_per_token_logits():
    teacher, student = build_lm(teacher_config(4096)), build_lm(student_config(4096))
    assert isinstance(student, CausalLM) and parameter_count(student) * 2 < parameter_count(teacher)
    logits = build_lm(TINY)(torch.zeros((2, 5), dtype=torch.int64))
    assert logits.shape == (2, 5, 40) and logits.dtype == torch.float32
    tied = build_lm(TINY)
    assert parameter_count(tied) == sum(p.numel() for p in tied.parameters())  # tied weight counted once


def test_initial_weights_depend_only_on_the_seed():
    a, b, c = build_lm(TINY, seed=1), build_lm(TINY, seed=1), build_lm(TINY, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.token_embedding.weight, c.token_embedding.weight)


def test_a_few_steps_learn_a_pattern_far_below_the_unigram_perplexity(tmp_path):
    rng = np.random.default_rng(0)
    sentences = [[2, *range(5 + k, 10 + k), 3] for k in rng.integers(0, 20, size=200)]
    data = _ragged(sentences)
    params = LMTrainParams(steps=60, batch_size=8, learning_rate=3e-3, warmup_steps=5, threads=1)
    model, report = train_lm(TINY, data.values, params)
    assert report["tokens_seen"] == 60 * 8 * 16 and not model.training
    held_out = _ragged(sentences[:20])
    result, baseline = evaluate_lm(model, held_out), unigram_baseline(data, held_out, TINY.vocab_size)
    assert result["tokens"] == baseline["tokens"] == 20 * 6
    assert result["perplexity"] < 0.5 * baseline["perplexity"]
    save_lm(model, tmp_path / "lm")
    loaded = load_lm(tmp_path / "lm")
    ids = torch.as_tensor(held_out.padded()[0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    same = compare_to_teacher(model, loaded, held_out)
    assert same["top1_agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-9)
