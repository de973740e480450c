"""No code path of the pipeline can run code from a file it loads: no pickle, `torch.load` only
with `weights_only=True`, YAML only through a safe loader, `np.load` never with pickles, no
eval/exec. Checked on the syntax tree of every module in pipeline/ and stages/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "ParamsLoader"}  # ParamsLoader: see below


def _dotted(node: ast.AST) -> str:
    """`torch.load` for Attribute(Name('torch'), 'load'); '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe load in `source`, as 'file:line: what'."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            problems += [
                f"{where}: imports {a.name}" for a in node.names if a.name.split(".")[0] in PICKLING_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            problems.append(f"{where}: imports from {node.module}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "yaml"):
            problems += [
                f"{where}: imports {node.module}.{a.name} (call it as {node.module}.{a.name} so it is "
                f"checked)"
                for a in node.names
                if a.name in ("load", "unsafe_load", "full_load", "load_all")
            ]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in ("eval", "exec"):
                problems.append(f"{where}: calls {name}()")
            elif name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
                problems.append(f"{where}: torch.load without weights_only=True")
            elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
                problems.append(f"{where}: {name}")
            elif name in ("yaml.load", "yaml.load_all"):
                loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if _dotted(loader).split(".")[-1] not in SAFE_YAML_LOADERS:
                    problems.append(f"{where}: {name} without a safe Loader (use yaml.safe_load)")
            elif name in ("np.load", "numpy.load") and _is_true(_keyword(node, "allow_pickle")):
                problems.append(f"{where}: {name}(allow_pickle=True)")
            elif name.endswith("read_pickle"):
                problems.append(f"{where}: {name}")
    return problems


def test_pipeline_and_stages_never_load_pickles_or_unsafe_yaml():
    files = sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "stages").rglob("*.py")])
    assert len(files) > 30
    problems = [p for path in files for p in unsafe_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert problems == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "from joblib import load",
        "import torch\ntorch.load('m.pt')",
        "import torch\ntorch.load('m.pt', weights_only=False)",
        "import yaml\nyaml.load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.FullLoader)",
        "import yaml\nyaml.unsafe_load(text)",
        "import numpy as np\nnp.load('a.npz', allow_pickle=True)",
        "eval('1 + 1')",
        "from torch import load",
    ],
)
def test_the_check_catches_each_unsafe_form(snippet):
    assert unsafe_uses(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('m.pt', weights_only=True)",
        "import yaml\nyaml.safe_load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
        "import numpy as np\nnp.load('a.npz')",
        "model.eval()",
    ],
)
def test_the_check_accepts_the_safe_forms(snippet):
    assert unsafe_uses(snippet) == []


def test_the_params_loader_is_a_safe_loader():
    """`ParamsLoader` (pipeline/config.py) is accepted above by name: it must build on the safe
    constructor, which refuses Python tags."""
    import yaml

    from pipeline.config import ParamsLoader

    assert issubclass(ParamsLoader, yaml.constructor.SafeConstructor)
    assert not issubclass(
        ParamsLoader, (yaml.constructor.FullConstructor, yaml.constructor.UnsafeConstructor)
    )
    with pytest.raises(yaml.YAMLError):
        yaml.load("x: !!python/object/apply:os.system ['true']", Loader=ParamsLoader)
