"""Students that are any torch module: a user factory (`python`), a timm model, a Hugging Face model.

```yaml
arch: {kind: python, factory: "examples.resnet_student:make_student", kwargs: {width: 16},
       taps: {embed: pool, conv: layer2}, logits: null, input: null}
arch: {kind: timm, name: resnet18, pretrained: false, kwargs: {}, taps: {embed: global_pool}}
arch: {kind: hf, model_class: AutoModelForImageClassification,
       config: {model_type: vit, image_size: 8, patch_size: 4, num_channels: 1, ...},
       taps: {embed: vit.layernorm}}
```

Each is wrapped in `TappedModel` (pipeline/students/taps.py): the user's module runs unchanged,
its taps are read by module path with forward hooks, and one probe forward at build time checks
the logits against the dataset's classes and measures `tap_shapes`. A factory is user code: it is
imported by name (pipeline/students/factory.py) and runs with the user's rights.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from torch import nn

from pipeline.config import StrictModel
from pipeline.names import SafeName
from pipeline.students.cnn import InputShapeError
from pipeline.students.factory import FactoryCallError, FactorySpecError, call_factory, check_factory
from pipeline.students.taps import MODULE_PATH, LogitsError, TappedModel, measure
from pipeline.students.zoo import hf_config_dict, hf_model, timm_model

PROBE_BATCH = 3
"""Rows of the probe forward: not 1 or 2, so a tap whose batch axis is not first rarely hides."""


def check_tap_paths(taps: dict[str, str]) -> dict[str, str]:
    """`taps` itself when every value is a module path (`layer4`, `blocks.3.attn`); else a pydantic
    error naming the tap."""
    for name, path in taps.items():
        if not isinstance(path, str) or MODULE_PATH.fullmatch(path) is None:
            raise PydanticCustomError(
                "module_path",
                "tap {name}: {path} is not a module path (names joined by dots, as "
                "model.named_modules() gives them, e.g. layer4 or blocks.3.attn)",
                {"name": name, "path": repr(path)},
            )
    return taps


class _TappedArch(StrictModel):
    """What every module-path student has: taps, where its logits are, how it takes its input."""

    taps: dict[SafeName, str] = Field(default_factory=dict)
    logits: str | int | None = None
    input: str | None = None

    @field_validator("taps")
    @classmethod
    def _module_paths(cls, taps: dict[str, str]) -> dict[str, str]:
        return check_tap_paths(taps)


class PythonArchParams(_TappedArch):
    """`arch: {kind: python, factory: "pkg.module:make_student", kwargs: {...}, taps: {...}}`.

    factory: imported by name and called as factory(**kwargs), plus `num_classes` and
    `input_shape` when its signature takes them and kwargs do not set them.
    """

    kind: Literal["python"] = "python"
    factory: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str) -> str:
        try:
            return check_factory(value)
        except FactorySpecError as error:
            raise PydanticCustomError("factory", str(error)) from None


class TimmArchParams(_TappedArch):
    """`arch: {kind: timm, name: resnet18, pretrained: false, kwargs: {...}, taps: {...}}`
    (needs `pip install 'distillery[timm]'`)."""

    kind: Literal["timm"] = "timm"
    name: str
    pretrained: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)


class HFArchParams(_TappedArch):
    """`arch: {kind: hf, model_class: AutoModelFor..., config: {model_type: ..., ...} | pretrained: <dir>}`
    (needs `pip install 'distillery[hf]'`); exactly one of `config` and `pretrained`."""

    kind: Literal["hf"] = "hf"
    model_class: str = "AutoModelForImageClassification"
    config: dict[str, Any] | None = None
    pretrained: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> HFArchParams:
        if (self.config is None) == (self.pretrained is None):
            raise PydanticCustomError(
                "hf_source",
                "give exactly one of `config` (a config dict with model_type, randomly initialised) "
                "and `pretrained` (a directory or hub name for from_pretrained)",
            )
        return self


def probe_input(input_shape: tuple[int, ...], batch: int = PROBE_BATCH) -> torch.Tensor:
    """(batch, *input_shape) float32 standard normal from a private generator (the global torch RNG,
    seeded for the student's init, is left untouched)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch, *input_shape), generator=generator)


def _image_channels(input_shape: tuple[int, ...], kind: str) -> int:
    if len(input_shape) == 2:
        return 1
    if len(input_shape) == 3:
        return int(input_shape[0])
    raise InputShapeError(
        f"a {kind} image model needs inputs (H, W) or (C, H, W), got input_shape {list(input_shape)}; "
        "use `kind: python` with a factory for other inputs"
    )


def make_module(
    params: _TappedArch, num_classes: int | None, input_shape: tuple[int, ...] | None
) -> nn.Module:
    """The bare torch module `params` describes (no taps yet). num_classes / input_shape: the data's,
    when known: a factory gets them when its signature takes them; a timm model gets `num_classes`
    and `in_chans`, a Hugging Face model `num_labels` (None: the model as named, head included)."""
    if isinstance(params, PythonArchParams):
        shape = None if input_shape is None else tuple(input_shape)
        model = call_factory(params.factory, params.kwargs, num_classes=num_classes, input_shape=shape)
        source = f"factory {params.factory!r}"
    elif isinstance(params, TimmArchParams):
        channels = None if input_shape is None else _image_channels(input_shape, "timm")
        model = timm_model(params.name, params.pretrained, params.kwargs, num_classes, channels)
        source = f"timm model {params.name!r}"
    else:
        model = hf_model(params.model_class, params.config, params.pretrained, num_classes)
        source = f"transformers {params.model_class}"
    if not isinstance(model, nn.Module):
        raise FactoryCallError(f"{source} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def tapped_student(params: _TappedArch, input_shape: tuple[int, ...], num_classes: int) -> TappedModel:
    """The module `params` describes as a student: made for the data, wrapped with its taps, probed
    once on (PROBE_BATCH, *input_shape) inputs and checked to give `num_classes` logits per row.

    Returns a TappedModel in training mode with `tap_shapes` set, and `rebuild_arch`: the arch dict
    student.json keeps, which rebuilds it without downloads (pretrained weights are in the checkpoint).
    """
    model = make_module(params, num_classes, input_shape)
    image_like = not isinstance(params, PythonArchParams) and len(input_shape) == 2
    tapped = TappedModel(model, params.taps, params.logits, params.input, add_channel_axis=image_like)
    classes = measure(tapped, (probe_input(input_shape),), PROBE_BATCH)
    if classes != num_classes:
        raise LogitsError(
            f"the student gives {classes} logits per row but the dataset has {num_classes} classes; make it "
            "output one logit per class (a factory gets `num_classes` when its signature takes it)"
        )
    rebuild = params.model_dump(mode="json")
    if isinstance(params, TimmArchParams):
        rebuild["pretrained"] = False
    elif isinstance(params, HFArchParams):
        rebuild |= {"config": hf_config_dict(model), "pretrained": None}
    tapped.rebuild_arch = rebuild
    return tapped.train()
