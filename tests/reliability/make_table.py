"""Write docs/reliability.md from a real run: every fault and bad input tried, with the test that
tried it and the line the user saw, verbatim (temporary directories shown as `<tmp>`).

    .venv/bin/python -m tests.reliability.make_table [--out docs/reliability.md] [--no-readme]

It runs tests/reliability (each test records the message it provoked, see conftest.py) and the
library-level fault tests of the other areas, and lists only what passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Library-level tests of the other areas that cover a fault the reliability suite also drives through
# the command line: (test id, fault, what it shows)
LIBRARY_TESTS = [
    (
        "tests/cache/test_resume.py::test_cache_resumes_after_sigkill_byte_identical",
        "cache build SIGKILLed at 4 points, one per run (after a shard's record, mid-shard, in the "
        "teacher, in finalize)",
        "no error: each re-run resumes and the store is byte-identical to an uninterrupted build; no "
        "store/ before",
    ),
    (
        "tests/cache/test_resume.py::test_two_processes_writing_alternate_shards_match_one_process",
        "cache shards written by two processes",
        "no error: byte-identical to one process",
    ),
    (
        "tests/cache/test_refusals.py::test_parquet_disk_full_then_rerun_is_byte_identical",
        "full disk during a Parquet cache write",
        "CacheDiskFullError naming the shard; the re-run is byte-identical",
    ),
    (
        "tests/train/test_resume.py::test_training_killed_mid_epoch_resumes_to_identical_weights",
        "training SIGKILLed mid-epoch (dropout, CRD bank negatives, a learned projection)",
        "no error: identical final weights",
    ),
    (
        "tests/export/test_run.py::test_killed_export_leaves_no_partial_onnx_and_no_report",
        "export interrupted while torch writes the ONNX",
        "no model.onnx and no parity.json left",
    ),
    (
        "tests/export/test_run.py::test_killed_quantisation_leaves_the_checked_model_but_no_int8_file_and_no_report",
        "export interrupted while quantising to int8",
        "no model.int8.onnx and no parity.json left",
    ),
]


NOTES = """
## Decisions and known limits

- **Teacher identity at train/evaluate time.** `distillery train` and `distillery evaluate` check the
  cache against the dataset (fingerprint) but not against a teacher file: the cache *is* the student's
  teacher (chains use exported students at other paths, sweep workers have no teacher file), and DVC
  re-runs `cache` when `data/teacher/model.onnx` changes. Where a teacher file is read beside the cache
  (`distillery leaderboard`, which times the ONNX and takes its accuracy from the cache, and
  `distillery inspect --teacher`), a cache of another teacher is refused (StaleCacheError above).
- **NaN/Inf in teacher outputs** are named per teacher batch: the first batch that has any stops the
  build, naming every bad row of that batch (up to 10); completed shards are kept for the re-run.
- **A SIGKILLed atomic write** leaves at most a `.tmp-<name>.*` file beside the target (no reader opens
  it; DVC deletes a stage's outputs before it runs, so it never enters the DVC cache through `dvc repro`).
- **A full disk** anywhere is one line (`DiskFullError`, from `stages/cli.py`); the cache stage says more
  (`CacheDiskFullError`: the shard, its rows, how many completed shards are kept).
- **A damaged training checkpoint** is refused with the directory to delete rather than silently
  restarting the seed (the checkpoint is written atomically, so damage came from outside).
- **Loading never runs code**: weights and checkpoints are safetensors only, params are read with
  `yaml.safe_load`, and `tests/reliability/test_no_unsafe_loading.py` checks the syntax tree of every
  module in pipeline/ and stages/ for pickle, `torch.load` without `weights_only=True`, unsafe YAML
  loaders, `np.load(allow_pickle=True)` and eval/exec.
- **Users' ids and class names** (tests/reliability/test_users_data.py): string sample ids are hashed
  to the int64 key the cache joins on and kept beside it, so every message shows the user's id
  (`img-005112`), never the key; class names are numbered in sorted order and shown by name in
  evaluate's `per_class`, the leaderboard's weakest class and the label curve (docs/data_and_teacher.md).
  No message a test provokes holds a numpy repr (`np.str_('x')`, `np.int64(3)`): `refused()` in
  tests/reliability/conftest.py fails the test that meets one.
- **A name one section takes from another** (a chain's teacher, `label_curve.students`,
  `sweep.students`, a student's chain cache) is checked whenever params are read, and `dvc repro` runs
  `check_params` first, so the user gets the one line above instead of DVC's own `No such file or
  directory` or `Parameters ... are missing`.
- **Params**: `tests/test_params.py` validates every shipped params file through the model of each
  section and checks that a typo in each section (unknown key, wrong type) and a misspelt section name
  are refused naming the key path.
"""


# The rows shown in the README's Reliability section (the full table is docs/reliability.md)
README_ITEMS = [
    "the cache stage SIGKILLed at three points",
    "the cache stage SIGKILLed, then `distillery train`",
    "training SIGKILLed mid-epoch",
    "evaluate SIGKILLed",
    "export SIGKILLed before model.onnx",
    "a full disk during the cache write",
    "a full disk while training",
    "a flipped byte in a logits shard",
    "teacher ONNX missing",
    "teacher ONNX unreadable",
    "teacher ONNX without the named outputs",
    "teacher ONNX with a fixed batch size of 1",
    "teacher ONNX with a wrong input shape, at",
    "teacher ONNX with a wrong input dtype",
    "NaN/Inf in the teacher's outputs",
    "labels out of range",
    "labels that are true/false",
    "duplicate sample ids",
    "dataset ids that do not match the cache",
    "dataset string ids that do not match the cache",
    "params: unknown key,",
    "params: wrong type",
    "params: unknown loss kind",
    "params: unknown student name",
    "params: a misspelt section name",
    "a feature tap the teacher does not have",
    "a teacher tap left out of the cache",
    "a rkd term on a tap one value wide",
    "`teacher.logits_name` naming an output",
    "`chains:` naming a student that is not under `students:`, through `dvc repro`",
    "stale cache (data changed), at `distillery train`",
    "stale cache (teacher changed), at `distillery leaderboard`",
    "a checkpoint from a different architecture, at `distillery export`",
    "a checkpoint that is a torch.save pickle",
]
README_START, README_END = (
    "<!-- reliability table: tests/reliability/make_table.py -->",
    "<!-- end of reliability table -->",
)


def readme_section(rows: list[dict[str, str]]) -> str:
    """The README's Reliability section body: a few sentences and the rows of README_ITEMS."""
    lines = [
        README_START,
        "Every stage survives SIGKILL and refuses bad input with one line, `distillery <stage>: <Error>: "
        "<message>`, and exit code 1, without a traceback and without touching what was already written. "
        "Tried by `tests/reliability/` through the real command line; the messages below are verbatim "
        "(`<tmp>` is the test's temporary directory). All of them, with the test of each and the decisions "
        "behind them: [docs/reliability.md](docs/reliability.md).",
        "",
        "| fault or bad input | what the user sees |",
        "| --- | --- |",
    ]
    for prefix in README_ITEMS:
        match = next((row for row in rows if row["item"].startswith(prefix)), None)
        if match is not None:
            lines.append(f"| {_readable(match['item'])} | {_readable(match['message'])} |")
    lines.append(README_END)
    return "\n".join(lines)


def write_readme(readme: Path, rows: list[dict[str, str]]) -> bool:
    """Put the section into the README, in place of RELIABILITY_PLACEHOLDER or of the previous table."""
    text = readme.read_text()
    section = readme_section(rows)
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        text = head + section + rest.split(README_END, 1)[1]
    elif "RELIABILITY_PLACEHOLDER" in text:
        text = text.replace("RELIABILITY_PLACEHOLDER", section)
    else:
        return False
    readme.write_text(text)
    return True


def _readable(message: str) -> str:
    message = re.sub(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s]+", "<tmp>", message)
    return message.replace("|", "\\|").replace("\n", " ")


def _outcomes(junit: Path) -> dict[str, str]:
    """test name (as in the junit XML: file::name) -> "passed" / "failed" / "skipped"."""
    outcomes = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        name = f"{path}::{case.get('name')}"
        states = {child.tag for child in case}
        outcomes[name] = (
            "failed" if states & {"failure", "error"} else "skipped" if "skipped" in states else "passed"
        )
    return outcomes


def run(out: Path, readme: Path | None = None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        records, junit = Path(tmp) / "records.json", Path(tmp) / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "tests/reliability",
            *[test for test, _, _ in LIBRARY_TESTS],
        ]
        result = subprocess.run(
            command, cwd=ROOT, env={**os.environ, "DISTILLERY_RELIABILITY_RECORD": str(records)}
        )
        rows = json.loads(records.read_text())
        outcomes = _outcomes(junit)
    failed = sorted(name for name, state in outcomes.items() if state == "failed")
    lines = [
        "# Reliability: faults and bad input, and what the user sees",
        "",
        "Every stage survives being killed and refuses bad input with one line, `distillery <stage>: "
        "<Error>: <message>`, exit code 1 and no traceback, leaving what was already written intact.",
        f"This table is written by `.venv/bin/python -m tests.reliability.make_table` from a real run "
        f"({sum(s == 'passed' for s in outcomes.values())} tests passed, {len(failed)} failed); the messages "
        "are verbatim, with the pytest temporary directory shown as `<tmp>`. What each test checks "
        "beyond the "
        "message (nothing written, the old file intact, byte-identical re-runs) is in its docstring and "
        "asserts.",
        "",
        "## Through the command line (tests/reliability)",
        "",
        "| fault or bad input | how it was tried (test) | the error the user sees, verbatim |",
        "| --- | --- | --- |",
    ]
    seen = set()
    for row in rows:
        key = (row["item"], row["message"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"| {_readable(row['item'])} | `{row['test']}` | {_readable(row['message'])} |")
    lines += [
        "",
        "## Library-level tests of the same faults (other areas)",
        "",
        "| fault | test | outcome |",
        "| --- | --- | --- |",
    ]
    for test, fault, outcome in LIBRARY_TESTS:
        state = [s for name, s in outcomes.items() if name.startswith(test)]
        status = "passed" if state and all(s == "passed" for s in state) else "NOT PASSING"
        lines.append(f"| {fault} | `{test.split('::')[1]}` ({test.split('::')[0]}, {status}) | {outcome} |")
    if failed:
        lines += ["", "## Failing in this run", "", *[f"- `{name}`" for name in failed]]
    lines += ["", NOTES.strip()]
    out.write_text("\n".join(lines) + "\n")
    if readme is not None and not write_readme(readme, rows):
        print(f"make_table: {readme} has no reliability placeholder or table markers; left alone")
    print(f"make_table: wrote {out} ({len(seen)} rows; pytest exit code {result.returncode})")
    return result.returncode


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument(
        "--readme", type=Path, default=ROOT / "README.md", help="also fill its Reliability section"
    )
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    args = parser.parse_args()
    sys.exit(run(args.out, None if args.no_readme else args.readme))
