"""A trained student on disk: `model.safetensors` (weights) + `student.json` (how to rebuild it).

Layout (docs/architecture.md): `data/train/<student>/seed_<k>/` for a single student, and
`data/train/<cohort>/<member>/seed_<k>/` for each member of a cohort. No pickle anywhere: the
weights are safetensors and everything else JSON, so loading a checkpoint never runs code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_bytes, atomic_write_json
from pipeline.students.factory import FactoryImportError
from pipeline.students.registry import build_student, count_parameters, parse_arch

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "student.json"


class TrainedStudentError(DistilleryError):
    """A seed directory is missing its files, or its weights do not fit the architecture it names."""


def save_trained_student(seed_dir: str | Path, model: torch.nn.Module, config: Mapping[str, Any]) -> Path:
    """Write `model`'s weights and `config` (student, seed, arch, input_shape, num_classes, ...) into
    `seed_dir`, atomically per file; `tap_shapes` and `num_parameters` are filled in from the model,
    and `arch` is replaced by the model's `rebuild_arch` when it has one (a pretrained timm or
    Hugging Face student is rebuilt from its config, without downloading its weights again)."""
    seed_dir = Path(seed_dir)
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    atomic_write_bytes(seed_dir / WEIGHTS_FILE, save(weights))
    payload = dict(config)
    if getattr(model, "rebuild_arch", None) is not None:
        payload["arch"] = model.rebuild_arch
    payload["tap_shapes"] = {tap: list(shape) for tap, shape in model.tap_shapes.items()}
    payload["num_parameters"] = count_parameters(model)
    atomic_write_json(seed_dir / CONFIG_FILE, payload)
    return seed_dir


def weights_sha256(seed_dir: str | Path) -> str:
    """sha256 hex of a seed's `model.safetensors`: which checkpoint an export was made from."""
    digest = hashlib.sha256()
    with (Path(seed_dir) / WEIGHTS_FILE).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_student_config(seed_dir: str | Path) -> dict[str, Any]:
    """The parsed `student.json` of a seed directory."""
    path = Path(seed_dir) / CONFIG_FILE
    if not path.exists():
        raise TrainedStudentError(
            f"{path}: no such file; is {seed_dir} a trained seed directory "
            "(data/train/<student>/seed_<k>)? Run `dvc repro train@<student>`"
        )
    return json.loads(path.read_text())


def load_weights_into(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `weights` into `model`, or raise TrainedStudentError naming every missing, unexpected or
    mis-shaped tensor (a checkpoint of another architecture)."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in weights.items()}
    problems = [f"missing {n} {list(s)}" for n, s in expected.items() if n not in found]
    problems += [f"unexpected {n} {list(s)}" for n, s in found.items() if n not in expected]
    problems += [
        f"{n}: checkpoint has {list(found[n])}, model expects {list(s)}"
        for n, s in expected.items()
        if n in found and found[n] != s
    ]
    if problems:
        raise TrainedStudentError(
            f"{source} does not fit this architecture ({len(problems)} problems): "
            + "; ".join(problems[:8])
            + ("; ..." if len(problems) > 8 else "")
            + ". Was it trained with another `arch:`? Re-train it or point at the right directory"
        )
    model.load_state_dict(dict(weights))


def load_trained_student(seed_dir: str | Path) -> torch.nn.Module:
    """The student saved in `seed_dir`, rebuilt from student.json, weights loaded, in eval mode.

    Returns a module whose forward maps (B, *input_shape) float32 to StudentOutput; a student of
    named inputs takes them by keyword and carries `named_inputs` (argument -> prepared field).
    """
    seed_dir = Path(seed_dir)
    config = read_student_config(seed_dir)
    try:
        model = build_student(
            parse_arch(config["arch"]), tuple(config["input_shape"]), int(config["num_classes"])
        )
    except FactoryImportError as error:
        raise TrainedStudentError(
            f"{seed_dir / CONFIG_FILE}: the student cannot be rebuilt: {error}"
        ) from None
    weights_path = seed_dir / WEIGHTS_FILE
    if not weights_path.exists():
        raise TrainedStudentError(
            f"{weights_path}: no such file; the seed directory is incomplete, re-train it"
        )
    try:
        weights = load_file(str(weights_path))
    except SafetensorError as error:  # e.g. a torch.save pickle renamed: it is never unpickled
        raise TrainedStudentError(
            f"{weights_path}: not a readable safetensors file ({error}); weights are only "
            "loaded from safetensors, never unpickled: re-train the student"
        ) from None
    load_weights_into(model, weights, str(weights_path))
    if config.get("inputs"):  # a student of named inputs: argument -> the prepared field it reads
        model.named_inputs = {argument: spec["field"] for argument, spec in config["inputs"].items()}
    return model.eval()


def list_trained(student_dir: str | Path) -> dict[str, list[Path]]:
    """Every trained model under `data/train/<student>/`: model name -> its seed directories.

    A single student gives `{"kd": [.../seed_0, ...]}`; a cohort gives one entry per member,
    `{"cohort4/a": [.../a/seed_0, ...], ...}`. Seeds are sorted by number.
    """
    student_dir = Path(student_dir)
    found: dict[str, list[Path]] = {}
    for config_path in sorted(student_dir.glob(f"**/seed_*/{CONFIG_FILE}")):
        seed_dir = config_path.parent
        relative = seed_dir.parent.relative_to(student_dir).as_posix()
        name = student_dir.name if relative == "." else f"{student_dir.name}/{relative}"
        found.setdefault(name, []).append(seed_dir)
    for seeds in found.values():
        seeds.sort(key=lambda p: int(p.name.split("_", 1)[1]))
    return found


def trained_student_dirs(train_root: str | Path) -> list[Path]:
    """The student directories under `train_root` that hold trained seeds (`<train_root>/<student>/`,
    e.g. what the `sweep` stage wrote into data/sweep/train), by name; none when it does not exist."""
    root = Path(train_root)
    if not root.is_dir():
        return []
    return [
        d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".") and list_trained(d)
    ]
