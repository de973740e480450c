"""Train the members of one seed from the cache: every batch is read once and shared by all members.

A single student is a cohort of one. Per step each member runs its student on the batch's inputs
and its recipe on (its outputs, the cached teacher outputs, the detached logits of the other
members); each member has its own optimiser. The teacher never runs here.

Determinism: `torch.manual_seed(seed)` before the modules are built; the order of epoch `e` is a
numpy PCG64 permutation seeded by (seed, e), so a resumed run needs only (epoch, step in epoch);
the torch RNG states (dropout, negative sampling; CPU, and CUDA on a GPU) are saved in every
checkpoint. How a step runs (precision, micro-batches, compile, processes) is pipeline/train/step.py;
the rows each process reads, pipeline/train/distributed.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.errors import DistilleryError
from pipeline.losses._contract import TapShapes
from pipeline.losses.recipe import Recipe, build_recipe
from pipeline.students.inputs import check_student_inputs
from pipeline.students.registry import build_student
from pipeline.train.checkpoint import TrainingState, load_checkpoint, restore_members, save_checkpoint
from pipeline.train.data import TrainingData
from pipeline.train.device import rng_states, set_rng_states
from pipeline.train.distributed import SINGLE, Ranks, local_rows, seed_step
from pipeline.train.loader import host_batches
from pipeline.train.params import StudentParams
from pipeline.train.prefetch import device_batches
from pipeline.train.schedule import build_optimizer, learning_rate, set_learning_rate
from pipeline.train.step import Stepper, grouped, micro_batch_size
from pipeline.train.validation import ValidationSet, evaluate_members


class CohortError(DistilleryError, ValueError):
    """A recipe needs cohort peers (a `mutual` term) but the student is trained alone."""


class DivergedError(DistilleryError, FloatingPointError):
    """The loss became NaN or infinite. Found when the epoch's sums are read back (at the next
    checkpoint or the epoch's end, see `EpochSums`); the last checkpoint written before is kept."""


@dataclass
class Member:
    """One student being trained: its module, its recipe (which owns projections) and optimiser."""

    name: str
    model: torch.nn.Module
    recipe: Recipe
    optimizer: torch.optim.Optimizer


def build_members(params: StudentParams, data: TrainingData, seed: int, device="cpu") -> list[Member]:
    """Seed torch, then build each member's student, recipe (sized from the taps) and optimiser."""
    torch.manual_seed(seed)
    members = []
    member_params = params.members()
    for name, (arch, loss) in member_params.items():
        model = build_student(arch, data.input_shape, data.num_classes)
        if data.fields is not None:
            check_student_inputs(data.student, data.fields.mapping, data.fields.source.specs(), model)
        shapes = TapShapes(
            data.num_classes,
            dict(model.tap_shapes),
            teacher_tap_shapes(data.reader.schema),
            getattr(data.reader.schema, "logits", "row") != "none",
        )
        recipe = build_recipe(loss, shapes)
        if recipe.needs_peers and len(member_params) < 2:
            raise CohortError(
                "the recipe has a `mutual` term, which needs cohort peers; train this student "
                "in a `cohort:` with at least two members, or drop the term"
            )
        model.to(device)
        recipe.to(device)
        optimizer = build_optimizer([*model.parameters(), *recipe.parameters()], params.optimizer)
        members.append(Member(name, model, recipe, optimizer))
    return members


def teacher_tap_shapes(schema) -> dict[str, tuple]:
    """Teacher tap -> per-row shape: the cache's per-row taps, and its per-token taps as
    (None, *token_shape) (a variable axis of the batch's longest row, padded, with `tap_mask`)."""
    per_token = {tap: (None, *shape) for tap, shape in getattr(schema, "token_shapes", {}).items()}
    return {**dict(schema.feature_shapes), **per_token}


def bank_taps(members: list[Member]) -> set[str] | None:
    """Teacher taps that the members' bank-drawing terms read (from their tap pairs); None when a
    term does not say (then every tap is banked); empty when no term needs a bank."""
    taps: set[str] = set()
    for member in members:
        for name, term in member.recipe.terms.items():
            if getattr(term, "needs_feature_bank", False):
                pairs = getattr(member.recipe.params.get(name), "pairs", None)
                if pairs is None:
                    return None
                taps |= {pair.teacher for pair in pairs()}
    return taps


_BANK_ROWS_PER_READ = 1 << 16


def feature_bank(data: TrainingData, device, taps: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Teacher tap -> (N_cache, *shape) float32 features of every cache row (indexed by cache row),
    for recipes that draw negatives from the whole cache (CRD); only `taps` when given. Read through
    the reader's `batch`, a block of rows at a time, into the bank itself (one copy of the taps)."""
    reader = data.reader
    bank = {
        tap: torch.empty((len(reader), *shape), dtype=torch.float32, device=device)
        for tap, shape in reader.schema.feature_shapes.items()
        if taps is None or tap in taps
    }
    for start in range(0, len(reader), _BANK_ROWS_PER_READ):
        rows = np.arange(start, min(start + _BANK_ROWS_PER_READ, len(reader)), dtype=np.int64)
        features = reader.batch(rows).features
        for tap, values in bank.items():
            values[rows[0] : rows[-1] + 1] = features[tap]
    return bank


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped; one batch if rows < batch size)."""
    return max(num_rows // batch_size, 1)


def _epoch_rows(data: TrainingData, seed: int, epoch: int, batch_size: int, skip_batches: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(data.epoch_rows(seed, epoch))
    usable = steps_per_epoch(len(order), batch_size) * min(batch_size, len(order))
    return order[skip_batches * batch_size : usable]


class EpochSums:
    """Per member, the running sums of this epoch's logged values (the loss and each term), kept
    as one float64 tensor on the training device and read back only when the state is needed (a
    checkpoint, the epoch's end): no host sync per step, which on an accelerator would stall the
    queue, and fewer small ops than one `.item()` per term on a CPU.

    A NaN or infinite loss is therefore found at the next read-back, not at its step; the state
    and checkpoints are never written from such sums (`flush_into` raises DivergedError first).
    """

    def __init__(self):
        self._names: dict[str, tuple[str, ...]] = {}  # a recipe returns the same terms every step
        self._sums: dict[str, torch.Tensor] = {}
        self._lr_sum = 0.0

    def add_lr(self, lr: float) -> None:
        """Add one step's learning rate (shared by the members; logged as each member's `lr`)."""
        self._lr_sum += lr

    def add(self, member: str, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Add one step's `total` and unweighted `terms` (scalars) of `member`."""
        values = torch.stack([total.detach(), *(value.detach() for value in terms.values())])
        if member in self._sums:
            self._sums[member] += values
        else:
            self._names[member] = ("loss", *terms)
            self._sums[member] = values.to(torch.float64)

    def flush_into(self, running: dict[str, dict[str, float]], epoch: int) -> None:
        """Add the sums (and the learning rates) into `running` (member -> key -> float) and reset;
        DivergedError when a sum is not finite (a step since the last flush had a NaN or inf loss)."""
        read_back = {m: dict(zip(self._names[m], sums.tolist())) for m, sums in self._sums.items()}
        for member, values in read_back.items():
            if not all(math.isfinite(v) for v in values.values()):
                raise DivergedError(
                    f"member {member or '(student)'}: the loss became {values.get('loss')} during epoch "
                    f"{epoch} (sums since the last checkpoint: "
                    f"{', '.join(f'{k}={v:.4g}' for k, v in values.items())}); "
                    "lower `optimizer.lr` or the weight of the term that exploded"
                )
        for member, values in read_back.items():
            sums = running.setdefault(member, {})
            for key, value in {**values, "lr": self._lr_sum}.items():
                sums[key] = sums.get(key, 0.0) + value
        self._sums, self._lr_sum = {}, 0.0


def _close_epoch(
    members: list[Member], state: TrainingState, val: ValidationSet, params: StudentParams
) -> dict[str, dict[str, float]]:
    """Validate, turn the epoch's running sums into means, append to the history, advance the state
    (`state.running` must already hold the whole epoch: see `EpochSums.flush_into`)."""
    metrics = {}
    for member, evaluated in zip(members, evaluate_members(members, val, params.eval_batch_size)):
        sums = state.running.get(member.name, {})
        metrics[member.name] = {
            ("lr" if k == "lr" else f"train/{k}"): v / state.step_in_epoch for k, v in sums.items()
        } | evaluated
    state.history.append(metrics)
    state.epoch += 1
    state.step_in_epoch = 0
    state.running = {}
    state.done = state.epoch >= params.epochs
    return metrics


def run_seed(
    params: StudentParams,
    data: TrainingData,
    seed: int,
    scratch_dir: Path,
    config_hash: str,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, dict[str, float]]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    device: torch.device | str = "cpu",
    ranks: Ranks = SINGLE,
) -> tuple[list[Member], TrainingState]:
    """Train (or resume, or just reload) one seed; returns the trained members and the final state.

    scratch_dir: this seed's checkpoint directory. A checkpoint is written at the first step or
    epoch end `params.checkpoint_every_seconds` after the last one, every
    `params.checkpoint_every_steps` steps when that is set, and when training ends (a finished
    seed is reloaded, not retrained). on_epoch(epoch, metrics)
    is called after each epoch (also replayed for epochs restored from a checkpoint, so loggers
    can rebuild their files); on_step(global_step) after every optimiser step and its checkpoint.
    ranks: this process among those training the student (pipeline/train/distributed.py): it reads
    its slice of each batch, and only rank 0 writes checkpoints.
    """
    device = torch.device(device)
    members = build_members(params, data, seed, device)
    per_epoch = steps_per_epoch(len(data.train_rows), params.batch_size)
    total_steps = per_epoch * params.epochs
    warmup_steps = int(round(params.schedule.warmup_epochs * per_epoch))
    global_batch = min(params.batch_size, len(data.train_rows))
    micro_batch = micro_batch_size(global_batch, params, ranks)
    restored = load_checkpoint(scratch_dir, config_hash)
    scaler_state = None
    if restored is None:
        state = TrainingState(config_hash=config_hash)
    else:
        state, payload = restored
        set_rng_states(restore_members(payload, members), device)
        scaler_state = payload.get("scaler")
    step = Stepper(members, params, device, ranks, scaler_state)
    for epoch, metrics in enumerate(state.history):
        if on_epoch:
            on_epoch(epoch, metrics)
    needs_bank = any(m.recipe.needs_feature_bank for m in members)
    bank = feature_bank(data, device, bank_taps(members)) if needs_bank else None

    val = ValidationSet.read(data, params.eval_batch_size, device)
    sums = EpochSums()
    last_checkpoint = time.monotonic()

    def checkpoint() -> None:
        nonlocal last_checkpoint
        sums.flush_into(state.running, state.epoch)
        if ranks.writes:
            save_checkpoint(scratch_dir, state, members, rng_states(device), step.scaler_state())
        last_checkpoint = time.monotonic()

    def checkpoint_due() -> bool:  # by time: a few per run, whatever an epoch costs (docs/training.md)
        return time.monotonic() - last_checkpoint >= params.checkpoint_every_seconds

    bar = tqdm(
        total=total_steps,
        initial=state.global_step,
        disable=not progress,
        leave=False,
        desc=f"seed {seed}",
        unit="step",
    )
    for member in members:
        member.model.train()
        member.recipe.train()
    while state.epoch < params.epochs:
        rows = _epoch_rows(data, seed, state.epoch, params.batch_size, state.step_in_epoch)
        rows = local_rows(rows, global_batch, ranks)
        host = host_batches(data, rows, micro_batch, params.loader_workers)
        for micro_batches in grouped(device_batches(host, device), params.accumulate_steps):
            lr = learning_rate(
                state.global_step, total_steps, warmup_steps, params.optimizer.lr, params.schedule
            )
            for member in members:
                set_learning_rate(member.optimizer, lr)
            seed_step(seed, state.global_step, ranks)
            step(micro_batches, state.epoch, bank, sums)
            sums.add_lr(lr)
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(1)
            every = params.checkpoint_every_steps
            stepped = bool(every) and state.global_step % every == 0
            if state.step_in_epoch < per_epoch and (stepped or checkpoint_due()):
                checkpoint()
            if on_step:
                on_step(state.global_step)
        sums.flush_into(state.running, state.epoch)
        metrics = _close_epoch(members, state, val, params)
        bar.set_postfix(
            {f"{m or 'val'}_acc": f"{v.get('val/acc', math.nan):.3f}" for m, v in metrics.items()}
        )
        if state.done or checkpoint_due():
            checkpoint()
        if on_epoch:
            on_epoch(state.epoch - 1, metrics)
    bar.close()
    for member in members:
        member.model.eval()
    return members, state
