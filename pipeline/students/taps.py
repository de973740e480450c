"""Named taps read off any torch module by module path, and its logits found in its output.

`TappedModel(model, taps={"embed": "layer4", "attn": "blocks.3.attn"})` registers one forward hook
per tap on the submodule at that path (`model.named_modules()`), so the user's module runs as it
is, unchanged. Its forward returns `StudentOutput(logits, {tap: tensor})`: the logits picked from
the module's output (a tensor; `.logits` or key "logits"; the first element of a tuple; or the key
or index `logits` names), each tap the output of its submodule (the first tensor in it when the
submodule returns a tuple, a dict or a ModelOutput, as attention blocks do). A submodule called
twice in one forward gives the output of its last call. Students (`arch: {kind: python | timm |
hf}`) and `distillery export-teacher` both read their taps this way.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pipeline.errors import DistilleryError
from pipeline.names import check_name
from pipeline.students.output import StudentOutput

MODULE_PATH = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
"""A module path as `named_modules()` spells it: names joined by dots (`layer4.1.conv2`)."""


class TapPathError(DistilleryError, ValueError):
    """A tap names a module path the model does not have."""


class TapOutputError(DistilleryError):
    """A tapped module gave no tensor, or one whose first axis is not the batch."""


class LogitsError(DistilleryError):
    """The model's output holds no (batch, classes) logits where it was told to look."""


def first_tensor(value: Any) -> torch.Tensor | None:
    """`value` if it is a tensor, else the first tensor found in a tuple, list or mapping
    (ModelOutput included), depth first; None when there is none."""
    if isinstance(value, torch.Tensor):
        return value
    items = (
        value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
    )
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def select_logits(output: Any, key: str | int | None = None) -> torch.Tensor:
    """The logits tensor in a model's `output`.

    key None: `output` itself when it is a tensor, else its `.logits` attribute or "logits" key
    (StudentOutput, Hugging Face ModelOutput), else its first element (a tuple). A string key
    reads that key (a dict, a ModelOutput) or attribute; an int reads that index (a tuple).
    Raises LogitsError naming what the output holds instead.
    """
    if key is None:
        if isinstance(output, torch.Tensor):
            return output
        if hasattr(output, "logits"):
            value = output.logits
        elif isinstance(output, Mapping) and "logits" in output:
            value = output["logits"]
        elif isinstance(output, (tuple, list)) and output:
            value = output[0]
        else:
            value = None
    elif isinstance(key, int):
        try:
            value = output[key]
        except (TypeError, IndexError, KeyError):
            value = None
    elif isinstance(output, Mapping) and key in output:
        value = output[key]
    else:
        value = getattr(output, key, None)
    if not isinstance(value, torch.Tensor):
        raise LogitsError(
            f"no logits tensor at {'the output' if key is None else repr(key)} of a model returning "
            f"{_describe(output)}; set `logits:` to the key or index of the output that holds them"
        )
    return value


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {list(output.shape)}"
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {[str(k) for k in output]}"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)} items"
    return f"a {type(output).__name__}"


def find_modules(model: nn.Module, taps: Mapping[str, str]) -> dict[str, nn.Module]:
    """Tap name -> the submodule of `model` at its path. Tap names must be safe names
    (pipeline/names.py); a path the model lacks is refused with TapPathError naming the closest
    paths it has."""
    modules = dict(model.named_modules())
    paths = [path for path in modules if path]
    found = {}
    for name, path in taps.items():
        check_name(name, "tap")
        if path not in modules or not path:
            close = difflib.get_close_matches(str(path), paths, n=5, cutoff=0.5)
            hint = (
                f"closest: {', '.join(close)}"
                if close
                else f"its top-level modules: {', '.join(n for n, _ in model.named_children()) or '(none)'}"
            )
            raise TapPathError(
                f"tap {name!r}: {type(model).__name__} has no module at {path!r}; {hint} "
                "(every path: [name for name, _ in model.named_modules()])"
            )
        found[name] = modules[path]
    return found


class _Capture:
    """Where the hooks put each tap's tensor during one forward (shared by the hooks and the model,
    and copied with them by copy.deepcopy)."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor | None] = {}


def _record(capture: _Capture, name: str, module: nn.Module, args: Any, output: Any) -> None:
    capture.values[name] = first_tensor(output)


class TappedModel(nn.Module):
    """Any module, run as it is, returning StudentOutput(logits, {tap: tensor}) through forward hooks.

    model: the user's module (kept as the submodule `model`, so its weights are `model.<name>`).
    taps: tap name -> module path (`{"embed": "layer4"}`). logits: where the logits are in the
    output (see select_logits). input_keyword: pass the first positional input under this keyword
    (`pixel_values`); None passes inputs through as given. add_channel_axis: read (B, H, W) inputs
    as one channel (B, 1, H, W), as the built-in CNN does. `tap_shapes` is filled by `measure`.
    """

    def __init__(
        self,
        model: nn.Module,
        taps: Mapping[str, str],
        logits: str | int | None = None,
        input_keyword: str | None = None,
        add_channel_axis: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.tap_paths = dict(taps)
        self.logits_key = logits
        self.input_keyword = input_keyword
        self.add_channel_axis = add_channel_axis
        self.tap_shapes: dict[str, tuple[int, ...]] = {}
        self.rebuild_arch: dict[str, Any] | None = None  # what student.json keeps to rebuild it
        self._capture = _Capture()
        for name, module in find_modules(model, self.tap_paths).items():
            module.register_forward_hook(functools.partial(_record, self._capture, name))

    def forward(self, *inputs: Any, **keywords: Any) -> StudentOutput:
        """inputs as the wrapped model takes them (students: (B, *input_shape) float32) ->
        StudentOutput(logits (B, C), features {tap: (B, ...)} in the order of `taps`)."""
        if self.add_channel_axis and inputs and inputs[0].dim() == 3:
            inputs = (inputs[0].unsqueeze(1), *inputs[1:])
        if self.input_keyword is not None and inputs:
            keywords = {self.input_keyword: inputs[0], **keywords}
            inputs = inputs[1:]
        self._capture.values = {}
        output = self.model(*inputs, **keywords)
        captured, self._capture.values = self._capture.values, {}
        missing = [name for name in self.tap_paths if captured.get(name) is None]
        if missing:
            raise TapOutputError(
                f"taps {missing} got no tensor: the modules at {[self.tap_paths[n] for n in missing]} "
                "were not called in forward, or returned no tensor; tap a module that forward runs"
            )
        logits = select_logits(output, self.logits_key)
        return StudentOutput(logits, {name: captured[name] for name in self.tap_paths})


def measure(
    tapped: TappedModel, example: Sequence[Any], batch: int, keywords: Mapping[str, Any] | None = None
) -> int:
    """Run `tapped` once (eval mode, no grad, its training mode restored after) on the positional
    inputs `example` and the keyword inputs `keywords`, whose batch axis has size `batch`; set
    `tapped.tap_shapes` (tap -> per-row shape) and return the
    number of classes. Raises LogitsError or TapOutputError unless the logits are (batch, C) and
    every tap is (batch, ...) with at least one axis per row."""
    was_training = tapped.training
    tapped.eval()
    try:
        with torch.no_grad():
            output = tapped(*example, **(keywords or {}))
    finally:
        tapped.train(was_training)
    logits = output.logits
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise LogitsError(
            f"the logits have shape {list(logits.shape)} for a batch of {batch}; they must be "
            f"(batch, classes): set `logits:` to the output that holds them"
        )
    shapes = {}
    for name, value in output.features.items():
        if value.dim() < 2 or value.shape[0] != batch:
            raise TapOutputError(
                f"tap {name!r} ({tapped.tap_paths[name]}) gives shape {list(value.shape)} for a batch of "
                f"{batch}; a tap must be (batch, ...) with the batch first and at least one more axis: "
                "tap another module (e.g. a batch-first layer)"
            )
        shapes[name] = tuple(int(n) for n in value.shape[1:])
    tapped.tap_shapes = shapes
    return int(logits.shape[1])
