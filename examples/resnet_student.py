"""A small ResNet as a student (or teacher) made by a factory, for `arch: {kind: python}`.

```yaml
students:
  resnet:
    arch:
      kind: python
      factory: "examples.resnet_student:make_student"
      kwargs: {width: 16, blocks: [1, 1]}
      taps: {conv: layer2, embed: pool}       # tap name -> module path
    loss: {...}
```

`make_student(num_classes, input_shape, width, blocks, weights)` builds it; distillery passes
`num_classes` and `input_shape` (e.g. (1, 8, 8) for the digits) because the signature takes them.
The module is plain torch: it returns logits only, and distillery reads `conv` (B, C, H', W') and
`embed` (B, C) with forward hooks on `layer<k>` and `pool`. `weights` loads a safetensors state
dict, e.g. a teacher trained elsewhere, for `distillery export-teacher --factory ...`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch norm layers with a residual connection (He et al., 2016, arXiv:1512.03385)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """(B, C, H, W) or (B, H, W) float32 -> (B, num_classes) logits.

    A 3x3 stem at `width`, then one stage per entry of `blocks` (`layer1`, `layer2`, ...), each
    doubling the width and halving the map after the first; then global average pooling (`pool`,
    (B, C)) and a linear classifier (`fc`).
    """

    def __init__(self, num_classes: int, in_channels: int, width: int, blocks: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        channels = width
        for index, count in enumerate(blocks):
            out_channels = width * 2**index
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(channels, out_channels, stride)]
            layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(count - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
            channels = out_channels
        self.stages = len(blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, [C,] H, W) -> (B, num_classes) logits."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = self.stem(x)
        for index in range(self.stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(self.pool(x))


def make_student(
    num_classes: int = 10,
    input_shape: Sequence[int] = (1, 8, 8),
    width: int = 16,
    blocks: Sequence[int] = (1, 1),
    weights: str | None = None,
) -> SmallResNet:
    """A SmallResNet for inputs (B, *input_shape) ((H, W) is one channel) and `num_classes` classes;
    `weights`: a safetensors file of its state dict to load (e.g. a trained teacher)."""
    in_channels = int(input_shape[0]) if len(input_shape) == 3 else 1
    model = SmallResNet(num_classes, in_channels, width, blocks)
    if weights is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(weights))
    return model
