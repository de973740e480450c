"""Optimisers and the learning-rate schedule, as pure functions of params and the step number.

The schedule is stateless (lr is a function of the global step), so a resumed run needs only the
step counter to continue on the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from pipeline.train.params import OptimizerParams, ScheduleParams


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], params: OptimizerParams
) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum, Nesterov off) over `parameters` at the peak learning rate.

    The fused implementation (one kernel over every tensor) when every parameter is a float tensor
    on the CPU or a CUDA device: the same update to float rounding, and 2-4x less optimiser time per
    step for the small students (on CPU, AdamW over four 64x64 tensors: 580 us -> 158 us per step).
    Otherwise the per-tensor loop."""
    parameters = list(parameters)
    implementation = {"fused": True} if _fusable(parameters) else {"foreach": False}
    if params.kind == "adamw":
        return torch.optim.AdamW(parameters, lr=params.lr, weight_decay=params.weight_decay, **implementation)
    return torch.optim.SGD(
        parameters, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay, **implementation
    )


def _fusable(parameters: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused optimisers take these parameters: float, on CPU or CUDA."""
    return bool(parameters) and all(
        p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        for p in parameters
    )


def learning_rate(
    step: int, total_steps: int, warmup_steps: int, peak_lr: float, schedule: ScheduleParams
) -> float:
    """lr at 0-based `step` of `total_steps`: linear warm-up to `peak_lr` over `warmup_steps`
    (reaching it at step `warmup_steps - 1`), then a cosine from `peak_lr` at step `warmup_steps`
    down to `min_lr_ratio * peak_lr` at step `total_steps` (one past the last, so no step is
    wasted at lr 0), or constant."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if schedule.kind == "constant":
        return peak_lr
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    floor = schedule.min_lr_ratio * peak_lr
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group of `optimizer` to `lr`."""
    for group in optimizer.param_groups:
        group["lr"] = lr
