"""Training from the cache: deterministic per seed, cohorts share each batch, unlabelled rows teach softly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.cache.batch import UNLABELLED
from pipeline.losses._contract import LossInputs
from pipeline.train.data import join_training_data
from pipeline.train.loop import CohortError, build_members, run_seed
from pipeline.train.run import config_hash, train_from_reader
from tests.train.helpers import make_cache, make_prepared, student_params


@pytest.fixture(scope="module")
def prepared():
    return make_prepared()


@pytest.fixture(scope="module")
def cache(prepared):
    return make_cache(prepared)


def _train(tmp_path, prepared, cache, params, tag="run", **kwargs):
    return train_from_reader(
        "kd",
        params,
        cache,
        prepared,
        tmp_path / tag / "out",
        tmp_path / tag / "scratch",
        progress=False,
        threads=1,
        **kwargs,
    )


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_same_seed_twice_gives_identical_weights(tmp_path, prepared, cache):
    params = student_params(arch={"kind": "cnn", "channels": [4, 8], "embed": 16})
    _train(tmp_path, prepared, cache, params, "a")
    _train(tmp_path, prepared, cache, params, "b")
    first, second = _weights(tmp_path / "a/out/seed_0"), _weights(tmp_path / "b/out/seed_0")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_other_seeds_give_other_weights(tmp_path, prepared, cache):
    _train(tmp_path, prepared, cache, student_params(seeds=[0, 1]))
    zero, one = _weights(tmp_path / "run/out/seed_0"), _weights(tmp_path / "run/out/seed_1")
    assert not torch.equal(zero["classifier.weight"], one["classifier.weight"])


def test_outputs_follow_the_contract_and_the_summary_has_mean_and_std(tmp_path, prepared, cache):
    result = _train(tmp_path, prepared, cache, student_params(seeds=[0, 1], epochs=3))
    out = tmp_path / "run/out"
    summary = json.loads((out / "summary.json").read_text())
    model = summary["models"]["kd"]
    assert set(model["val_acc"]) == {"0", "1"}
    assert model["val_acc_mean"] == pytest.approx(np.mean(list(model["val_acc"].values())))
    assert model["val_acc_mean"] > 0.5  # the synthetic teacher is learnable
    config = json.loads((out / "seed_1/student.json").read_text())
    assert config["student"] == "kd" and config["seed"] == 1 and config["input_shape"] == [1, 8, 8]
    live = json.loads((out / "seed_0/live/metrics.json").read_text())
    assert {"loss", "ce", "kd"} <= set(live["train"]) and "acc" in live["val"] and live["step"] == 2
    assert result["out_dir"] == str(out)
    assert not (tmp_path / "run/scratch").exists()


class _CountingCache:
    """Wraps a reader and counts batch() calls (to see that a cohort reads each batch once)."""

    def __init__(self, reader):
        self._reader, self.calls = reader, 0
        self.schema = reader.schema

    def __len__(self):
        return len(self._reader)

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def batch(self, rows):
        self.calls += 1
        return self._reader.batch(rows)


def test_a_cohort_trains_every_member_in_one_pass_over_the_cache(tmp_path, prepared, cache):
    members = {
        "a": {"arch": {"kind": "mlp", "hidden": [16]}},
        "b": {"arch": {"kind": "mlp", "hidden": [48]}},
        "c": {"arch": {"kind": "cnn", "channels": [4], "embed": 8}},
    }
    loss = {"ce": {"kind": "ce", "weight": 0.5}, "mutual": {"kind": "mutual", "weight": 0.5}}
    params = student_params(arch=None, cohort={"members": members}, loss=loss, eval_batch_size=1000)
    counting = _CountingCache(cache)
    result = train_from_reader(
        "trio", params, counting, prepared, tmp_path / "out", tmp_path / "scratch", progress=False
    )
    steps = params.epochs * (200 // params.batch_size)
    val_batches = 1  # the val rows are read once per run, in one eval batch
    assert counting.calls == steps + val_batches
    assert sorted(result["models"]) == ["trio/a", "trio/b", "trio/c"]
    for member in "abc":
        config = json.loads((tmp_path / f"out/{member}/seed_0/student.json").read_text())
        assert config["member"] == member
        live = json.loads((tmp_path / f"out/{member}/seed_0/live/metrics.json").read_text())
        assert live["train"]["mutual"] > 0


def test_a_mutual_term_without_peers_is_refused(prepared, cache):
    params = student_params(loss={"mutual": {"kind": "mutual", "weight": 1.0}})
    data = join_training_data(cache, prepared, "all")
    with pytest.raises(CohortError, match="cohort"):
        build_members(params, data, 0)


def test_unlabelled_rows_contribute_soft_terms_only(prepared, cache):
    data = join_training_data(cache, prepared, "all")
    members = build_members(student_params(), data, 0)
    unlabelled = data.train_rows[cache.label[data.train_rows] == UNLABELLED][:16]
    assert len(unlabelled) == 16  # "all" trains on the unlabelled split too
    batch = cache.batch(unlabelled)
    model, recipe = members[0].model, members[0].recipe

    def gradient(weights):
        model.zero_grad()
        output = model(torch.from_numpy(data.inputs[batch.rows]))
        _, terms = recipe(
            LossInputs(output.logits, batch.logits, batch.label, output.features, batch.features)
        )
        sum(weights[k] * v for k, v in terms.items() if k in weights).backward()
        return terms, model.classifier.weight.grad.clone()

    terms, hard = gradient({"ce": 1.0})
    assert terms["ce"].item() == 0.0 and torch.count_nonzero(hard) == 0
    terms, soft = gradient({"kd": 1.0})
    assert terms["kd"].item() > 0 and torch.count_nonzero(soft) > 0


def test_a_finished_seed_is_reloaded_not_retrained(tmp_path, prepared, cache):
    params = student_params()
    data = join_training_data(cache, prepared, "all")
    digest = config_hash(params, prepared.fingerprint, cache)
    first, _ = run_seed(params, data, 0, tmp_path, digest, progress=False)
    steps = []
    again, state = run_seed(params, data, 0, tmp_path, digest, progress=False, on_step=steps.append)
    assert steps == [] and state.done
    assert torch.equal(first[0].model.classifier.weight, again[0].model.classifier.weight)


def test_a_checkpoint_for_other_params_is_not_resumed(tmp_path, prepared, cache):
    data = join_training_data(cache, prepared, "all")
    params = student_params()
    run_seed(params, data, 0, tmp_path, "hash-a", progress=False)
    steps = []
    run_seed(params, data, 0, tmp_path, "hash-b", progress=False, on_step=steps.append)
    assert len(steps) == params.epochs * 6


def test_a_student_tap_that_does_not_exist_is_refused_when_the_recipe_is_built(prepared, cache):
    from pipeline.losses._taps import MissingTapError

    params = student_params(
        loss={"feature": {"kind": "feature", "student_tap": "conv", "teacher_tap": "conv"}}
    )
    data = join_training_data(cache, prepared, "all")
    with pytest.raises(
        MissingTapError,
        match="student tap 'conv' does not exist; valid student taps: embed, hidden1, hidden2",
    ):
        build_members(params, data, 0)


def test_only_the_teacher_taps_a_bank_term_reads_are_banked(prepared, cache):
    from pipeline.train.loop import bank_taps, feature_bank

    crd = {"kind": "crd", "weight": 0.1, "student_tap": "embed", "teacher_tap": "embed", "negatives": "bank"}
    data = join_training_data(cache, prepared, "all")
    members = build_members(student_params(loss={"ce": {"kind": "ce"}, "crd": crd}), data, 0)
    assert bank_taps(members) == {"embed"}
    bank = feature_bank(data, "cpu", {"embed"})
    assert list(bank) == ["embed"] and bank["embed"].shape == (len(cache), 16)
    assert bank_taps(build_members(student_params(), data, 0)) == set()


def test_the_feature_bank_holds_every_cache_row_read_a_block_at_a_time(prepared, cache, monkeypatch):
    from pipeline.train import loop

    monkeypatch.setattr(loop, "_BANK_ROWS_PER_READ", 7)  # several blocks and a short last one
    data = join_training_data(cache, prepared, "all")
    bank = loop.feature_bank(data, "cpu")
    every_row = cache.batch(np.arange(len(cache))).features
    assert set(bank) == set(every_row)
    for tap, values in every_row.items():
        assert torch.equal(bank[tap], values)
