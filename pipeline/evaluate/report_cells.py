"""Leaderboard cells read off a metrics.json payload, shared by the leaderboard's column sets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def spread_cells(report: Mapping[str, Any], metrics: Iterable[str]) -> dict[str, Any]:
    """`<metric>_mean` and `<metric>_std` for each of `metrics` that `report` holds: a {mean, std}
    mapping as written, a plain number as that mean with std 0.0 (one seed); absent ones left out."""
    cells: dict[str, Any] = {}
    for metric in metrics:
        value = report.get(metric)
        if isinstance(value, Mapping):
            cells[f"{metric}_mean"], cells[f"{metric}_std"] = value.get("mean"), value.get("std")
        elif isinstance(value, (int, float)):
            cells[f"{metric}_mean"], cells[f"{metric}_std"] = value, 0.0
    return cells
