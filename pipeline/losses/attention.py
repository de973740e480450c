"""Attention transfer: match the attention maps the teacher exports (softmax(QK^T/sqrt d), as TinyBERT
distils self-attention: Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language
Understanding", arXiv:1909.10351), or the spatial attention of convolutional feature maps
(channel-pooled squared activations, L2-normalised: Zagoruyko & Komodakis 2017, "Paying More
Attention to Attention", ICLR 2017, arXiv:1612.03928)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._taps import TapPair, TapShapeError, check_tap, read_taps


def attention_map_distance(student_attention: torch.Tensor, teacher_attention: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i ||A_S,i - A_T,i||_F^2 for one layer pair.

    student_attention, teacher_attention: (B, H, N, N) row-stochastic attention maps of equal shape.
    Returns a float32 scalar.  Source: the attention loss of Jiao et al. 2020, on the maps as exported.
    """
    return (student_attention - teacher_attention).pow(2).sum() / student_attention.shape[0]


def spatial_attention(feature_map: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W) a = vec(mean_c |F_c|^p) / ||vec(mean_c |F_c|^p)||_2.
    Source: Zagoruyko & Komodakis 2017 (attention transfer, activation-based)."""
    pooled = feature_map.abs().pow(power).mean(dim=1).flatten(1)
    return F.normalize(pooled, dim=1)


def spatial_attention_distance(
    student_map: torch.Tensor, teacher_map: torch.Tensor, power: float = 2.0
) -> torch.Tensor:
    """(1/B) sum_i ||a_S,i - a_T,i||_2^2 with `spatial_attention`; channels may differ, H, W not.
    Returns a float32 scalar.  Source: Zagoruyko & Komodakis 2017."""
    difference = spatial_attention(student_map, power) - spatial_attention(teacher_map, power)
    return difference.pow(2).sum() / student_map.shape[0]


class AttentionParams(TermParams):
    """Attention transfer over a layer map (Jiao et al. 2020; Zagoruyko & Komodakis 2017)."""

    kind: Literal["attention"] = "attention"
    layers: list[TapPair] = Field(min_length=1, description="[{student: attn1, teacher: attn4}, ...]")
    form: Literal["maps", "spatial"] = Field(
        "maps", description="maps: exported (B, H, N, N) attention; spatial: (B, C, H, W) conv activations"
    )
    head_reduction: Literal["none", "mean"] = Field(
        "none", description="maps: mean over heads first (when head counts differ)"
    )
    power: float = Field(2.0, gt=0, description="spatial: p in mean_c |F_c|^p")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"attention": 1.0}


class AttentionLoss(nn.Module):
    """attention: sum over the layer map of (1/B) ||A_S - A_T||_F^2 (maps), or of
    (1/B) sum_i ||a_S,i - a_T,i||^2 on normalised channel-pooled |F|^p (spatial).
    Sub-terms: attention.  Source: maps: Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural
    Language Understanding" (arXiv:1909.10351); spatial: Zagoruyko & Komodakis 2017, "Paying More
    Attention to Attention" (arXiv:1612.03928)."""

    def __init__(self, params: AttentionParams, shapes: TapShapes):
        super().__init__()
        self.params = params
        for pair in params.layers:
            student, teacher = (
                check_tap(pair.student, "student", shapes),
                check_tap(pair.teacher, "teacher", shapes),
            )
            comparable = (
                student[1:] == teacher[1:]
                if params.form == "spatial" or params.head_reduction == "mean"
                else student == teacher
            )
            if len(student) != 3 or len(teacher) != 3 or not comparable:
                raise TapShapeError(
                    f"attention term, layer {pair.student}/{pair.teacher}: shapes {student} and {teacher} "
                    "cannot be compared; maps need equal (H, N, N) (or equal (N, N) with head_reduction: "
                    "mean), spatial needs (C, H, W) maps with equal H, W"
                )

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        p, values = self.params, []
        for pair in p.layers:
            student, teacher = read_taps(inputs, pair)
            if p.form == "spatial":
                values.append(spatial_attention_distance(student, teacher, p.power))
                continue
            if p.head_reduction == "mean":
                student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
            values.append(attention_map_distance(student, teacher))
        return {"attention": sum(values)}
