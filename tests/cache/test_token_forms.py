"""Per-token target forms: sampled ids + counts (Random-Sampling KD) and top-k with its tail mass."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pipeline.cache.token_forms import (
    TokenFormError,
    bytes_per_token,
    dense_bytes_per_token,
    sample_token_targets,
    top_k_kl_error,
    top_k_token_targets,
)


def log_softmax64(logits, temperature=1.0):
    z = np.asarray(logits, np.float64) / temperature
    finite_max = np.max(np.where(np.isfinite(z), z, -np.inf), axis=-1, keepdims=True)
    return z - finite_max - np.log(np.exp(z - finite_max).sum(axis=-1, keepdims=True))


def logits(tokens=6, vocab=9, scale=2.0, seed=0):
    return (scale * np.random.default_rng(seed).normal(size=(tokens, vocab))).astype(np.float32)


def drawn_frequencies(targets):
    """(V,) total draws of each id over every token of `targets`."""
    totals = np.zeros(targets.vocab_size)
    np.add.at(totals, targets.ids.astype(np.int64), targets.counts)
    return totals


def test_every_token_has_draws_distinct_ascending_ids_and_count_zero_padding():
    targets = sample_token_targets(logits(), draws=20, seed=1)
    assert (targets.counts.sum(axis=1) == 20).all()
    for ids, counts in zip(targets.ids, targets.counts, strict=True):
        live = ids[counts > 0]
        assert (np.diff(live.astype(int)) > 0).all()
        assert (counts[len(live) :] == 0).all() and (ids[len(live) :] == 0).all()
    assert targets.ids.shape[1] == np.count_nonzero(targets.counts, axis=1).max()  # width None: tightest
    assert targets.ids.dtype == np.uint16 and targets.counts.dtype == np.uint8
    assert targets.log_probs.dtype == np.float16


def test_stored_log_probs_and_normalisers_match_float64_log_softmax():
    z = logits(vocab=11)
    targets = sample_token_targets(
        z, draws=30, seed=2, temperature=2.0, normalizer_temperatures=(1.0, 4.0), log_prob_dtype="float32"
    )
    expected = np.take_along_axis(log_softmax64(z, 2.0), targets.ids.astype(np.int64), axis=1)
    live = targets.counts > 0
    np.testing.assert_allclose(targets.log_probs[live], expected[live], rtol=1e-6, atol=1e-6)
    assert targets.normalizer_temperatures == (2.0, 1.0, 4.0)
    for column, temperature in enumerate(targets.normalizer_temperatures):
        scaled = z.astype(np.float64) / temperature
        lse = scaled.max(1) + np.log(np.exp(scaled - scaled.max(1, keepdims=True)).sum(1))
        np.testing.assert_allclose(targets.log_normalizers[:, column], lse, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_draw_frequencies_follow_the_softened_teacher_within_four_standard_errors(temperature):
    row = logits(tokens=1, vocab=7, scale=1.5, seed=3)
    row[0, 4] = -np.inf  # a masked id is never drawn
    targets = sample_token_targets(np.repeat(row, 3000, axis=0), draws=16, seed=4, temperature=temperature)
    total = 3000 * 16
    p = np.exp(log_softmax64(row[0], temperature))
    frequencies = drawn_frequencies(targets)
    assert frequencies[4] == 0
    live = p > 0
    z_scores = (frequencies[live] - total * p[live]) / np.sqrt(total * p[live] * (1 - p[live]))
    assert np.abs(z_scores).max() < 4


def test_ids_without_mass_are_never_drawn_across_the_blocks_of_a_large_vocabulary():
    z = np.zeros((200, 1000), np.float32)
    z[:, 0] = z[:, 256:512] = z[:, 990:] = -np.inf  # the first id, a whole block, the row's end
    frequencies = drawn_frequencies(sample_token_targets(z, draws=64, seed=0))
    live = np.isfinite(z[0])
    assert frequencies[~live].sum() == 0 and (frequencies[live] > 0).all()
    expected = 200 * 64 * np.array([live[b : b + 256].sum() for b in range(0, 1000, 256)]) / live.sum()
    observed = np.array([frequencies[b : b + 256].sum() for b in range(0, 1000, 256)])
    live_blocks = expected > 0
    p = expected[live_blocks] / (200 * 64)
    z_scores = (observed[live_blocks] - expected[live_blocks]) / np.sqrt(200 * 64 * p * (1 - p))
    assert np.abs(z_scores).max() < 4


def test_draws_depend_on_the_seed_only_not_on_the_chunk_size():
    z = logits(tokens=40, vocab=300)
    whole = sample_token_targets(z, draws=12, seed=7, width=12)
    one_at_a_time = sample_token_targets(z, draws=12, seed=7, width=12, chunk_bytes=1)
    generator = sample_token_targets(z, draws=12, seed=np.random.default_rng(7), width=12)
    for name in ("ids", "counts", "log_probs"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(one_at_a_time, name))
        np.testing.assert_array_equal(getattr(whole, name), getattr(generator, name))
    other = sample_token_targets(z, draws=12, seed=8, width=12)
    assert not np.array_equal(whole.ids, other.ids)


def test_draws_over_many_blocks_and_a_ragged_last_block_follow_the_closed_form_softmax():
    row = logits(tokens=1, vocab=777, scale=1.5, seed=5)  # 3 blocks of 256 and one of 9
    draws, tokens = 32, 2000
    frequencies = drawn_frequencies(sample_token_targets(np.repeat(row, tokens, axis=0), draws=draws, seed=6))
    p = np.exp(log_softmax64(row[0]))
    total = tokens * draws
    z_scores = (frequencies - total * p) / np.sqrt(total * p * (1 - p))
    assert np.abs(z_scores).max() < 5  # 777 ids: a 5-sigma bound fails by chance with p ~ 4e-4
    # Pearson's chi-square over the ids with >= 5 expected draws, against chi2(dof) mean dof, sd sqrt(2 dof)
    kept = total * p >= 5
    chi2 = (((frequencies - total * p) ** 2) / (total * p))[kept].sum()
    dof = kept.sum() - 1
    assert abs(chi2 - dof) < 5 * np.sqrt(2 * dof)


def test_draws_do_not_depend_on_the_number_of_torch_threads():
    z = logits(tokens=64, vocab=1000, scale=3.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sample_token_targets(z, draws=24, seed=3, width=24)
        torch.set_num_threads(max(2, threads))
        many = sample_token_targets(z, draws=24, seed=3, width=24)
    finally:
        torch.set_num_threads(threads)
    for name in ("ids", "counts", "log_probs", "log_normalizers"):
        np.testing.assert_array_equal(getattr(one, name), getattr(many, name))


def test_a_read_only_logits_array_is_sampled_without_a_warning():
    z = logits(tokens=8, vocab=40)
    z.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        targets = sample_token_targets(z, draws=8, seed=0, normalizer_temperatures=(2.0,))
    assert (targets.counts.sum(axis=1) == 8).all()


def test_large_vocabularies_use_int32_ids_and_many_draws_uint16_counts():
    z = np.zeros((2, 70_000), np.float32)
    z[:, 69_999] = 30.0  # nearly all mass on an id beyond uint16
    targets = sample_token_targets(z, draws=300, seed=0, chunk_bytes=2**20)
    assert targets.ids.dtype == np.int32 and targets.counts.dtype == np.uint16
    # p(69_999) = 1 - 7e-9: every draw is that id
    assert (targets.ids[:, 0] == 69_999).all() and (targets.counts[:, 0] == 300).all()


def test_a_fixed_width_pads_and_a_width_too_small_is_refused_naming_the_need():
    z = logits(tokens=5, vocab=50, scale=0.1)
    padded = sample_token_targets(z, draws=10, seed=0, width=10)
    assert padded.ids.shape == (5, 10)
    with pytest.raises(TokenFormError, match=r"drew \d+ distinct ids; use width between"):
        sample_token_targets(z, draws=10, seed=0, width=1)


@pytest.mark.parametrize(
    ("bad", "kwargs", "message"),
    [
        (np.zeros((3,), np.float32), {}, r"must be \(tokens, V\)"),
        (np.array([[0.0, np.nan]]), {}, "NaN or \\+inf"),
        (np.array([[-np.inf, -np.inf]]), {}, "all -inf"),
        (np.zeros((2, 3)), {"draws": 0}, "draws must be in 1..65535"),
        (np.zeros((2, 3)), {"temperature": 0.0}, "temperature must be a finite number > 0"),
        (np.zeros((2, 3)), {"log_prob_dtype": "bfloat16"}, "log_prob_dtype must be one of"),
    ],
)
def test_bad_input_is_refused_with_one_line_naming_it(bad, kwargs, message):
    with pytest.raises(TokenFormError, match=message):
        sample_token_targets(bad, **{"draws": 4, "seed": 0, **kwargs})


def test_top_k_keeps_the_k_most_likely_ids_their_log_probs_and_the_exact_tail_mass():
    z = logits(tokens=8, vocab=12)
    z[0, 3] = z[0, 5] = z[0].max() + 1  # a tie among the kept ids: the lower id first
    targets = top_k_token_targets(z, k=4, temperature=2.0, log_prob_dtype="float32")
    log_p = log_softmax64(z, 2.0)
    for row in range(len(z)):
        expected = sorted(range(12), key=lambda v, row=row: (-z[row, v], v))[:4]
        assert targets.ids[row].tolist() == expected
    np.testing.assert_allclose(
        targets.log_probs, np.take_along_axis(log_p, targets.ids.astype(np.int64), 1), rtol=1e-6, atol=1e-6
    )
    tail = np.exp(log_p).sum(1) - np.exp(np.take_along_axis(log_p, targets.ids.astype(np.int64), 1)).sum(1)
    np.testing.assert_allclose(np.exp(targets.log_tail_mass), tail, rtol=1e-5)


def test_top_k_tail_mass_is_exact_even_when_tiny_and_minus_inf_when_k_is_v():
    z = np.array([[40.0, 0.0, 0.0, 0.0]], np.float32)
    targets = top_k_token_targets(z, k=1)
    np.testing.assert_allclose(targets.log_tail_mass[0], np.log(3.0) - 40.0, rtol=1e-6)
    assert top_k_token_targets(z, k=9).log_tail_mass[0] == -np.inf


def test_top_k_kl_error_is_the_tail_mass_times_its_kl_to_uniform_and_zero_at_k_equal_v():
    z = logits(tokens=5, vocab=10)
    targets = top_k_token_targets(z, k=3, log_prob_dtype="float32")
    log_p = log_softmax64(z)
    expected = []
    for row in range(5):
        tail_ids = np.setdiff1d(np.arange(10), targets.ids[row])
        tail = np.exp(log_p[row, tail_ids])
        shape = tail / tail.sum()
        expected.append(tail.sum() * np.sum(shape * np.log(shape * len(tail_ids))))
    np.testing.assert_allclose(top_k_kl_error(z, targets), expected, rtol=1e-5, atol=1e-7)
    assert np.allclose(
        top_k_kl_error(z, top_k_token_targets(z, k=10, log_prob_dtype="float32")), 0, atol=1e-7
    )


def test_bytes_per_token_count_stored_slots_at_their_dtypes():
    z = logits(tokens=4, vocab=1000, scale=4.0)
    sampled = sample_token_targets(z, draws=32, seed=0, normalizer_temperatures=(2.0,))
    distinct = np.count_nonzero(sampled.counts, axis=1).mean()
    assert bytes_per_token(sampled) == pytest.approx(distinct * (2 + 1 + 2) + 2 * 4)
    assert bytes_per_token(sampled, padded=True) == sampled.ids.shape[1] * 5 + 8
    assert bytes_per_token(top_k_token_targets(z, k=16)) == 16 * (2 + 2) + 8
    assert dense_bytes_per_token(128_000) == 256_000 and dense_bytes_per_token(32_000, "float32") == 128_000
