"""`distillery losses`: the catalogue comes from the code, and docs/losses.md holds its latest form."""

from __future__ import annotations

from pathlib import Path

from pipeline.losses import FAMILIES
from pipeline.losses.catalogue import (
    END_MARKER,
    START_MARKER,
    family_entries,
    render_markdown,
    with_catalogue,
)
from stages.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "losses.md"


def test_catalogue_lists_every_family_with_defaults_formula_and_source(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for kind in FAMILIES:
        assert f"\n{kind}: " in "\n" + out
    assert "temperature     = 4.0" in out and "distance_weight     = 25.0" in out
    assert all("Source:" in entry.formula for entry in family_entries())


def test_one_family_can_be_shown_and_an_unknown_one_is_named(capsys):
    assert main(["losses", "--family", "mmd"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mmd: ") and "0.2, 0.5, 1.0, 2.0, 5.0" in out and "hinton:" not in out
    assert main(["losses", "--family", "mdd"]) == 1
    assert "no loss family mdd; families: ce, hinton" in capsys.readouterr().err


def test_docs_hold_the_current_catalogue():
    text = DOCS.read_text()
    assert with_catalogue(text, render_markdown(family_entries())) == text, (
        "docs/losses.md is stale: run `distillery losses --update-docs docs/losses.md`"
    )


def test_update_docs_replaces_only_the_generated_section(tmp_path, capsys):
    path = tmp_path / "losses.md"
    path.write_text(f"# Hand-written\n\n{START_MARKER}\nold\n{END_MARKER}\n\nafter\n")
    assert main(["losses", "--update-docs", str(path)]) == 0
    text = path.read_text()
    assert text.startswith("# Hand-written") and text.rstrip().endswith("after") and "old" not in text
    assert "### `dkd`" in text
