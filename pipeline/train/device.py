"""Where and in what precision a student trains: the device, autocast, the gradient scaler, RNG states.

`precision: fp32` (the default) is the plain float32 step: no autocast, no scaler, the same
operations as a loop without these knobs. `bf16` and `fp16` run the students' forward under
`torch.autocast` (the weights stay float32: the optimiser updates float32 master weights); the
loss terms are computed in float32 from the student's outputs cast back (see pipeline/train/step.py).
`fp16` also scales the loss with a `torch.amp.GradScaler`, so small gradients do not underflow
float16, and skips the optimiser steps whose gradients overflowed. bf16 has float32's exponent
range and needs no scaler. Both work on the CPU too (slower than float32 there): the tests use it.
"""

from __future__ import annotations

import contextlib

import torch

from pipeline.errors import DistilleryError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(DistilleryError):
    """`device: cuda` where torch sees no CUDA device (or fewer than the processes asked for)."""


def resolve_device(device: str, student: str = "<name>", local_rank: int | None = None) -> torch.device:
    """The torch device of `device` ("cpu", "cuda", "auto": cuda when a GPU is visible, else cpu).

    student: the student's name, for the message. local_rank: this process's rank on its machine
    when several train one student; on CUDA each takes GPU `local_rank`. DeviceError when CUDA is
    asked for and torch cannot use it."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda":
        return torch.device(device)
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(
            f"students.{student}.device: cuda, but torch ({torch.__version__}, {build}) sees no CUDA "
            "GPU here; set device: auto (the GPU where there is one) or cpu"
        )
    if local_rank is None:
        return torch.device("cuda")
    if local_rank >= torch.cuda.device_count():
        raise DeviceError(
            f"students.{student}: process {local_rank} needs GPU {local_rank} but torch sees "
            f"{torch.cuda.device_count()}; use an nproc of at most the number of GPUs"
        )
    return torch.device("cuda", local_rank)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context the students' forward runs in: nothing for fp32, else torch.autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (dynamic loss scale, from 2^16), else None."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The RNG states a checkpoint keeps: "torch" (the CPU generator, uint8) and, on CUDA, "cuda"
    (the generator of `device`: dropout and random draws made on the GPU use it)."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what `rng_states` returned (a checkpoint without "cuda" restores the CPU one only)."""
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
