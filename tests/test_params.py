"""Every shipped params file validates through the model of each of its sections, and a typo in any
section (an unknown key, a wrong type, a misspelt section name) is a ParamsError naming its key path."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import SECTIONS, ParamsError, load_section, read_params_file

ROOT = Path(__file__).resolve().parents[1]


def _section(model_path: str, section: str) -> Callable[[Path], Any]:
    """A loader of `section` through its model, as its stage loads it (load_section)."""

    def load(path: Path) -> Any:
        module, _, name = model_path.rpartition(".")
        return load_section(getattr(__import__(module, fromlist=[name]), name), section, path)

    return load


def _students(path: Path) -> Any:
    from pipeline.train.params import validate_students

    return validate_students(read_params_file(path).get("students"))


def _cluster(path: Path) -> Any:
    from pipeline.cluster.params import load_cluster_params

    return load_cluster_params(path)


def _sweep(path: Path) -> Any:
    from pipeline.cluster.params import load_sweep_params

    return load_sweep_params(path)


LOADERS: dict[str, Callable[[Path], Any]] = {
    "prepare": _section("pipeline.data.params.PrepareParams", "prepare"),
    "teacher": _section("pipeline.teacher.params.TeacherParams", "teacher"),
    "cache": _section("pipeline.cache.params.CacheParams", "cache"),
    "students": _students,
    "label_curve": _section("pipeline.train.label_curve.LabelCurveParams", "label_curve"),
    "chains": lambda path: __import__("pipeline.evaluate.lineage", fromlist=["x"]).validate_chains(
        read_params_file(path).get("chains")
    ),
    "sweep": _sweep,
    "cluster": _cluster,
    "evaluate": _section("pipeline.evaluate.params.EvaluateParams", "evaluate"),
    "export": _section("pipeline.export.params.ExportParams", "export"),
    "text": _section("pipeline.text.lm_scenario.TextParams", "text"),
    "lm_teacher": _section("pipeline.text.lm_scenario.LMTeacherParams", "lm_teacher"),
    "caches": lambda path: __import__("pipeline.cache.params", fromlist=["x"]).validate_cache_variants(
        read_params_file(path).get("caches")
    ),
}

# section -> (how to break the shipped section, the start of the error line it must give)
TYPOS: dict[str, list[tuple[Callable[[dict], None], str]]] = {
    "prepare": [
        (
            lambda s: s.update(val_fractoin=0.1),
            "prepare.val_fractoin: unknown key; did you mean 'val_fraction'?",
        ),
        (lambda s: s.update(seed="zero"), "prepare.seed: expected an integer, got 'zero'"),
    ],
    "teacher": [
        (
            lambda s: s["builtin"].update(epoch=3),
            "teacher.builtin.epoch: unknown key; did you mean 'epochs'?",
        ),
        (lambda s: s["parity"].update(rtol="tight"), "teacher.parity.rtol: expected a number, got 'tight'"),
    ],
    "cache": [
        (
            lambda s: s.update(rows_per_chunks=64),
            "cache.rows_per_chunks: unknown key; did you mean 'rows_per_chunk'?",
        ),
        (lambda s: s.update(batch_size=[256]), "cache.batch_size: expected an integer, got [256]"),
    ],
    "students": [
        (
            lambda s: s["hinton"]["loss"]["kd"].update(temprature=2.0),
            "students.hinton.loss.kd.temprature: unknown key; did you mean 'temperature'?",
        ),
        (
            lambda s: s["hinton"].update(epochs="many"),
            "students.hinton.epochs: expected an integer, got 'many'",
        ),
    ],
    "label_curve": [
        (lambda s: s.update(seed=[0]), "label_curve.seed: unknown key; did you mean 'seeds'?"),
        (lambda s: s.update(held_back="maybe"), "label_curve.held_back: expected true or false, got 'maybe'"),
    ],
    "chains": [
        (
            lambda s: s["ta"].update(teachr="assistant"),
            "chains.ta.teachr: unknown key; did you mean 'teacher'?",
        ),
        (
            lambda s: s["ta"].update(teacher=["assistant"]),
            "chains.ta.teacher: expected a string, got ['assistant']",
        ),
    ],
    "sweep": [(lambda s: s.update(student=[]), "sweep.student: unknown key; did you mean 'students'?")],
    "cluster": [
        (lambda s: s.update(worker=2), "cluster.worker: unknown key; did you mean 'workers'?"),
        (
            lambda s: s.update(threads_per_worker="one"),
            "cluster.threads_per_worker: expected an integer, got 'one'",
        ),
    ],
    "evaluate": [
        (
            lambda s: s["latency"].update(repeat=5),
            "evaluate.latency.repeat: unknown key; did you mean 'repeats'?",
        ),
        (lambda s: s.update(ece_bins=1.5), "evaluate.ece_bins: Input should be a valid integer"),
    ],
    "export": [
        (lambda s: s.update(in8=True), "export.in8: unknown key; did you mean 'int8'?"),
        (lambda s: s.update(int8="yes please"), "export.int8: expected true or false, got 'yes please'"),
    ],
}


def shipped_params_files() -> list[Path]:
    """params.yaml and every other params*.yaml shipped in the repository (not data/, not .venv/)."""
    found = {ROOT / "params.yaml"}
    for path in ROOT.rglob("params*.yaml"):
        if not {".venv", "data", ".dvc", ".git", "node_modules"} & set(path.relative_to(ROOT).parts):
            found.add(path)
    return sorted(found)


def test_the_test_knows_every_section_the_pipeline_knows():
    assert set(LOADERS) == set(SECTIONS)


def test_check_params_validates_every_section_the_pipeline_knows():
    from stages.check_params import _loaders, check_params_file

    assert set(_loaders()) == set(SECTIONS)
    assert check_params_file(str(ROOT / "params.yaml")) == list(read_params_file(ROOT / "params.yaml"))


@pytest.mark.parametrize(
    "breaks, message",
    [
        (
            lambda d: d["chains"]["ta"].update(teacher="assistent"),
            "chains.ta.teacher: no student named 'assistent'",
        ),
        (lambda d: d["chains"]["ta"].update(teacher="cohort/nobody"), "chains.ta.teacher: no student named"),
        (
            lambda d: d["label_curve"].update(students=["hinton", "kd"]),
            "label_curve.students: no student named 'kd'",
        ),
        (
            lambda d: d["sweep"].update(students=["hinton", "hintn"]),
            "sweep.students: no student named 'hintn'",
        ),
        (
            lambda d: d["chains"].pop("ta"),
            "students.ta_student.cache: data/chains/ta/store is the store of chain 'ta'",
        ),
    ],
    ids=["chain-teacher", "cohort-member", "label-curve", "sweep", "chain-cache"],
)
def test_a_name_one_section_takes_from_another_must_exist(breaks, message, tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    breaks(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError) as error:
        read_params_file(path)
    assert str(error.value).splitlines()[0].startswith(f"{path}: {message}"), str(error.value)


def test_a_cohort_member_and_sweep_all_are_valid_names(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["chains"]["ta"]["teacher"] = "cohort/mlp_small"
    data["sweep"]["students"] = "all"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    assert read_params_file(path)["chains"]["ta"]["teacher"] == "cohort/mlp_small"


@pytest.mark.parametrize("path", shipped_params_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_params_file_validates_through_every_section_model(path):
    data = read_params_file(path)  # refuses an unknown section
    for section in data:
        LOADERS[section](path)


def _typo_cases():
    for section, cases in TYPOS.items():
        for index, (breaks, message) in enumerate(cases):
            yield pytest.param(section, breaks, message, id=f"{section}-{index}")


@pytest.mark.parametrize("section, breaks, message", list(_typo_cases()))
def test_a_typo_in_each_section_names_its_key_path(section, breaks, message, tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    broken = copy.deepcopy(data)
    breaks(broken[section])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ParamsError) as error:
        LOADERS[section](path)
    assert str(error.value).splitlines()[0].startswith(message), str(error.value)


def test_a_misspelt_section_name_is_refused_naming_the_right_one(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["evalute"] = data.pop("evaluate")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ParamsError, match=re.escape(f"{path}: evalute: unknown section; did you mean 'evaluate'?")
    ):
        read_params_file(path)


def test_a_params_file_is_read_with_the_safe_loader(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("cache: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ParamsError, match=r"not valid params YAML .*python/object/apply:os.system"):
        read_params_file(path)
    path.write_text("cache:\n  batch_size: 64\n rows_per_chunk: 16\n")
    with pytest.raises(ParamsError, match=r"not valid params YAML .*line 3"):
        read_params_file(path)
