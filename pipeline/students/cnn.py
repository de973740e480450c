"""Small CNN students: conv blocks (3x3 conv, batch norm, ReLU; 2x2 max-pool between blocks) ->
flattened map -> embedding -> logits.

Input (B, H, W) is read as one channel; (B, C, H, W) as is. Each block is `convs_per_block` 3x3
convolutions at its width; a 2x2 max-pool follows every block but the last (while the map is at
least 2x2), so 8x8 digits with `channels: [16, 32]` give a `conv` tap of (32, 4, 4), the shape of the
built-in teacher's. Taps: `block1` ... `blockL` (B, C_l, H_l, W_l), `conv` = the last block, and
`embed` (B, D): the last map flattened, then one linear ReLU layer (as the built-in teacher).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.config import StrictModel, Width
from pipeline.data.checks import InputShapeError
from pipeline.students.output import StudentOutput


class CNNParams(StrictModel):
    """`arch: {kind: cnn, channels: [16, 32], embed: 64}`: one block per width, then an embedding."""

    kind: Literal["cnn"] = "cnn"
    channels: tuple[Width, ...] = Field(default=(16, 32), min_length=1)
    convs_per_block: int = Field(default=1, ge=1, le=64)
    embed: Width = 64


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(H, W) -> (1, H, W); (C, H, W) unchanged; anything else is refused with the fix."""
    if len(input_shape) == 2:
        return (1, *input_shape)
    if len(input_shape) == 3:
        return tuple(input_shape)  # type: ignore[return-value]
    raise InputShapeError(
        f"a cnn student needs image inputs (H, W) or (C, H, W), got input_shape {list(input_shape)}; "
        "use `arch: {kind: mlp, ...}` for flat inputs, or prepare the data with its image shape"
    )


class CNNStudent(nn.Module):
    """(B, [C,] H, W) -> conv blocks -> flatten -> embed -> (B, num_classes) logits."""

    def __init__(self, params: CNNParams, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        in_channels, height, width = image_shape(tuple(input_shape))
        self.blocks = nn.ModuleList()
        self.pool_after = []
        self.tap_shapes: dict[str, tuple[int, ...]] = {}
        for index, out_channels in enumerate(params.channels):
            layers = []
            for _ in range(params.convs_per_block):
                # batch norm keeps the small student trainable at AdamW lr 1e-2 (without it, ReLUs die)
                layers += [
                    nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(),
                ]
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*layers))
            self.tap_shapes[f"block{index + 1}"] = (out_channels, height, width)
            pool = index < len(params.channels) - 1 and min(height, width) >= 2
            self.pool_after.append(pool)
            if pool:
                height, width = height // 2, width // 2
        self.tap_shapes["conv"] = self.tap_shapes[f"block{len(params.channels)}"]
        self.tap_shapes["embed"] = (params.embed,)
        self.embed = nn.Linear(in_channels * height * width, params.embed)
        self.classifier = nn.Linear(params.embed, num_classes)
        self._image_rank = len(input_shape)

    def forward(self, inputs: torch.Tensor) -> StudentOutput:
        """inputs: (B, H, W) or (B, C, H, W) float32 -> StudentOutput(logits (B, C), taps)."""
        activation = inputs.unsqueeze(1) if self._image_rank == 2 else inputs
        features = {}
        for index, (block, pool) in enumerate(zip(self.blocks, self.pool_after)):
            activation = block(activation)
            features[f"block{index + 1}"] = activation
            if pool:
                activation = nn.functional.max_pool2d(activation, 2)
        features["conv"] = features[f"block{len(self.blocks)}"]
        embedding = torch.relu(self.embed(features["conv"].flatten(1)))
        features["embed"] = embedding
        return StudentOutput(self.classifier(embedding), features)
