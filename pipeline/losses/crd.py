"""Contrastive representation distillation: InfoNCE on cosine similarity between student and
teacher features, over in-batch negatives and optionally negatives drawn from the whole cache.
Tian, Krishnan & Isola 2020, "Contrastive Representation Distillation" (ICLR 2020, arXiv:1910.10699);
InfoNCE: van den Oord, Li & Vinyals 2018, "Representation Learning with Contrastive Predictive
Coding" (arXiv:1807.03748)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipeline.errors import DistilleryError
from pipeline.losses._contract import LossInputs, TapShapes
from pipeline.losses._probs import as_float32
from pipeline.losses._taps import ProjectedPair, Projection, TapTermParams


class MissingFeatureBankError(DistilleryError, ValueError):
    """`negatives: bank` needs the cache's teacher features and the batch's cache rows."""


def info_nce(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """L_NCE = -(1/B) sum_i log [exp(sim(s_i, t_i)/tau) / sum_j exp(sim(s_i, t_j)/tau)].

    student, teacher: (B, *shape) in one space, flattened per row; sim = cosine similarity.
    Returns a float32 scalar; equals log(B) when every similarity is the same.
    Source: van den Oord et al. 2018 (InfoNCE), between student and teacher as in Tian et al. 2020.
    """
    student_unit = F.normalize(as_float32(student).flatten(1), dim=1)
    teacher_unit = F.normalize(as_float32(teacher).flatten(1), dim=1)
    logits = student_unit @ teacher_unit.T / tau  # (B, B): row i is anchor s_i against every t_j
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def symmetric_info_nce(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """(L_NCE(s -> t) + L_NCE(t -> s)) / 2: anchored on both sides (the symmetric form of Radford et al.
    2021, "Learning Transferable Visual Models From Natural Language Supervision", arXiv:2103.00020).
    Shapes as `info_nce`."""
    return 0.5 * (info_nce(student, teacher, tau) + info_nce(teacher, student, tau))


def bank_info_nce(
    student: torch.Tensor,
    teacher: torch.Tensor,
    negatives: torch.Tensor,
    negatives_are_positives: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """InfoNCE with in-batch negatives plus K negatives from the cache:
    -(1/B) sum_i log [exp(s_i.t_i/tau) / (sum_j exp(s_i.t_j/tau) + sum_k exp(s_i.n_k/tau))].

    student, teacher: (B, *shape); negatives: (K, *shape) in the same space;
    negatives_are_positives: (K,) bool, True for bank rows that are rows of this batch (dropped,
    so no positive or in-batch teacher is counted twice).  Source: negatives from beyond the batch,
    as CRD's memory bank (Tian et al. 2020), drawn here from the cache, which holds every teacher
    feature (docs/losses.md).
    """
    student_unit = F.normalize(as_float32(student).flatten(1), dim=1)
    teacher_unit = F.normalize(as_float32(teacher).flatten(1), dim=1)
    negative_unit = F.normalize(as_float32(negatives).flatten(1), dim=1)
    bank_logits = (student_unit @ negative_unit.T / tau).masked_fill(
        negatives_are_positives[None, :], float("-inf")
    )
    logits = torch.cat([student_unit @ teacher_unit.T / tau, bank_logits], dim=1)  # (B, B + K)
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class CRDParams(TapTermParams):
    """InfoNCE on cosine similarity, averaged over taps (Tian et al. 2020; van den Oord et al. 2018)."""

    kind: Literal["crd"] = "crd"
    whole_batch: ClassVar[bool] = True  # relates the batch's rows to each other (docs/training.md)
    tau: float = Field(0.1, gt=0, description="temperature of the similarities")
    anchors: Literal["student", "both"] = Field(
        "student",
        description="student: s_i against all t_j; both: also t_i against all s_j (CLIP's symmetric form)",
    )
    negatives: Literal["batch", "bank"] = Field(
        "batch", description="bank: add num_negatives teacher features drawn from the whole cache"
    )
    num_negatives: int = Field(4096, ge=1, description="K negatives drawn per step when negatives: bank")
    project: Projection = Field("student_to_teacher", description="where the cosine is taken")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"crd": 1.0}


class CRDLoss(nn.Module):
    """crd: (1/M) sum_taps -(1/B) sum_i log softmax_j(cos(s_i, t_j)/tau)_i, M taps (negatives
    from the batch, plus K uniformly drawn cache rows with `negatives: bank`).
    Sub-terms: crd.  Source: Tian et al. 2020, "Contrastive Representation Distillation"
    (arXiv:1910.10699), in the InfoNCE form of van den Oord et al. 2018, "Representation Learning with
    Contrastive Predictive Coding" (arXiv:1807.03748)."""

    def __init__(self, params: CRDParams, shapes: TapShapes):
        super().__init__()
        self.params = params
        self.pairs = nn.ModuleList(
            ProjectedPair(pair, shapes, params.project, f"crd term, taps {pair.student}/{pair.teacher}")
            for pair in params.pairs()
        )
        self.needs_feature_bank = params.negatives == "bank"

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        losses = [self._one_tap(pair, inputs) for pair in self.pairs]
        return {"crd": sum(losses) / len(losses)}

    def _one_tap(self, pair: ProjectedPair, inputs: LossInputs) -> torch.Tensor:
        student, teacher = pair.rows(inputs)  # per-token taps: the masked mean of each row's tokens
        p = self.params
        if p.negatives == "batch":
            if p.anchors == "both":
                return symmetric_info_nce(student, teacher, p.tau)
            return info_nce(student, teacher, p.tau)
        bank = inputs.teacher_feature_bank
        if bank is None or inputs.rows is None or pair.teacher_tap not in bank:
            raise MissingFeatureBankError(
                f"crd with negatives: bank needs inputs.teacher_feature_bank[{pair.teacher_tap!r}] and "
                "inputs.rows (the trainer provides them when recipe.needs_feature_bank is True)"
            )
        features = bank[pair.teacher_tap]
        drawn = torch.randint(len(features), (p.num_negatives,), device=features.device)
        negatives = as_float32(features[drawn].to(teacher.device).detach())
        if pair.direction == "teacher_to_student":
            negatives = pair.apply_projection(negatives)
        in_batch = torch.isin(drawn.to(inputs.rows.device), inputs.rows).to(teacher.device)
        loss = bank_info_nce(student, teacher, negatives, in_batch, p.tau)
        if p.anchors == "both":  # the teacher-anchored half uses in-batch students only
            loss = 0.5 * (loss + info_nce(teacher, student, p.tau))
        return loss
