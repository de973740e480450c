"""Every citation can be opened by a reader of the repository: nothing points at notes kept outside
it, every arXiv id cited is listed in docs/sources.md, and every loss family cites a listed paper."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from pipeline.losses import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "docs" / "sources.md"
SCANNED = (
    "pipeline",
    "stages",
    "tests",
    "benchmarks",
    "docs",
    "README.md",
    "params.yaml",
    "dvc.yaml",
    "Makefile",
)
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ""}
# The research notes and source documents the project was started from live outside the repository.
OUTSIDE = re.compile(r"seeds/\d{3}|\b(?:aesthetics|ecosystem|DESIGN|probe|cache)\.md\b")
ARXIV = re.compile(r"arXiv:(\d{4}\.\d{4,5})")


def _texts():
    for name in SCANNED:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if file.suffix in SUFFIXES and "__pycache__" not in file.parts:
                yield file.relative_to(ROOT), file.read_text(errors="replace")


def test_nothing_cites_notes_outside_the_repository():
    offenders = [
        f"{path}:{number}: {line.strip()}"
        for path, text in _texts()
        for number, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not offenders, "cite the paper (docs/sources.md) or the docs page instead:\n" + "\n".join(
        offenders
    )


def test_every_arxiv_id_cited_is_listed_in_docs_sources():
    listed = set(ARXIV.findall(SOURCES.read_text()))
    missing = sorted(
        f"{path}: arXiv:{arxiv_id}"
        for path, text in _texts()
        for arxiv_id in set(ARXIV.findall(text)) - listed
    )
    assert not missing, "add these papers to docs/sources.md:\n" + "\n".join(missing)


def test_every_loss_family_cites_a_paper_listed_in_docs_sources():
    listed = set(ARXIV.findall(SOURCES.read_text()))
    for kind, family in FAMILIES.items():
        formula = inspect.getdoc(family.adapter) or ""
        source = formula.partition("Source:")[2]
        cited = set(ARXIV.findall(source))
        assert cited or "JMLR" in source, f"{kind}: the adapter's docstring names no paper after 'Source:'"
        assert cited <= listed, f"{kind}: {sorted(cited - listed)} not in docs/sources.md"
