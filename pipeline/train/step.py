"""One optimiser step of every member of a cohort (a single student is a cohort of one).

A step trains on one global batch of `batch_size` rows. With `nproc` processes each rank holds
`batch_size / nproc` of them (pipeline/train/distributed.py), split again into `accumulate_steps`
micro-batches of `batch_size / (nproc * accumulate_steps)` rows that run forward and backward one
after the other, the gradients adding up in `.grad`. Each micro-batch's loss (a mean over its rows)
is divided by `accumulate_steps`, and DDP averages the gradients over the ranks, so the optimiser
sees the gradient of the mean loss over the whole batch: `batch_size` is the effective batch
whatever the split, and the learning rate needs no change. Terms that average over labelled rows
only (CE with unlabelled rows) average per micro-batch, a slightly different weighting when the
labelled rows are spread unevenly; terms relating rows to each other are refused
(`pipeline.train.params.split_refusal`).

The members' forward runs under autocast (`precision`, pipeline/train/device.py); their logits and
taps are cast to float32 before the recipe, which runs outside autocast, so every loss term is
computed in float32 as in a float32 run. With the defaults (fp32, one micro-batch, one process, no
compile) the step is the plain one: forward, recipe, one backward of the members' summed losses,
optimiser steps, with the same operations in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from pipeline.errors import DistilleryError
from pipeline.losses._contract import LossInputs
from pipeline.students.inputs import call_student
from pipeline.train.device import autocast, grad_scaler
from pipeline.train.distributed import SINGLE, DistributedError, Ranks, mean_over_ranks, wrap
from pipeline.train.prefetch import DeviceBatch

if TYPE_CHECKING:
    from pipeline.train.loop import EpochSums, Member
    from pipeline.train.params import StudentParams


class CompileError(DistilleryError):
    """torch.compile could not compile a student's forward."""


_COMPILER_MODULES = ("torch._dynamo", "torch._inductor")


class BatchSplitError(DistilleryError, ValueError):
    """The global batch does not split into equal parts over the processes and micro-batches."""


def micro_batch_size(global_batch: int, params: StudentParams, ranks: Ranks) -> int:
    """Rows of one micro-batch: the global batch (`batch_size`, or every training row when fewer)
    over nproc x accumulate_steps equal parts; BatchSplitError when it does not split evenly."""
    parts = ranks.world * params.accumulate_steps
    if global_batch % parts:
        raise BatchSplitError(
            f"a batch of {global_batch} rows (batch_size {params.batch_size}, or every training row "
            f"when fewer) does not split into nproc {ranks.world} x accumulate_steps "
            f"{params.accumulate_steps} equal parts; change batch_size, nproc or accumulate_steps"
        )
    return global_batch // parts


def teacher_taps(teacher) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The teacher taps a loss term reads: the per-row ones (B, *shape) and the per-token ones
    padded (B, L, *shape), with the (B, L) bool mask of real tokens (None when none is per token)."""
    tokens = getattr(teacher, "tokens", None)
    if tokens is None:
        return teacher.features, None
    padded = {name: value for name, value in tokens.padded.items() if name != "logits"}
    return {**teacher.features, **padded}, tokens.mask


def grouped(batches, size: int):
    """Consecutive groups of `size` items (one optimiser step's micro-batches)."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


class Stepper:
    """Runs the optimiser steps of `members` (their modules on `device`) as `params` asks:
    precision, accumulate_steps, compile; on several `ranks`, through DDP.

    The members keep their bare modules (checkpoints and outputs read those); the step calls
    their DDP and compiled wrappers. scaler_state: a checkpoint's fp16 loss-scaler state."""

    def __init__(
        self,
        members: list[Member],
        params: StudentParams,
        device: torch.device,
        ranks: Ranks = SINGLE,
        scaler_state: dict[str, Any] | None = None,
    ) -> None:
        self.members = members
        self.device = device
        self.precision = params.precision
        self.ranks = ranks
        self.scaler = grad_scaler(device, params.precision)
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)
        self.synced = [wrap(module, device, ranks) for m in members for module in (m.model, m.recipe)]
        self.models = self.synced[0::2]
        self.recipes = self.synced[1::2]
        self.compile_pending = params.compile
        if params.compile:
            self.models = [torch.compile(model) for model in self.models]

    def scaler_state(self) -> dict[str, Any] | None:
        """The fp16 loss scaler's state for a checkpoint (None without one)."""
        return None if self.scaler is None else self.scaler.state_dict()

    def __call__(self, batches: Sequence[DeviceBatch], epoch: int, bank, sums: EpochSums) -> None:
        """One optimiser step of every member on `batches` (this rank's micro-batches of one
        global batch); the step's loss and terms are added to `sums` (their mean over the batch)."""
        try:
            self._step(batches, epoch, bank, sums)
        except DistilleryError:
            raise
        except Exception as error:
            if isinstance(error, RuntimeError) and "Expected to have finished reduction" in str(error):
                raise DistributedError(
                    "some parameters of the student or its recipe got no gradient, which DDP cannot "
                    "average over processes; remove the modules the loss does not use, or train with "
                    "nproc: 1"
                ) from None
            if self.compile_pending and type(error).__module__.startswith(_COMPILER_MODULES):
                raise self._compile_error(error) from error
            raise
        self.compile_pending = False

    @staticmethod
    def _compile_error(error: Exception) -> CompileError:
        first = (str(error).strip().splitlines() or [""])[0][:300]
        return CompileError(
            f"torch.compile failed on the student's forward ({type(error).__name__}: {first}); set "
            "`compile: false` to train without it"
        )

    def _step(self, batches: Sequence[DeviceBatch], epoch: int, bank, sums: EpochSums) -> None:
        members = self.members
        for member in members:
            member.optimizer.zero_grad(set_to_none=True)
        plain = len(batches) == 1 and self.ranks.world == 1
        logged: list[dict[tuple[str, ...], torch.Tensor]] = [{} for _ in members]
        for index, batch in enumerate(batches):
            with self._no_sync(last=index == len(batches) - 1):
                totals = self._losses(batch, epoch, bank, sums if plain else None, logged, len(batches))
                # One backward of the members' summed losses: their graphs share nothing (peer
                # logits are detached, the teacher is data), so each parameter gets exactly the
                # gradient of its own member's loss, with one autograd pass instead of M.
                loss = totals[0] if len(totals) == 1 else torch.stack(totals).sum()
                if len(batches) > 1:
                    loss = loss / len(batches)
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        for member, values in zip(members, logged):
            for names, value in values.items():
                value = mean_over_ranks(value, self.ranks)
                sums.add(member.name, value[0], dict(zip(names[1:], value[1:])))
        if self.scaler is None:
            for member in members:
                member.optimizer.step()
            return
        for member in members:
            self.scaler.step(member.optimizer)
        self.scaler.update()

    def _losses(
        self,
        batch: DeviceBatch,
        epoch: int,
        bank,
        sums: EpochSums | None,
        logged: list[dict[tuple[str, ...], torch.Tensor]],
        parts: int,
    ) -> list[torch.Tensor]:
        """Each member's total loss on one micro-batch; the values go to `sums` directly, or, when
        None, into `logged` (member -> term names -> summed values / parts) for one add per step."""
        with autocast(self.device, self.precision):
            outputs = [call_student(model, batch.inputs) for model in self.models]
        logits = [output.logits.float() for output in outputs]  # the same tensor when float32
        teacher = batch.teacher
        teacher_features, tap_mask = teacher_taps(teacher)
        tokens = getattr(teacher, "tokens", None)
        teacher_tokens = None if tokens is None else tokens.targets
        totals = []
        for index, (member, recipe, output) in enumerate(zip(self.members, self.recipes, outputs)):
            peers = [o.detach() for j, o in enumerate(logits) if j != index] if len(outputs) > 1 else []
            total, terms = recipe(
                LossInputs(
                    student_logits=logits[index],
                    teacher_logits=teacher.logits,
                    labels=teacher.label,
                    student_features={name: value.float() for name, value in output.features.items()},
                    teacher_features=teacher_features,
                    teacher_sparse=teacher.sparse,
                    peer_logits=peers,
                    teacher_feature_bank=bank,
                    rows=batch.rows,
                    epoch=epoch,
                    tap_mask=tap_mask,
                    teacher_tokens=teacher_tokens,
                    # per-token student logits (B, L, V) are scored on the cache's real tokens
                    token_mask=tap_mask if logits[index].dim() == 3 else None,
                )
            )
            if sums is not None:
                sums.add(member.name, total, terms)
            else:
                names = ("loss", *terms)
                values = torch.stack([total.detach(), *(v.detach() for v in terms.values())]).double() / parts
                into = logged[index]
                into[names] = into[names] + values if names in into else values
            totals.append(total)
        return totals

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP's no_sync on every wrapped module for all micro-batches but the last: the gradients
        add up locally and are averaged over the ranks once per step."""
        stack = contextlib.ExitStack()
        if not last:
            for module in self.synced:
                if hasattr(module, "no_sync"):
                    stack.enter_context(module.no_sync())
        return stack
