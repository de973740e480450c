"""PNG plots (matplotlib, Agg backend): the offline view of calibration and size/accuracy trade-offs.

`dvc plots show` renders Vega from a CDN; these PNGs are what a user reads on an offline machine
(declared as image plots in dvc.yaml they are copied into dvc_plots/static/ too).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from pipeline.evaluate.metrics import CalibrationBins  # noqa: E402
from pipeline.io import atomic_write_bytes  # noqa: E402


def _save(figure: plt.Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def reliability_diagram(
    bins_by_label: dict[str, CalibrationBins], path: str | Path, title: str = "Reliability"
) -> Path:
    """Accuracy per confidence bin against the diagonal, one line per entry (a seed, the teacher),
    with the ECE in the legend and the bin counts below. Writes a PNG atomically to `path`."""
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for label, bins in bins_by_label.items():
        centres = (bins.edges[:-1] + bins.edges[1:]) / 2
        filled = bins.count > 0
        top.plot(bins.confidence[filled], bins.accuracy[filled], marker="o", markersize=3,
                 label=f"{label} (ECE {bins.ece:.3f})")
        bottom.plot(centres, bins.count, drawstyle="steps-mid", label=label)
    top.set(ylabel="accuracy in bin", xlim=(0, 1), ylim=(0, 1), title=title)
    top.legend(fontsize=7, loc="upper left")
    bottom.set(xlabel="confidence (max softmax probability)", ylabel="rows")
    return _save(figure, path)


def accuracy_vs_params(
    names: Sequence[str],
    params: Sequence[float],
    accuracy_mean: Sequence[float],
    accuracy_std: Sequence[float],
    path: str | Path,
    reference: tuple[str, float, float] | None = None,
) -> Path:
    """Test accuracy (mean ± std over seeds) against parameter count (log x), one point per student,
    the teacher `reference` = (name, params, accuracy) as a star. Writes a PNG atomically."""
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    std = np.nan_to_num(np.asarray(accuracy_std, dtype=float))
    axes.errorbar(params, accuracy_mean, yerr=std, fmt="o", capsize=3)
    for name, x, y in zip(names, params, accuracy_mean):
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if reference is not None:
        name, x, y = reference
        axes.scatter([x], [y], marker="*", s=160, color="black", zorder=3)
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    axes.set(xscale="log", xlabel="parameters", ylabel="test accuracy", title="Accuracy vs size")
    axes.grid(True, alpha=0.3)
    return _save(figure, path)
