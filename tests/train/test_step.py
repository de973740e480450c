"""The training step's knobs: precision, accumulate_steps, compile, device. With every knob at its
default a CPU run is bit-identical to the plain step it replaced."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from pipeline.cache.reader import iter_batches
from pipeline.config import ParamsError
from pipeline.losses._contract import LossInputs
from pipeline.losses.recipe import build_recipe
from pipeline.train.data import join_training_data
from pipeline.train.device import DeviceError, resolve_device
from pipeline.train.loop import EpochSums, build_members, run_seed, steps_per_epoch
from pipeline.train.params import validate_students
from pipeline.train.prefetch import device_batches
from pipeline.train.schedule import learning_rate, set_learning_rate
from pipeline.train.step import CompileError, Stepper
from tests.train.helpers import make_cache, make_prepared, student_params

# Dropout draws from the torch RNG every step, the feature term's projection lives in the recipe:
# both must come out of the new step exactly as out of the old one.
SINGLE = {
    "arch": {"kind": "mlp", "hidden": [32, 16], "dropout": 0.2},
    "loss": {
        "ce": {"kind": "ce", "weight": 0.5},
        "kd": {"kind": "hinton", "weight": 0.5},
        "feature": {"kind": "feature", "weight": 1.0, "student_tap": "embed", "teacher_tap": "embed"},
    },
}
COHORT = {
    "arch": None,
    "loss": {"ce": {"kind": "ce", "weight": 1.0}, "mutual": {"kind": "mutual", "weight": 1.0}},
    "cohort": {
        "members": {
            "a": {"arch": {"kind": "mlp", "hidden": [16], "dropout": 0.1}},
            "b": {"arch": {"kind": "cnn", "channels": [4], "embed": 8}},
        }
    },
}


@pytest.fixture(scope="module")
def prepared():
    return make_prepared()


@pytest.fixture(scope="module")
def data(prepared):
    return join_training_data(make_cache(prepared), prepared, "all")


@pytest.fixture(scope="module")
def labelled(prepared):
    return join_training_data(make_cache(prepared), prepared, "labelled")


def _plain_step_run(params, data, seed):
    """The loop as it was before precision, accumulation, compile and processes existed (main at
    a0b3428): one batch per step, forward, recipe, one backward of the summed losses, step."""
    members = build_members(params, data, seed)
    per_epoch = steps_per_epoch(len(data.train_rows), params.batch_size)
    total_steps = per_epoch * params.epochs
    warmup = int(round(params.schedule.warmup_epochs * per_epoch))
    sums, step = EpochSums(), 0
    for epoch in range(params.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(data.train_rows)
        for batch in iter_batches(
            data.reader, params.batch_size, rows=order[: per_epoch * params.batch_size]
        ):
            lr = learning_rate(step, total_steps, warmup, params.optimizer.lr, params.schedule)
            for member in members:
                set_learning_rate(member.optimizer, lr)
            rows = torch.from_numpy(np.asarray(batch.rows, np.int64))
            inputs = torch.from_numpy(data.inputs[batch.rows])
            outputs = [member.model(inputs) for member in members]
            totals = []
            for index, (member, output) in enumerate(zip(members, outputs)):
                peers = (
                    [o.logits.detach() for j, o in enumerate(outputs) if j != index]
                    if len(members) > 1
                    else []
                )
                total, terms = member.recipe(
                    LossInputs(
                        student_logits=output.logits,
                        teacher_logits=batch.logits,
                        labels=batch.label,
                        student_features=output.features,
                        teacher_features=batch.features,
                        teacher_sparse=batch.sparse,
                        peer_logits=peers,
                        rows=rows,
                        epoch=epoch,
                    )
                )
                sums.add(member.name, total, terms)
                totals.append(total)
                member.optimizer.zero_grad(set_to_none=True)
            (totals[0] if len(totals) == 1 else torch.stack(totals).sum()).backward()
            for member in members:
                member.optimizer.step()
            step += 1
    return members


def _state(members):
    state = {}
    for member in members:
        for part in ("model", "recipe"):
            for name, value in getattr(member, part).state_dict().items():
                state[f"{member.name}/{part}/{name}"] = value
    return state


@pytest.mark.parametrize("overrides", [SINGLE, COHORT], ids=["single", "cohort"])
def test_a_cpu_run_with_every_new_knob_at_its_default_is_bit_identical_to_the_plain_step(
    tmp_path, data, overrides
):
    params = student_params(**overrides, epochs=2)
    reference = _state(_plain_step_run(params, data, seed=0))
    explicit = student_params(
        **overrides, epochs=2, precision="fp32", accumulate_steps=1, compile=False, nproc=1, device="cpu"
    )
    for tag, run_params in (("defaults", params), ("explicit", explicit)):
        members, _ = run_seed(run_params, data, 0, tmp_path / tag, "hash", progress=False)
        state = _state(members)
        assert state.keys() == reference.keys()
        for name, value in reference.items():
            assert torch.equal(state[name], value), (tag, name)


def _max_relative_difference(first, second):
    """max |a - b| over all tensors, over the largest |a|: a tolerance scaled to the weights."""
    scale = max(value.abs().max().item() for value in first.values() if value.is_floating_point())
    return (
        max((first[n] - second[n]).abs().max().item() for n in first if first[n].is_floating_point()) / scale
    )


def test_accumulated_micro_batches_give_the_step_of_the_whole_batch(tmp_path, labelled):
    # Labelled rows and no dropout: every term is a mean over the micro-batch's rows, so two halves
    # of a batch give its gradient up to float rounding.
    base = {"arch": {"kind": "mlp", "hidden": [32, 16]}, "batch_size": 32, "epochs": 2}
    whole, _ = run_seed(student_params(**base), labelled, 0, tmp_path / "whole", "h", progress=False)
    halves, _ = run_seed(
        student_params(**base, accumulate_steps=4), labelled, 0, tmp_path / "quarters", "h", progress=False
    )
    assert _max_relative_difference(_state(whole), _state(halves)) < 1e-5


def test_accumulation_logs_the_mean_of_the_whole_batch(tmp_path, labelled):
    base = {"arch": {"kind": "mlp", "hidden": [32, 16]}, "batch_size": 32, "epochs": 1}
    _, whole = run_seed(student_params(**base), labelled, 0, tmp_path / "a", "h", progress=False)
    _, split = run_seed(
        student_params(**base, accumulate_steps=2), labelled, 0, tmp_path / "b", "h", progress=False
    )
    for key, value in whole.history[0][""].items():
        assert split.history[0][""][key] == pytest.approx(value, rel=1e-5), key


class _DtypeSpy(torch.nn.Module):
    """Wraps a recipe and records what it was given: the dtype of the student's logits and taps,
    and whether autocast was on while it ran."""

    def __init__(self, recipe, seen):
        super().__init__()
        self.recipe, self.seen = recipe, seen
        self.needs_feature_bank = recipe.needs_feature_bank
        self.needs_peers = recipe.needs_peers

    def forward(self, inputs):
        self.seen.append(
            (
                inputs.student_logits.dtype,
                {v.dtype for v in inputs.student_features.values()},
                torch.is_autocast_enabled("cpu"),
            )
        )
        return self.recipe(inputs)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_the_forward_in_autocast_and_every_loss_term_in_float32(
    tmp_path, data, precision, monkeypatch
):
    seen, forward_dtypes = [], set()
    params = student_params(**SINGLE, epochs=1, precision=precision)

    def builder(loss, shapes):
        return _DtypeSpy(build_recipe(loss, shapes), seen)

    monkeypatch.setattr("pipeline.train.loop.build_recipe", builder)
    members = build_members(params, data, 0)
    members[0].model.register_forward_hook(lambda m, i, output: forward_dtypes.add(output.logits.dtype))
    trained, state = run_seed(params, data, 0, tmp_path, "hash", progress=False)
    assert seen and all(entry == (torch.float32, {torch.float32}, False) for entry in seen)
    assert all(p.dtype == torch.float32 for p in trained[0].model.parameters())  # fp32 master weights
    assert np.isfinite(state.history[0][""]["train/loss"])
    # the hook above watched a model built the same way: under autocast the logits come out reduced
    with torch.autocast("cpu", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision]):
        members[0].model(torch.zeros(2, 1, 8, 8))
    assert forward_dtypes == {{"bf16": torch.bfloat16, "fp16": torch.float16}[precision]}


def test_fp16_checkpoints_keep_the_loss_scaler(tmp_path, data):
    from pipeline.train.checkpoint import load_checkpoint

    params = student_params(**SINGLE, epochs=1, precision="fp16")
    run_seed(params, data, 0, tmp_path, "hash", progress=False)
    _, payload = load_checkpoint(tmp_path, "hash")
    assert payload["scaler"]["scale"] > 0 and "_growth_tracker" in payload["scaler"]
    saved = {**payload["scaler"], "scale": 8.0, "_growth_tracker": 3}
    resumed = Stepper(build_members(params, data, 0), params, torch.device("cpu"), scaler_state=saved)
    assert resumed.scaler_state() == saved
    run_seed(student_params(**SINGLE, epochs=1), data, 0, tmp_path / "fp32", "hash", progress=False)
    assert "scaler" not in load_checkpoint(tmp_path / "fp32", "hash")[1]


def test_a_batch_that_does_not_split_into_equal_micro_batches_is_refused():
    student = {
        "arch": {"kind": "mlp"},
        "loss": {"ce": {"kind": "ce"}},
        "batch_size": 30,
        "accumulate_steps": 4,
    }
    with pytest.raises(ParamsError, match="batch_size 30 does not split into nproc 1 x accumulate_steps 4"):
        validate_students({"s": student})


def test_terms_relating_the_rows_of_a_batch_are_refused_with_accumulation():
    loss = {
        "ce": {"kind": "ce", "weight": 1.0},
        "rkd": {"kind": "rkd", "weight": 1.0, "student_tap": "embed", "teacher_tap": "embed"},
    }
    with pytest.raises(ParamsError, match="loss terms rkd relate the rows of a batch.*accumulate_steps: 1"):
        validate_students({"s": {"arch": {"kind": "mlp"}, "loss": loss, "accumulate_steps": 2}})


def test_compile_runs_the_student_through_torch_compile(tmp_path, data, monkeypatch):
    # The eager backend traces with dynamo (the taps' forward hooks included) without a C++
    # toolchain; it computes what the plain forward computes.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    base = {**SINGLE, "arch": {"kind": "mlp", "hidden": [32, 16]}, "epochs": 1}
    plain, _ = run_seed(student_params(**base), data, 0, tmp_path / "plain", "h", progress=False)
    compiled, _ = run_seed(
        student_params(**base, compile=True), data, 0, tmp_path / "compiled", "h", progress=False
    )
    assert _max_relative_difference(_state(plain), _state(compiled)) < 1e-5


def test_a_failing_torch_compile_is_one_clear_error(tmp_path, data, monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    def broken(model, **kwargs):
        def forward(*args):
            raise BackendCompilerFailed("inductor", RuntimeError("no C++ compiler found"), None)

        return forward

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(CompileError, match="torch.compile failed.*set `compile: false`"):
        run_seed(student_params(**SINGLE, epochs=1, compile=True), data, 0, tmp_path, "h", progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_device_cuda_without_cuda_is_one_clear_line(tmp_path):
    with pytest.raises(
        DeviceError, match=r"students.s.device: cuda, but torch .* sees no CUDA GPU here; set device: auto"
    ):
        resolve_device("cuda", "s")
    assert resolve_device("auto") == torch.device("cpu")


def test_batches_reach_the_device_in_order_with_their_rows(data):
    rows = data.train_rows[:40]
    host = [(b, data.inputs[b.rows]) for b in iter_batches(data.reader, 16, rows=rows)]
    moved = list(device_batches(iter(host), torch.device("cpu")))
    assert [len(b.rows) for b in moved] == [16, 16, 8]
    for (teacher, inputs), batch in zip(host, moved):
        assert torch.equal(batch.rows, torch.from_numpy(np.asarray(teacher.rows, np.int64)))
        assert torch.equal(batch.inputs, torch.from_numpy(inputs))
        assert torch.equal(batch.teacher.logits, teacher.logits)
