"""MLP students: flatten -> hidden widths (ReLU) -> logits.

Taps: `hidden1` ... `hiddenL` (B, width_l), one per hidden layer, and `embed`, the last hidden
layer again (B, D) under the name every recipe can rely on.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.config import StrictModel, Width
from pipeline.students.output import StudentOutput


class MLPParams(StrictModel):
    """`arch: {kind: mlp, hidden: [64, 32]}`: one ReLU layer per width, then a linear classifier."""

    kind: Literal["mlp"] = "mlp"
    hidden: tuple[Width, ...] = Field(default=(64,), min_length=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class MLPStudent(nn.Module):
    """Flatten (B, *input_shape) -> hidden widths -> (B, C) logits, with a tap per hidden layer."""

    def __init__(self, params: MLPParams, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        widths = (math.prod(input_shape), *params.hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(params.dropout)
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.tap_shapes = {f"hidden{i + 1}": (w,) for i, w in enumerate(params.hidden)}
        self.tap_shapes["embed"] = (params.hidden[-1],)

    def forward(self, inputs: torch.Tensor) -> StudentOutput:
        """inputs: (B, *input_shape) float32 -> StudentOutput(logits (B, C), features per tap)."""
        activation = inputs.flatten(1)
        features = {}
        for index, layer in enumerate(self.hidden):
            activation = torch.relu(layer(activation))
            features[f"hidden{index + 1}"] = activation
        features["embed"] = activation
        return StudentOutput(self.classifier(self.dropout(activation)), features)
