"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

A checkpoint of one seed is two files in the seed's scratch directory:
`state-<global_step>.safetensors` (every member's model and recipe weights, every optimiser state
tensor, the RNG states as uint8: `rng/torch`, and `rng/cuda` on a GPU) and `checkpoint.json` (epoch,
position in the epoch, optimiser scalars and param groups, the fp16 loss scaler's state, the metric
history, and the name of its tensors file). The tensors file
is written first, then the JSON that points at it, each atomically, then older tensors files are
removed: a process killed at any instant leaves a JSON that names a complete tensors file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_bytes, atomic_write_json

CHECKPOINT_FILE = "checkpoint.json"
FORMAT_VERSION = 1


class CheckpointError(DistilleryError):
    """A seed's checkpoint in scratch cannot be read back (damaged on disk after it was written)."""


@dataclass
class TrainingState:
    """Where a seed's run stands, beside its modules' weights.

    epoch: epochs completed. step_in_epoch: batches done in epoch `epoch` (0 at a boundary).
    global_step: optimiser steps done. history: one mapping per completed epoch, member -> metrics.
    running: member -> term -> sum over this epoch's steps so far. done: training finished.
    """

    config_hash: str
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, dict[str, float]]] = field(default_factory=list)
    running: dict[str, dict[str, float]] = field(default_factory=dict)
    done: bool = False


def _member_key(name: str) -> str:
    return name or "_"


def _split_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict) -> dict[str, Any]:
    """Optimizer state_dict -> JSON part; its tensors go into `tensors` under `prefix`."""
    state_dict = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state_dict["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return {
        "param_groups": state_dict["param_groups"],
        "scalars": scalars,
        "indices": [str(i) for i in state_dict["state"]],
    }


def _join_optimizer(prefix: str, saved: dict[str, Any], tensors: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for index in saved["indices"]:
        slots = dict(saved["scalars"].get(index, {}))
        for name, value in tensors.items():
            head, _, key = name.rpartition("/")
            if head == f"{prefix}/{index}":
                slots[key] = value
        state[int(index)] = slots
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    directory: Path,
    state: TrainingState,
    members: list,
    rng: dict[str, torch.Tensor],
    scaler: dict[str, Any] | None = None,
) -> None:
    """Write the state of `members` (each with .name, .model, .recipe, .optimizer) atomically.
    rng: generator name -> state (pipeline.train.device.rng_states); scaler: GradScaler.state_dict()."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {f"rng/{name}": value.cpu().clone() for name, value in rng.items()}
    optimizers = {}
    for member in members:
        key = _member_key(member.name)
        for part in ("model", "recipe"):
            for name, tensor in getattr(member, part).state_dict().items():
                tensors[f"{key}/{part}/{name}"] = tensor.detach().cpu().contiguous().clone()
        optimizers[key] = _split_optimizer(f"{key}/optim", member.optimizer, tensors)
    weights_file = f"state-{state.global_step:09d}.safetensors"
    atomic_write_bytes(directory / weights_file, save(tensors))
    payload = {
        "format_version": FORMAT_VERSION,
        "weights_file": weights_file,
        **state.__dict__,
        "optimizers": optimizers,
        **({"scaler": scaler} if scaler else {}),
    }
    atomic_write_json(directory / CHECKPOINT_FILE, payload)
    for old in directory.glob("state-*.safetensors"):
        if old.name != weights_file:
            old.unlink(missing_ok=True)


def load_checkpoint(directory: Path, config_hash: str) -> tuple[TrainingState, dict] | None:
    """(state, raw payload + tensors) of the checkpoint in `directory`, or None when there is none,
    or it was written for other params/data (`config_hash` differs) and must not be resumed."""
    path = directory / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
        if payload.get("format_version") != FORMAT_VERSION or payload.get("config_hash") != config_hash:
            return None
        if not re.fullmatch(r"state-\d{9}\.safetensors", str(payload["weights_file"])):
            raise ValueError(f"weights_file {str(payload['weights_file'])[:80]!r} is not a state file")
        state = TrainingState(**{k: payload[k] for k in TrainingState.__dataclass_fields__})
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # JSON errors are ValueErrors
        raise CheckpointError(
            f"{path}: the training checkpoint is damaged ({type(error).__name__}: {error}); delete "
            f"{directory} to train this seed again from the start"
        ) from None
    weights_path = directory / payload["weights_file"]
    if not weights_path.exists():
        return None
    try:
        payload["tensors"] = load_file(str(weights_path))
    except SafetensorError as error:  # written atomically, so damaged after the fact (disk, a copy)
        raise CheckpointError(
            f"{weights_path}: the training checkpoint is unreadable ({error}); delete "
            f"{directory} to train this seed again from the start"
        ) from None
    return state, payload


def restore_members(payload: dict, members: list) -> dict[str, torch.Tensor]:
    """Load weights and optimiser state into `members`; returns the saved RNG states by name
    ("torch", and "cuda" when saved on a GPU). The fp16 scaler's state is `payload.get("scaler")`."""
    tensors = payload["tensors"]
    for member in members:
        key = _member_key(member.name)
        for part in ("model", "recipe"):
            prefix = f"{key}/{part}/"
            weights = {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}
            getattr(member, part).load_state_dict(weights)
        member.optimizer.load_state_dict(_join_optimizer(f"{key}/optim", payload["optimizers"][key], tensors))
    # "rng/<generator>": one slash (a member named "rng" has "rng/model/...")
    return {
        name[4:]: value for name, value in tensors.items() if name.startswith("rng/") and name.count("/") == 1
    }
