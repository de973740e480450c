"""Feature taps for loss terms: naming checks, and the projections between student and teacher.

A feature term names a student tap and a teacher tap (`TapPair`); when their shapes differ a
learned projection maps one side onto the other: `nn.Linear` for (B, D) taps (on the last axis of
(B, N, D) token taps) and a 1x1 convolution for (B, C, H, W) maps. The projection lives in the
adapter, so it moves with `.to(device)`, trains with the student and lands in its checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from pipeline.config import StrictModel
from pipeline.errors import DistilleryError
from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._probs import as_float32

Projection = Literal["teacher_to_student", "student_to_teacher", "none"]
"""Which side a learned projection maps: teacher_to_student maps the teacher onto the student
(phi(f_T)); student_to_teacher maps the student onto the teacher, as FitNets (Romero et al. 2015)
and TinyBERT (Jiao et al. 2020) do (docs/sources.md)."""


class MissingTapError(DistilleryError, KeyError):
    """A loss term names a feature tap that the student or the teacher does not export."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TapShapeError(DistilleryError, ValueError):
    """Two taps cannot be compared or projected onto each other."""


class NarrowTapError(TapShapeError):
    """A tap with one value per row: nothing for a feature, relational or contrastive term to match."""


class TapPair(StrictModel):
    """One student tap matched with one teacher tap (a layer map entry l -> pi(l))."""

    student: str
    teacher: str


def _listing(available: Mapping[str, Sequence[int]]) -> str:
    return ", ".join(f"{tap} {_shape(available[tap])}" for tap in sorted(available)) or "(none)"


def _shape(shape: Sequence[int | None]) -> str:
    dims = ("*" if d is None else str(int(d)) for d in shape)
    return "(" + ", ".join(dims) + ("," if len(shape) == 1 else "") + ")"


def is_per_token(shape: Sequence[int | None]) -> bool:
    """Whether a per-row tap shape is per token: (None, *inner), padded per batch to (B, L, *inner)."""
    return len(shape) >= 2 and shape[0] is None


def check_tap(name: str, side: Literal["student", "teacher"], shapes: TapShapes) -> tuple[int, ...]:
    """The per-row shape of tap `name` on `side`.

    MissingTapError when `side` has no such tap: for the student, listing its taps; for the teacher,
    listing the cached taps and saying how to cache another teacher output (`teacher.tap_names`,
    then `dvc repro cache`). NarrowTapError when the tap holds one value per row: a feature,
    relational or contrastive term cannot match anything through it (a distance between two
    numbers has no direction, an angle or a cosine is +-1)."""
    available = shapes.student if side == "student" else shapes.teacher
    if name not in available:
        if side == "teacher":
            raise MissingTapError(
                f"teacher tap {name!r} is not in the teacher cache, which holds {_listing(available)}; "
                f"if the teacher has an output {name!r}, add it to teacher.tap_names in params.yaml "
                "(null caches every output) and re-run `dvc repro cache`"
            )
        valid = ", ".join(sorted(available)) or "(none)"
        raise MissingTapError(f"student tap {name!r} does not exist; valid student taps: {valid}")
    shape = tuple(None if d is None else int(d) for d in available[name])
    if None not in shape and math.prod(shape) <= 1:
        wider = {tap: s for tap, s in available.items() if None in s or math.prod(s) > 1}
        raise NarrowTapError(
            f"{side} tap {name!r} has shape {_shape(shape)}, one value per row: too narrow for a feature, "
            f"relational or contrastive term to carry anything; use a wider {side} tap "
            f"({_listing(wider) if wider else 'none has more than one value'})"
        )
    return shape


def make_projection(from_shape: tuple[int, ...], to_shape: tuple[int, ...], where: str) -> nn.Module:
    """A learned map from per-row shape `from_shape` to `to_shape`.

    (D1,) -> (D2,): nn.Linear. (N, D1) -> (N, D2): nn.Linear on the last axis.
    (C1, H, W) -> (C2, H, W): 1x1 nn.Conv2d. Anything else: TapShapeError naming `where`.
    """
    if len(from_shape) in (1, 2) and from_shape[:-1] == to_shape[:-1] and len(to_shape) == len(from_shape):
        return nn.Linear(from_shape[-1], to_shape[-1])
    if len(from_shape) == 3 and len(to_shape) == 3 and from_shape[1:] == to_shape[1:]:
        return nn.Conv2d(from_shape[0], to_shape[0], kernel_size=1)
    raise TapShapeError(
        f"{where}: cannot project per-row shape {from_shape} onto {to_shape}; a projection maps "
        "(D,) taps, (N, D) token taps with equal N, or (C, H, W) maps with equal H, W"
    )


class ProjectedPair(nn.Module):
    """Reads one (student tap, teacher tap) pair and brings both into one space.

    forward(inputs) -> (student_side, teacher_side), both (B, *shape) float32; the teacher tensor
    is detached, so gradients reach the student and the projection, never the cache. `per_token`:
    both taps are per token ((B, L, ...) padded; the term masks them with `LossInputs.tap_mask`).
    """

    def __init__(self, pair: TapPair, shapes: TapShapes, project: Projection, where: str):
        super().__init__()
        self.student_tap, self.teacher_tap = pair.student, pair.teacher
        student_shape = check_tap(pair.student, "student", shapes)
        teacher_shape = check_tap(pair.teacher, "teacher", shapes)
        self.per_token = is_per_token(student_shape) and is_per_token(teacher_shape)
        self.direction = project
        if project == "teacher_to_student":
            self.projection = make_projection(teacher_shape, student_shape, where)
            self.shape = student_shape
        elif project == "student_to_teacher":
            self.projection = make_projection(student_shape, teacher_shape, where)
            self.shape = teacher_shape
        elif student_shape != teacher_shape:
            raise TapShapeError(
                f"{where}: student tap {pair.student!r} {student_shape} and teacher tap "
                f"{pair.teacher!r} {teacher_shape} differ; set project: teacher_to_student "
                "or student_to_teacher"
            )
        else:
            self.projection = nn.Identity()
            self.shape = student_shape

    def forward(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        student = as_float32(inputs.student_features[self.student_tap])
        teacher = as_float32(inputs.teacher_features[self.teacher_tap].detach())
        if self.per_token:
            check_token_axes(self.student_tap, student, self.teacher_tap, teacher, inputs.tap_mask)
        if self.direction == "teacher_to_student":
            teacher = self.apply_projection(teacher)
        elif self.direction == "student_to_teacher":
            student = self.apply_projection(student)
        return student, teacher

    def rows(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`, with per-token taps pooled to one (B, *shape) vector per row over its real
        tokens (`pool_tokens`): what the row-relation families (crd, mmd) compare."""
        student, teacher = self(inputs)
        if self.per_token:
            return pool_tokens(student, inputs.tap_mask), pool_tokens(teacher, inputs.tap_mask)
        return student, teacher

    def apply_projection(self, features: torch.Tensor) -> torch.Tensor:
        """The learned projection applied to (B, *from_shape) features (in its parameters' dtype)."""
        return self.projection(features.to(next(self.projection.parameters()).dtype))


class TapTermParams(TermParams):
    """Params fields of a term on feature taps: one pair (`student_tap`, `teacher_tap`) or a list
    of pairs (`taps`), averaged or summed as the family says."""

    student_tap: str | None = Field(None, description="student tap compared (with teacher_tap)")
    teacher_tap: str | None = Field(None, description="teacher tap compared (with student_tap)")
    taps: list[TapPair] | None = Field(None, description="or several: [{student: img, teacher: img}, ...]")

    @model_validator(mode="after")
    def _one_way_to_name_taps(self):
        single = self.student_tap is not None or self.teacher_tap is not None
        if single and self.taps:
            raise ValueError("give either student_tap/teacher_tap or taps, not both")
        if single and (self.student_tap is None or self.teacher_tap is None):
            raise ValueError("student_tap and teacher_tap go together; give both")
        if not single and not self.taps:
            raise ValueError("name the taps to compare: student_tap and teacher_tap, or taps")
        return self

    def pairs(self) -> list[TapPair]:
        """The tap pairs this term compares, in order."""
        if self.taps:
            return list(self.taps)
        return [TapPair(student=self.student_tap, teacher=self.teacher_tap)]


def check_token_axes(
    student_tap: str, student: torch.Tensor, teacher_tap: str, teacher: torch.Tensor, mask
) -> None:
    """TapShapeError unless per-token taps (B, L, ...) of both sides (and the (B, L) mask) have the
    same B and L: the student's padded input and the teacher's cached tokens have one length per row."""
    lengths = {tuple(student.shape[:2]), tuple(teacher.shape[:2])}
    if mask is not None:
        lengths.add(tuple(mask.shape))
    if len(lengths) > 1:
        raise TapShapeError(
            f"per-token taps: student tap {student_tap!r} is (B, L) {tuple(student.shape[:2])}, teacher tap "
            f"{teacher_tap!r} {tuple(teacher.shape[:2])}"
            + (f", the token mask {tuple(mask.shape)}" if mask is not None else "")
            + "; the student's input field and the teacher's tokens must have one length per row "
            "(feed the student the field the teacher read)"
        )


def masked_tokens(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, *inner) per-token values with the padded positions (mask False) set to zero."""
    if mask is None:
        return values
    return values * mask.reshape(*mask.shape, *([1] * (values.dim() - 2))).to(values.dtype)


def read_taps(inputs: LossInputs, pair: TapPair) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) features of `pair` as (B, *shape) float32, the teacher detached; for
    relation families that compare each side with itself and need no projection."""
    student = as_float32(inputs.student_features[pair.student])
    teacher = as_float32(inputs.teacher_features[pair.teacher].detach())
    return student, teacher


def check_pairs(pairs: list[TapPair], shapes: TapShapes) -> list[tuple[bool, bool]]:
    """MissingTapError unless every tap of `pairs` exists in `shapes`; returns, per pair, whether
    its (student, teacher) taps are per token ((B, L, ...) padded per batch)."""
    return [
        (
            is_per_token(check_tap(pair.student, "student", shapes)),
            is_per_token(check_tap(pair.teacher, "teacher", shapes)),
        )
        for pair in pairs
    ]


def pool_tokens(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, *inner) per-token values -> (B, *inner): each row's mean over its real tokens (mask
    (B, L) bool True; every position when mask is None). A row with no real token pools to zero.

    Why: rkd, gram, crd and mmd relate the rows of a batch to each other; a per-token tap is made
    one vector per row first, the masked mean pooling of sentence encoders (Reimers & Gurevych 2019,
    "Sentence-BERT", arXiv:1908.10084), so padding never enters a relation (docs/losses.md)."""
    if mask is None:
        return values.mean(dim=1)
    weights = mask.to(values.dtype).reshape(*mask.shape, *([1] * (values.dim() - 2)))
    counts = weights.sum(dim=1).clamp_min(1.0)
    return (values * weights).sum(dim=1) / counts


def read_row_taps(
    inputs: LossInputs, pair: TapPair, per_token: tuple[bool, bool] = (False, False)
) -> tuple[torch.Tensor, torch.Tensor]:
    """`read_taps`, each per-token side (per_token: (student, teacher), from `check_pairs`) pooled
    to one vector per row over its real tokens (`pool_tokens` with `inputs.tap_mask`)."""
    student, teacher = read_taps(inputs, pair)
    if per_token[0]:
        student = pool_tokens(student, inputs.tap_mask)
    if per_token[1]:
        teacher = pool_tokens(teacher, inputs.tap_mask)
    return student, teacher
