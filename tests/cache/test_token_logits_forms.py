"""Per-token teacher logits stored sampled or top-k (`cache.token_logits`), Zarr and Parquet: ids,
counts and log-probs read back exactly, the loss on read-back equals the loss on the in-memory form,
a changed form is another build, and a form the cache does not hold is refused in one line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cache.build import create_store
from pipeline.cache.format import read_metadata
from pipeline.cache.open import open_cache
from pipeline.cache.params import TokenLogitsParams
from pipeline.cache.report import cache_report
from pipeline.cache.token_batch import SampledTokens, TopKTokens
from pipeline.cache.token_forms import sample_token_targets, top_k_token_targets
from pipeline.cache.token_store import TokenFormMismatchError, check_token_form
from pipeline.losses.token_kd import token_divergence
from tests.cache.helpers import build, small_params, tree_bytes
from tests.cache.token_helpers import VOCAB, expected_logits, lm_rows, lm_teacher

ROOT = Path(__file__).resolve().parents[2]
FORMS = {
    "sampled": TokenLogitsParams(form="sampled", draws=8, seed=3),
    "top_k": TokenLogitsParams(form="top_k", k=5),
}


def _params(store: str, form: str, **overrides):
    token_logits = FORMS[form].model_copy(update=overrides)
    return small_params(
        store=store, rows_per_chunk=4, chunks_per_shard=2, batch_size=3, token_logits=token_logits
    )


def _expected(rows, params):
    """The form of every token computed directly, batch by batch (3 rows, from each 8-row shard's
    first row), seeded as the cache documents: default_rng([seed, the batch's first row])."""
    logits, offsets = expected_logits(rows), rows.fields["input_ids"].offsets
    spec, parts = params.token_logits, []
    for shard in range(0, len(rows.sample_id), params.rows_per_shard):
        stop = min(shard + params.rows_per_shard, len(rows.sample_id))
        for start in range(shard, stop, params.batch_size):
            end = min(start + params.batch_size, stop)
            chunk = logits[offsets[start] : offsets[end]]
            if spec.form == "sampled":
                rng = np.random.default_rng([spec.seed, start])
                parts.append(sample_token_targets(chunk, spec.draws, rng, width=spec.draws))
            else:
                parts.append(top_k_token_targets(chunk, spec.k))
    names = (
        ("ids", "counts", "log_probs") if spec.form == "sampled" else ("ids", "log_probs", "log_tail_mass")
    )
    return {name: np.concatenate([getattr(p, name) for p in parts]) for name in names}, parts[0]


@pytest.mark.parametrize("store", ["zarr", "parquet"])
@pytest.mark.parametrize("form", ["sampled", "top_k"])
def test_each_token_form_round_trips_through_the_cache_exactly(tmp_path, store, form):
    rows, params = lm_rows(), _params(store, form)
    result = build(tmp_path, rows, lm_teacher(tmp_path / "lm.onnx"), params)
    layout = read_metadata(result.store_dir).layout
    assert layout.logits == "token" and layout.token_form["form"] == form
    assert not any(name == "tokens/logits" for name in layout.ragged_arrays())
    want, _ = _expected(rows, params)
    offsets = rows.fields["input_ids"].offsets
    picked = np.array([9, 0, 20, 4])
    for mode in ["memory", "mmap"] + (["lazy"] if store == "zarr" else []):
        cache = open_cache(result.store_dir, mode=mode, mmap_dir=tmp_path / "mmap")
        assert cache.schema.num_classes == VOCAB and cache.schema.token_form["form"] == form
        for name, values in want.items():
            stored, stored_offsets = cache.token_values(f"{form}_{name}")
            np.testing.assert_array_equal(stored, values)
            np.testing.assert_array_equal(stored_offsets, offsets)
        batch = cache.batch(picked)
        targets, mask = batch.tokens.targets, batch.tokens.mask.numpy()
        assert isinstance(targets, SampledTokens if form == "sampled" else TopKTokens)
        positions = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in picked])
        for name, values in want.items():
            np.testing.assert_array_equal(
                getattr(targets, name).numpy()[mask],
                values[positions].astype(np.float32 if name != "ids" else np.int64),
            )
        if form == "sampled":
            assert (targets.counts.sum(-1)[batch.tokens.mask] == 8).all()


@pytest.mark.parametrize("form", ["sampled", "top_k"])
def test_the_loss_on_read_back_equals_the_loss_on_the_in_memory_form(tmp_path, form):
    rows, params = lm_rows(num_rows=8), _params("zarr", form)
    params = params.model_copy(update={"batch_size": 8})  # one teacher batch: one in-memory form
    result = build(tmp_path, rows, lm_teacher(tmp_path / "lm.onnx"), params)
    _, in_memory = _expected(rows, params)
    batch = open_cache(result.store_dir).batch(np.arange(8))
    mask = batch.tokens.mask
    student = torch.randn(*mask.shape, VOCAB, generator=torch.Generator().manual_seed(0))
    read_back = token_divergence(student, batch.tokens.targets, token_mask=mask)
    flat = (SampledTokens if form == "sampled" else TopKTokens).from_targets(in_memory)
    direct = token_divergence(student[mask], flat)
    torch.testing.assert_close(read_back, direct, rtol=1e-6, atol=1e-6 * float(direct.abs()))


def test_a_changed_token_form_starts_the_scratch_build_over(tmp_path, caplog):
    rows, teacher = lm_rows(), lm_teacher(tmp_path / "lm.onnx")
    first = create_store(
        tmp_path / "s", rows, teacher, "t" * 64, rows.fingerprint, _params("zarr", "sampled")
    )
    again = create_store(
        tmp_path / "s", rows, teacher, "t" * 64, rows.fingerprint, _params("zarr", "sampled", draws=9)
    )
    assert first.metadata.build_fingerprint != again.metadata.build_fingerprint
    assert "starting over" in caplog.text and "token_logits" in caplog.text
    dense = create_store(tmp_path / "d", rows, teacher, "t" * 64, rows.fingerprint, small_params())
    assert dense.layout.token_form is None and "token_logits" not in dense.metadata.params


def test_a_form_the_cache_does_not_hold_is_refused_naming_the_param(tmp_path):
    result = build(tmp_path, lm_rows(), lm_teacher(tmp_path / "lm.onnx"), _params("zarr", "top_k"))
    cache = open_cache(result.store_dir)
    spec = cache.schema.token_form
    check_token_form(result.store_dir, spec, VOCAB, "top_k", student_vocab=VOCAB, longest=7, max_length=7)
    with pytest.raises(TokenFormMismatchError, match=r"cache.token_logits.form: sampled .*`dvc repro cache`"):
        check_token_form(result.store_dir, spec, VOCAB, "sampled")
    with pytest.raises(
        TokenFormMismatchError, match=f"vocabulary of {VOCAB} ids but the student predicts 50"
    ):
        check_token_form(result.store_dir, spec, VOCAB, "top_k", student_vocab=50)
    with pytest.raises(
        TokenFormMismatchError, match="rows of up to 7 tokens but the student takes at most 5"
    ):
        check_token_form(result.store_dir, spec, VOCAB, "top_k", longest=7, max_length=5)
    with pytest.raises(TokenFormMismatchError, match="dense form but top_k"):
        check_token_form(result.store_dir, None, VOCAB, "top_k")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["zarr", "parquet"])
def test_a_killed_token_form_build_resumes_byte_identical(tmp_path, store):
    from tests.cache._token_build_subprocess import params

    reference = build(tmp_path / "ref", lm_rows(), lm_teacher(tmp_path / "ref" / "lm.onnx"), params(store))

    def run(*extra):
        command = [sys.executable, "-m", "tests.cache._token_build_subprocess", str(tmp_path / "run"), store]
        return subprocess.run([*command, *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)

    killed = run("kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "run" / "cache" / "scratch").exists()
    assert run().returncode == 0
    assert tree_bytes(tmp_path / "run" / "cache" / "store") == tree_bytes(reference.store_dir)


def test_training_refuses_a_token_form_the_cache_does_not_hold_before_the_first_step():
    from types import SimpleNamespace

    from pipeline.cache.token_store import TokenFormMismatchError
    from pipeline.train.run import check_token_targets
    from tests.train.helpers import student_params

    sampled = SimpleNamespace(
        path="data/cache/store",
        schema=SimpleNamespace(
            logits="token", token_form={"form": "sampled", "vocab_size": 50}, num_classes=50
        ),
    )

    def asking(source):
        return student_params(loss={"kd": {"kind": "token_kd", "weight": 1.0, "teacher_source": source}})

    check_token_targets(sampled, asking("sampled"))  # the form it holds
    check_token_targets(sampled, asking("auto"))  # whatever it holds
    with pytest.raises(TokenFormMismatchError, match=r"holds per-token logits in the sampled form but top_k"):
        check_token_targets(sampled, asking("top_k"))
    dense = SimpleNamespace(path="c", schema=SimpleNamespace(logits="token", token_form=None, num_classes=50))
    with pytest.raises(
        TokenFormMismatchError, match=r"cache\.token_logits\.form: sampled .* `dvc repro cache`"
    ):
        check_token_targets(dense, asking("sampled"))


def test_a_sampled_cache_of_ids_and_counts_alone_stores_the_same_draws_in_three_bytes_an_id(tmp_path):
    rows, teacher = lm_rows(num_rows=8), lm_teacher(tmp_path / "lm.onnx")
    full = build(tmp_path / "full", rows, teacher, _params("zarr", "sampled"))
    alone = build(tmp_path / "alone", rows, teacher, _params("zarr", "sampled", store_log_probs=False))
    names = {name for name in read_metadata(alone.store_dir).layout.ragged_arrays() if "sampled" in name}
    assert names == {"tokens/sampled_ids", "tokens/sampled_counts"}
    full_cache, alone_cache = open_cache(full.store_dir), open_cache(alone.store_dir)
    for name in ("sampled_ids", "sampled_counts"):
        np.testing.assert_array_equal(alone_cache.token_values(name)[0], full_cache.token_values(name)[0])
    targets = alone_cache.batch(np.arange(8)).tokens.targets
    assert targets.log_probs is None and targets.log_normalizers is None
    form = cache_report(alone_cache)["token_form"]
    assert form["log_probs"] is False
    assert form["bytes_per_token_ragged"] == pytest.approx(3 * form["mean_distinct_ids"])  # uint16 + uint8


def test_normalizer_temperatures_without_the_log_probs_are_refused_naming_both():
    with pytest.raises(ValueError, match="normalizer_temperatures need the stored log-probs"):
        TokenLogitsParams(form="sampled", store_log_probs=False, normalizer_temperatures=[2.0])
