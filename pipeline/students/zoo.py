"""timm and Hugging Face models, made when those optional packages are installed.

Neither is required by the default install: `pip install 'distillery[timm]'` or
`'distillery[hf]'` adds them (pyproject.toml `[project.optional-dependencies]`). A kind whose
package is missing, or installed but not importable (timm needs a torchvision built for the torch
in use), is refused with one line naming the extra. No weights are downloaded unless the user
asks (`pretrained`), and then only by the package's own loader.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch
from torch import nn

from pipeline.errors import DistilleryError

EXTRAS = {"timm": "timm", "transformers": "hf"}
"""Optional package -> the pip extra of distillery that installs it."""


class MissingExtraError(DistilleryError, ImportError):
    """An architecture needs an optional package (timm, transformers) that cannot be imported."""


class ZooModelError(DistilleryError):
    """timm or transformers could not make the model asked for (unknown name or class, bad config)."""


def brief(error: BaseException, limit: int = 300) -> str:
    """`Type: message` of an error from a library, on one line, cut to `limit` characters."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"


def import_optional(package: str) -> ModuleType:
    """The optional `package` ("timm" or "transformers"), or MissingExtraError naming the pip extra."""
    extra = EXTRAS[package]
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as error:
        if error.name == package:
            raise MissingExtraError(
                f"{package} is not installed; install it with pip install 'distillery[{extra}]' "
                f"(or pip install {package})"
            ) from None
        reason = f"it needs {error.name!r}, which is missing"
    except Exception as error:  # e.g. a torchvision built for another torch: RuntimeError at import
        reason = brief(error)
    raise MissingExtraError(
        f"{package} is installed but cannot be imported ({reason}); with torch {torch.__version__} "
        f"install versions built for it (pip install 'distillery[{extra}]' beside the same torch)"
    )


def timm_model(
    name: str, pretrained: bool, kwargs: Mapping[str, Any], num_classes: int | None, in_chans: int | None
) -> nn.Module:
    """`timm.create_model(name, pretrained=..., num_classes=..., in_chans=..., **kwargs)`; num_classes
    and in_chans are passed when given and not set in kwargs. Raises MissingExtraError, ZooModelError."""
    timm = import_optional("timm")
    arguments = dict(kwargs)
    if num_classes is not None:
        arguments.setdefault("num_classes", num_classes)
    if in_chans is not None:
        arguments.setdefault("in_chans", in_chans)
    try:
        return timm.create_model(name, pretrained=pretrained, **arguments)
    except Exception as error:  # unknown model name, bad kwargs, no network for pretrained weights
        raise ZooModelError(
            f"timm.create_model({name!r}) failed ({brief(error)}); "
            "check the name (timm.list_models()) and the kwargs"
        ) from None


def hf_class(model_class: str) -> Any:
    """The transformers class named `model_class` (e.g. "AutoModelForImageClassification")."""
    transformers = import_optional("transformers")
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", model_class) is None or not hasattr(transformers, model_class):
        raise ZooModelError(
            f"transformers has no class {model_class!r}; use an AutoModelFor... class "
            "(e.g. AutoModelForImageClassification, AutoModelForSequenceClassification) or a model class"
        )
    return getattr(transformers, model_class)


def hf_model(
    model_class: str, config: Mapping[str, Any] | None, pretrained: str | None, num_classes: int | None
) -> nn.Module:
    """A transformers model: randomly initialised from `config` (a config dict with `model_type`,
    e.g. {"model_type": "vit", "image_size": 8, ...}), or loaded by `from_pretrained(pretrained)`
    (a local directory, or a hub name when the machine can reach it). num_classes sets `num_labels`
    unless the config sets it; a pretrained head of another size is re-initialised."""
    transformers = import_optional("transformers")
    cls = hf_class(model_class)
    try:
        if pretrained is not None:
            extra = (
                {} if num_classes is None else {"num_labels": num_classes, "ignore_mismatched_sizes": True}
            )
            return cls.from_pretrained(pretrained, **extra)
        values = dict(config or {})
        if "model_type" not in values:
            raise ValueError("the config needs a `model_type` key (e.g. vit, bert)")
        if num_classes is not None:
            values.setdefault("num_labels", num_classes)
        built = transformers.AutoConfig.for_model(**values)
        return cls.from_config(built) if hasattr(cls, "from_config") else cls(built)
    except MissingExtraError:
        raise
    except Exception as error:
        source = f"from_pretrained({pretrained!r})" if pretrained is not None else "the config"
        raise ZooModelError(
            f"transformers {model_class} from {source} failed ({brief(error)}); fix the config or the path"
        ) from None


def hf_config_dict(model: nn.Module) -> dict[str, Any]:
    """The full config of a transformers model as a JSON-able dict (rebuilds it without its files)."""
    return model.config.to_dict()
