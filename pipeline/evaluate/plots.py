"""PNG plots (matplotlib, Agg backend): the offline view of calibration and size/accuracy trade-offs.

`dvc plots show` renders Vega from a CDN; these PNGs are what a user reads on an offline machine
(declared as image plots in dvc.yaml they are copied into dvc_plots/static/ too).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

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
    markers sized by the rows in each bin, the ECE in the legend and the bin counts below. Writes a
    PNG atomically to `path`."""
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for label, bins in bins_by_label.items():
        centres = (bins.edges[:-1] + bins.edges[1:]) / 2
        filled = bins.count > 0
        # marker area ~ rows in the bin: a nearly empty bin's accuracy is noise, and looks it
        (line,) = top.plot(
            bins.confidence[filled],
            bins.accuracy[filled],
            linewidth=0.8,
            alpha=0.6,
            label=f"{label} (ECE {bins.ece:.3f})",
        )
        sizes = 6 + 60 * bins.count[filled] / max(int(bins.count.max()), 1)
        top.scatter(bins.confidence[filled], bins.accuracy[filled], s=sizes, color=line.get_color(), zorder=3)
        bottom.plot(centres, bins.count, drawstyle="steps-mid", color=line.get_color(), label=label)
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


def quality_vs_params(
    names: Sequence[str],
    params: Sequence[float],
    metrics: Mapping[str, Sequence[float | None]],
    path: str | Path,
    reference: tuple[str, float] | None = None,
) -> Path:
    """Embedding quality against parameter count (log x): one marker style per metric of `metrics`
    (name -> one value per student, None = not measured), each point labelled with the student; the
    teacher `reference` = (name, params) as a dotted vertical line (its quality is 1 by definition).
    Writes a PNG atomically."""
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for marker, (metric, values) in zip("os^D", metrics.items()):
        shown = [(x, y, n) for x, y, n in zip(params, values, names) if y is not None]
        if shown:
            axes.scatter([x for x, _, _ in shown], [y for _, y, _ in shown], marker=marker, label=metric)
    for name, x, y in zip(names, params, next(iter(metrics.values()), [])):
        if y is not None:
            axes.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if reference is not None:
        axes.axvline(reference[1], color="black", linestyle=":", linewidth=1)
        axes.annotate(
            reference[0], (reference[1], 1.0), textcoords="offset points", xytext=(4, -10), fontsize=8
        )
    axes.set(xscale="log", xlabel="parameters", ylabel="agreement with the teacher", ylim=(None, 1.02))
    axes.set_title("Embedding quality vs size (test split)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def read_dvclive_tsv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one dvclive metric file (`live/plots/metrics/<a>/<b>.tsv`: columns
    `step`, `<b>` and possibly `timestamp`), as float arrays."""
    lines = Path(path).read_text().strip().splitlines()
    header = lines[0].split("\t")
    name = Path(path).stem
    step_column, value_column = (
        header.index("step"),
        header.index(name) if name in header else len(header) - 1,
    )
    rows = [line.split("\t") for line in lines[1:]]
    return (np.array([float(r[step_column]) for r in rows]), np.array([float(r[value_column]) for r in rows]))


def training_curves(
    train_roots: str | Path | Mapping[str, str | Path], metric: str, path: str | Path
) -> Path | None:
    """One line per trained model and seed of the dvclive metric `metric` (e.g. "val/acc") found
    under each train root (`<model>/seed_<k>/live/plots/metrics/<metric>.tsv`; a mapping gives
    each root's label prefix, e.g. {"": data/train, "sweep": data/sweep/train}); writes a PNG, or
    returns None when no run logged that metric."""
    roots = train_roots if isinstance(train_roots, Mapping) else {"": train_roots}
    files = [
        (prefix, Path(root), file)
        for prefix, root in roots.items()
        for file in sorted(Path(root).glob(f"**/live/plots/metrics/{metric}.tsv"))
    ]
    if not files:
        return None
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for prefix, root, file in files:
        live_dir = file.parents[len(Path(metric).parts) + 1]  # .../seed_<k>/live
        label = "/".join(filter(None, (prefix, live_dir.parent.relative_to(root).as_posix())))
        steps, values = read_dvclive_tsv(file)
        axes.plot(steps, values, label=label, linewidth=1.2)
    axes.set(xlabel="epoch", ylabel=metric, title=f"{metric} per model and seed")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    return _save(figure, path)
