"""`distillery losses`: print the loss catalogue (every family, its params with defaults, its
formula and sources), built from pipeline/losses itself."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import DistilleryError


class UnknownFamilyError(DistilleryError, ValueError):
    """`--family` names no loss family."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--family", action="append", metavar="KIND", help="show only this family (repeatable); default: all"
    )
    parser.add_argument("--markdown", action="store_true", help="markdown (as in docs/losses.md)")
    parser.add_argument(
        "--update-docs",
        metavar="PATH",
        help="rewrite the generated catalogue section of PATH (docs/losses.md) instead",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.io import atomic_write_text
    from pipeline.losses import FAMILIES
    from pipeline.losses.catalogue import family_entries, render_markdown, render_text, with_catalogue

    entries = family_entries()
    if args.family:
        unknown = sorted(set(args.family) - set(FAMILIES))
        if unknown:
            raise UnknownFamilyError(f"no loss family {', '.join(unknown)}; families: {', '.join(FAMILIES)}")
        entries = [entry for entry in entries if entry.kind in args.family]
    if args.update_docs:
        path = Path(args.update_docs)
        atomic_write_text(
            path, with_catalogue(path.read_text() if path.exists() else "", render_markdown(entries))
        )
        print(f"wrote the catalogue of {len(entries)} families into {path}")
        return 0
    print((render_markdown if args.markdown else render_text)(entries), end="")
    return 0
