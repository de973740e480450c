"""`distillery check-params`: validate the whole params.yaml before any stage runs.

Every section through its own model, and the names one section takes from another (a chain's
teacher, `label_curve.students`, `sweep.students`, a student's chain cache): the first DVC stage, so
a mistake anywhere is one line before anything trains, and before DVC itself trips over a path that
a misspelt name makes up (`data/train/<teacher>`) or a `students.<name>` param that is
not there. Writes `--out` (default data/params_checked.json), which `prepare` depends on: its content
only lists the sections checked, so a re-run that passes changes nothing downstream.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pipeline.config import read_params_file, validate_section
from pipeline.io import atomic_write_json


def _loaders() -> dict[str, Callable[[Any], Any]]:
    """Section -> its validation, exactly as the section's stage validates it."""
    from pipeline.cache.params import CacheParams, validate_cache_variants
    from pipeline.cluster.params import SweepParams, parse_cluster_params
    from pipeline.data.params import PrepareParams
    from pipeline.evaluate.lineage import validate_chains
    from pipeline.evaluate.params import EvaluateParams
    from pipeline.export.params import ExportParams
    from pipeline.teacher.params import TeacherParams
    from pipeline.text.lm_scenario import LMTeacherParams, TextParams
    from pipeline.train.label_curve import LabelCurveParams
    from pipeline.train.params import validate_students

    def section(model: type, name: str) -> Callable[[Any], Any]:
        return lambda data: validate_section(model, data, name)

    return {
        "prepare": section(PrepareParams, "prepare"),
        "teacher": section(TeacherParams, "teacher"),
        "cache": section(CacheParams, "cache"),
        "students": validate_students,
        "label_curve": section(LabelCurveParams, "label_curve"),
        "chains": validate_chains,
        "sweep": section(SweepParams, "sweep"),
        "cluster": parse_cluster_params,
        "evaluate": section(EvaluateParams, "evaluate"),
        "export": section(ExportParams, "export"),
        "text": section(TextParams, "text"),
        "lm_teacher": section(LMTeacherParams, "lm_teacher"),
        "caches": validate_cache_variants,
    }


def check_params_file(path: str) -> list[str]:
    """Validate every section present in the params file at `path` (ParamsError on the first bad
    one, naming its key path) and the cross-section names; returns the sections checked."""
    data = read_params_file(path)  # unknown sections and dangling student / chain names
    loaders = _loaders()
    for name, value in data.items():  # read_params_file refused any section not in SECTIONS
        loaders[name](value)
    return list(data)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (every section)")
    parser.add_argument(
        "--out", default="data/params_checked.json", help="written when the file is valid (a DVC output)"
    )


def run(args: argparse.Namespace) -> int:
    sections = check_params_file(args.params)
    atomic_write_json(args.out, {"checked": sections})
    print(f"check-params: {args.params} is valid ({len(sections)} sections: {', '.join(sections)})")
    return 0
