"""What every student returns: logits plus named feature taps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class StudentOutput:
    """logits: (B, C) raw class scores; features: tap name -> (B, *shape), e.g. "embed" (B, D)
    and, for convolutional students, "conv" (B, C', H, W)."""

    logits: torch.Tensor
    features: Mapping[str, torch.Tensor] = field(default_factory=dict)
