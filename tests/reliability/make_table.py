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
  A stage that takes `pipeline.io.output_lock` on a directory deletes such leftovers in it (and the
  `.old-<name>.<pid>` of a `replace_dir` killed between its two renames) as soon as it holds the lock:
  no live writer can own them then. The cache stage locks its output and its scratch.
- **Teacher outputs must follow the batch**: every output is `(batch, *row_shape)`. The cache probes the
  teacher on batches of 2 and 3 rows before writing anything (the `teacher` stage does the same), and
  checks every batch of the build again, so a mean over the batch, a repeated batch, a fixed reshape or
  a transposed output is one line instead of rows silently broadcast into the cache.
- **cache.json is checked against the store** (each array's real shape and dtype from zarr.json or the
  Parquet footers, the manifest against the shard plan) before anything is allocated: a cache.json
  claiming 10^12 rows is refused in a second instead of an out-of-memory kill.
- **Memory-mapped copies** of a cache (data/.scratch/mmap) name the store they copy; every open of a cache
  deletes the copies of its older builds, so rebuilding a large cache does not leave its uncompressed
  size on disk each time.
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
- **Exit codes.** 1: bad input or state (one `distillery <stage>: <Error>: <message>` line; an OSError
  the stage did not expect is one line too: `DiskFullError`, `ReadOnlyFileSystemError`,
  `PermissionError`, `FileSystemError`; `DISTILLERY_TRACEBACK=1` re-raises it); 2: a bad command line
  (`UsageError`, argparse's checks, e.g. `--threads -2`, `--student ../docs`); 130: Ctrl-C
  (`interrupted; re-run to resume`: every output is atomic and training resumes from its checkpoint).
- **Names are data.** Every name that becomes a path, a DVC stage key or a command word (students,
  cohort members, chains and their teacher, teacher taps, `sweep.students`, `label_curve.students`,
  `--student`) must match `[A-Za-z0-9_][A-Za-z0-9_-]{0,63}` (`pipeline/names.py`), checked when params
  are loaded and by argparse; dvc.yaml quotes every name it puts into a `cmd:` as well, and a stage's
  default path made from a name must resolve inside its stage directory (a symlink out is refused).
- **One writer per output.** `train`, `export`, `evaluate` and `sweep` hold a lock on their output
  directory (`.lock-<name>` beside it, an OS lock released even by SIGKILL); a second run of the same
  student fails at once with `OutputBusyError`.
- **Resource limits.** A params file over 1 MiB is refused before parsing; YAML aliases are fine (as
  `yaml.safe_dump` writes them) but a file whose aliases expand past 1,000,000 values, a value that
  contains itself, and merge keys are refused, as are duplicate keys (DVC refuses them too). Layer
  widths are at most 65536; seeds are 0 .. 2**32-1; params numbers must be finite. A cluster
  `memory` below 256 MiB is refused, and a cluster whose workers join but run no task within
  `start_timeout_s` fails naming `cluster.memory`.
- **A stale export.** `parity.json` records the sha256 of the checkpoint it was exported from;
  `distillery evaluate` refuses (`StaleExportError`) a `model.onnx` of other weights than those it
  evaluates, so a leaderboard never pairs one model's latency and size with another's accuracy.
- **The Slurm/PBS scheduler** listens on one address (never 0.0.0.0) and serves HTTP on 127.0.0.1
  only; `cluster.tls` turns on TLS (docs/cluster.md, "Network exposure and limits").
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
    "teacher outputs: a tap reduced over the batch (its batch size is 1), at `distillery cache`",
    "teacher outputs: a model that reshapes its batch",
    "two `distillery cache` at once (the same out",
    "a teacher output named `../../../../escaped`",
    "cache.json claiming 10^12 rows",
    "leftovers of killed cache runs",
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
    "a student named `x;touch pwned` in params.yaml, run by `dvc repro`",
    "`distillery train --student .`",
    "two `distillery train` of one student at once",
    "Ctrl-C (SIGINT) while training",
    "a read-only data/ (EROFS)",
    "params: a YAML alias bomb",
    "params: a duplicate student key",
    "params: a NaN loss weight",
    "`cluster.memory: 1MB`",
    "the Slurm/PBS scheduler's network exposure",
    "`distillery evaluate` by hand on a model.onnx exported before",
]
README_START, README_END = (
    "<!-- reliability table: tests/reliability/make_table.py -->",
    "<!-- end of reliability table -->",
)


def counts(rows: list[dict[str, str]]) -> tuple[int, int]:
    """(faults survived, bad inputs refused): distinct rows recorded by test_faults.py, and by the
    other files of tests/reliability."""
    faults = {row["item"] for row in rows if row.get("file") == "test_faults.py"}
    inputs = {row["item"] for row in rows if row.get("file") != "test_faults.py"}
    return len(faults), len(inputs)


def readme_section(rows: list[dict[str, str]]) -> str:
    """The README's Reliability section body: a few sentences and the rows of README_ITEMS."""
    faults, inputs = counts(rows)
    lines = [
        README_START,
        "Every stage survives SIGKILL and refuses bad input with one line, `distillery <stage>: <Error>: "
        "<message>` (exit code 1; 2 for a bad command line, 130 for Ctrl-C), without a traceback and "
        "without touching what was already written. Names from params or the command line are never "
        "shell code or paths outside their stage's directory. "
        f"Tried by `tests/reliability/` through the real command line: {faults + inputs} faults and bad "
        f"inputs, every one handled ({faults} faults survived, {inputs} bad inputs refused with one "
        "line); the messages below are verbatim "
        "(`<tmp>` is the test's temporary directory). All of them, with the test of each and the decisions "
        "behind them: [docs/reliability.md](docs/reliability.md) (`python -m tests.reliability.make_table`).",
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
    faults, inputs = counts(rows)
    lines = [
        "# Reliability: faults and bad input, and what the user sees",
        "",
        "Every stage survives being killed and refuses bad input with one line, `distillery <stage>: "
        "<Error>: <message>`, exit code 1 (2 for a bad command line, 130 for Ctrl-C) and no traceback, "
        "leaving what was already written intact.",
        f"{faults + inputs} faults and bad inputs tried ({faults} faults survived, {inputs} bad inputs "
        "refused), each one row below.",
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
