"""Hidden-state matching over a layer map l -> pi(l): the squared Frobenius distance between each
student layer and the projected teacher layer pi(l), summed over the map; the projection learned, or
solved in closed form per batch. The layer map and learned W of Jiao et al. 2020, "TinyBERT:
Distilling BERT for Natural Language Understanding" (arXiv:1909.10351); hints at intermediate
layers: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (arXiv:1412.6550)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._probs import as_float32
from pipeline.losses._taps import (
    ProjectedPair,
    TapPair,
    check_pairs,
    check_token_axes,
    masked_tokens,
    read_taps,
)


def hidden_state_distance(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(1/B) ||h_S - phi(h_T)||_F^2 for one layer pair already in one space.

    student_hidden, teacher_hidden: (B, *shape) (e.g. (B, D) or (B, N, D) tokens); the squared
    Frobenius norm of the whole difference, divided by B so the weight is batch-size free.
    mask: (B, L) bool for per-token (B, L, D) states, True on real tokens: the norm runs over the
    real tokens only (padding contributes nothing). Source: the hidden-state loss of Jiao et al. 2020.
    """
    difference = masked_tokens(student_hidden - teacher_hidden, mask)
    return difference.pow(2).sum() / student_hidden.shape[0]


def closed_form_residual(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    ridge: float = 1e-3,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1/B) min_W ||h_S - W h_T||_F^2 with W solved on this batch (rows flattened).

    W* = h_S h_T^T (h_T h_T^T + ridge I)^-1 (ridge least squares, in row layout
    W*^T = (T^T T + ridge I)^-1 T^T S with T = (B, D_T), S = (B, D_S)); the ridge keeps it defined
    when B < D_T. Gradients reach h_S (W* is a function of it). Returns a float32 scalar.
    mask: (B, L) bool for per-token states: both sides are zero at padded positions, so their
    columns of W* are zero and they add nothing to the residual.
    """
    student_rows = masked_tokens(as_float32(student_hidden), mask).flatten(1)
    teacher_rows = masked_tokens(as_float32(teacher_hidden.detach()), mask).flatten(1)
    eye = torch.eye(teacher_rows.shape[1], device=teacher_rows.device, dtype=teacher_rows.dtype)
    # W*^T (D_T, D_S) by the normal equations; the ridge keeps the solve defined when B < D_T
    weight_transposed = torch.linalg.solve(
        teacher_rows.T @ teacher_rows + ridge * eye, teacher_rows.T @ student_rows
    )
    return (student_rows - teacher_rows @ weight_transposed).pow(2).sum() / student_rows.shape[0]


class HiddenParams(TermParams):
    """Hidden-state matching over a layer map (Jiao et al. 2020)."""

    kind: Literal["hidden"] = "hidden"
    layers: list[TapPair] = Field(
        min_length=1, description="the layer map: [{student: s1, teacher: t3}, ...]"
    )
    project: Literal["teacher_to_student", "student_to_teacher", "closed_form", "none"] = Field(
        "teacher_to_student",
        description="learned phi on the teacher, on the student (as TinyBERT and FitNets), "
        "the per-batch least-squares W*, or none when shapes are equal",
    )
    ridge: float = Field(1e-3, ge=0, description="ridge of the closed-form W*")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"hidden": 1.0}


class HiddenLoss(nn.Module):
    """hidden: sum over the layer map of (1/B) ||h_S^(l) - phi(h_T^(pi(l)))||_F^2.
    Sub-terms: hidden.  Source: Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language
    Understanding" (arXiv:1909.10351); Romero et al. 2015, "FitNets" (arXiv:1412.6550)."""

    def __init__(self, params: HiddenParams, shapes: TapShapes):
        super().__init__()
        self.params = params
        self.per_token = [student and teacher for student, teacher in check_pairs(params.layers, shapes)]
        if params.project == "closed_form":
            self.pairs = nn.ModuleList()
        else:
            self.pairs = nn.ModuleList(
                ProjectedPair(
                    pair, shapes, params.project, f"hidden term, layer {pair.student}/{pair.teacher}"
                )
                for pair in params.layers
            )

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        masks = [inputs.tap_mask if per_token else None for per_token in self.per_token]
        if self.params.project == "closed_form":
            values = []
            for pair, per_token, mask in zip(self.params.layers, self.per_token, masks):
                student, teacher = read_taps(inputs, pair)
                if per_token:
                    check_token_axes(pair.student, student, pair.teacher, teacher, mask)
                values.append(closed_form_residual(student, teacher, self.params.ridge, mask))
        else:
            values = [hidden_state_distance(*pair(inputs), mask) for pair, mask in zip(self.pairs, masks)]
        return {"hidden": sum(values)}
