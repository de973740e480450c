"""What a finished cache says about its teacher, and how faithful the stored form is.

The `cache` stage writes this as `data/cache/report.json` (dvc metrics) and `data/cache/plots/`;
`distillery inspect CACHE` prints it. Contents:

- teacher accuracy and ECE (15 equal-width confidence bins; Guo et al. 2017, "On Calibration of Modern
  Neural Networks", arXiv:1706.04599) per labelled split;
- mean entropy of the soft labels softmax(z / T) at T in {1, 2, 4, 8}, and the top-5 mass at T = 1:
  how much "dark knowledge" (the relative probabilities of the wrong classes: Hinton et al. 2015,
  "Distilling the Knowledge in a Neural Network", arXiv:1503.02531) each T exposes;
- the stored dtype's error: KL(p_T(fp32 logits) || p_T(stored logits)) per row, mean / p99 / max,
  against the fp32 logits the build kept for a sample of rows (goal p99 <= 1e-5 nats);
- with the sparse form, its KL error against the dense logits at the same temperatures;
- with per-token logits stored sampled or top-k (`cache.token_logits`), `token_form`: bytes per
  token of the stored form, and for top-k the KL error measured during the build;
- of a view cache, the figures above on its original rows and a `views` block (view_report.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.cache.sparse import densify_top_k, kl_per_row, log_softmax
from pipeline.cache.token_store import form_report

TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
KL_GOAL_P99_NATS = 1e-5
ECE_BINS = 15


def entropy_nats(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(N,) entropy of softmax(logits / T) in nats; logits (N, C)."""
    log_p = log_softmax(logits, temperature)
    return -(np.exp(log_p) * log_p).sum(axis=1)


def top_k_mass(logits: np.ndarray, k: int = 5, temperature: float = 1.0) -> np.ndarray:
    """(N,) probability mass of the k most likely classes of softmax(logits / T)."""
    p = np.exp(log_softmax(logits, temperature))
    k = min(k, p.shape[1])
    return -np.sort(-p, axis=1)[:, :k].sum(axis=1)


ROW_BLOCK = 8192
"""Rows per block in whole-cache statistics, so memory stays O(block x C), not O(N x C)."""


def rowwise(fn, *arrays: np.ndarray, block: int = ROW_BLOCK) -> np.ndarray:
    """fn applied to row blocks of `arrays` (aligned by row), results concatenated along axis 0."""
    num_rows = len(arrays[0])
    parts = [fn(*(a[start : start + block] for a in arrays)) for start in range(0, num_rows, block)]
    return np.concatenate(parts) if parts else np.empty(0)


def top1_confidence(logits: np.ndarray) -> np.ndarray:
    """(N,) max_i softmax(logits)_i at T = 1."""
    return np.exp(log_softmax(logits, 1.0)).max(axis=1)


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = sum_b (n_b / n) |accuracy_b - confidence_b| over equal-width bins of the top-1
    probability at T = 1 (bin b holds confidences in (b/B, (b+1)/B]; Guo et al. 2017)."""
    confidence = rowwise(top1_confidence, logits)
    correct = (rowwise(lambda z: z.argmax(axis=1), logits) == labels).astype(np.float64)
    return calibration_error(confidence, correct, bins)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE from per-row top-1 confidence (N,) and correctness (N,) (see expected_calibration_error)."""
    correct = np.asarray(correct, np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def reliability_bins(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram)."""
    p = np.exp(log_softmax(logits, 1.0))
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == labels)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    out: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        in_bin = index == b
        out["confidence"].append(float(confidence[in_bin].mean()) if in_bin.any() else float("nan"))
        out["accuracy"].append(float(correct[in_bin].mean()) if in_bin.any() else float("nan"))
        out["count"].append(int(in_bin.sum()))
    return out


def kl_summary(
    reference_logits: np.ndarray, approx_logits: np.ndarray, temperatures=TEMPERATURES
) -> dict[str, dict[str, float]]:
    """Per T ("T1", "T2", ...): mean, p99 and max of KL(p_T(reference) || p_T(approx)) in nats."""
    out = {}
    for t in temperatures:
        kl = rowwise(lambda ref, approx, t=t: kl_per_row(ref, approx, t), reference_logits, approx_logits)
        out[f"T{t:g}"] = {
            "mean": float(kl.mean()),
            "p99": float(np.quantile(kl, 0.99)),
            "max": float(kl.max()),
        }
    return out


def _store_bytes(path: Path | None) -> int | None:
    if path is None or not Path(path).exists():
        return None
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def cache_report(
    reader: Any,
    reference_rows: np.ndarray | None = None,
    reference_logits: np.ndarray | None = None,
    temperatures=TEMPERATURES,
) -> dict[str, Any]:
    """The report of a loaded cache (a MemoryCache/StoredCache: whole `logits` in RAM).

    reference_rows (n,) / reference_logits (n, C) float32: the fp32 teacher logits of some rows
    (kept by `build_cache`); without them the stored-dtype KL error is reported as null.
    """
    logits = reader.logits  # stored dtype; statistics are computed in row blocks
    if logits is None:  # no logits per row (a teacher without logits, or logits per token)
        return _report_without_row_logits(reader)
    if getattr(reader, "view", None) is not None:  # a view cache: originals, plus a `views` block
        from pipeline.cache.view_report import view_cache_report  # it builds on this module

        return view_cache_report(reader, cache_report, reference_rows, reference_logits, temperatures)
    labels, splits = np.asarray(reader.label), np.asarray(reader.split)
    num_rows, num_classes = logits.shape
    predicted = rowwise(lambda z: z.argmax(axis=1), logits)
    confidence = rowwise(top1_confidence, logits)
    report: dict[str, Any] = {
        "rows": int(num_rows),
        "num_classes": int(num_classes),
        "logits_dtype": str(reader.logits.dtype),
    }
    stored = _store_bytes(getattr(reader, "path", None))
    if stored is not None and num_rows:
        report["bytes_per_sample"] = stored / num_rows
    report["rows_per_split"] = {name: int((splits == code).sum()) for code, name in enumerate(SPLITS)}
    accuracy, ece = {}, {}
    for code, name in enumerate(SPLITS):
        mask = (splits == code) & (labels != UNLABELLED)
        if mask.any():
            correct = predicted[mask] == labels[mask]
            accuracy[name] = float(correct.mean())
            ece[name] = calibration_error(confidence[mask], correct)
    report["teacher_accuracy"] = accuracy
    report["teacher_ece_15"] = ece
    report["entropy_nats"] = {
        f"T{t:g}": float(rowwise(lambda z, t=t: entropy_nats(z, t), logits).mean()) for t in temperatures
    }
    report["entropy_max_nats"] = float(np.log(num_classes))
    report["top5_mass_T1"] = float(rowwise(lambda z: top_k_mass(z, 5, 1.0), logits).mean())
    if reference_logits is not None and len(reference_logits):
        rows = np.asarray(reference_rows, np.int64)
        kl = kl_summary(
            np.asarray(reference_logits, np.float32), np.asarray(logits[rows], np.float32), temperatures
        )
        report["stored_kl_vs_fp32"] = {"rows": int(len(rows)), **kl}
        report["stored_kl_goal_p99_nats"] = KL_GOAL_P99_NATS
        report["stored_kl_goal_met"] = bool(all(v["p99"] <= KL_GOAL_P99_NATS for v in kl.values()))
    else:
        report["stored_kl_vs_fp32"] = None
    sparse = getattr(reader, "sparse", None)
    if sparse is not None:
        values, indices, lse = sparse
        head_mass = np.exp(np.asarray(values, np.float64) - np.asarray(lse, np.float64)[:, None]).sum(axis=1)
        kl_vs_dense = {}
        for t in temperatures:
            kl = rowwise(
                lambda z, v, i, m, t=t: kl_per_row(z, densify_top_k(v, i, m, num_classes), t),
                logits,
                values,
                indices,
                lse,
            )
            kl_vs_dense[f"T{t:g}"] = {
                "mean": float(kl.mean()),
                "p99": float(np.quantile(kl, 0.99)),
                "max": float(kl.max()),
            }
        report["sparse"] = {
            "top_k": int(values.shape[1]),
            "head_mass_T1": float(head_mass.mean()),
            "kl_vs_dense": kl_vs_dense,
            "tail": "flat (tail mass spread uniformly at T=1)",
        }
    return report


def _report_without_row_logits(reader: Any) -> dict[str, Any]:
    """What can be said of a cache without per-row logits: rows, splits, size, tokens, the outputs."""
    splits = np.asarray(reader.split)
    schema = reader.schema
    report: dict[str, Any] = {
        "rows": len(reader),
        "logits": schema.logits,
        "num_classes": schema.num_classes,
        "feature_shapes": {k: list(v) for k, v in schema.feature_shapes.items()},
        "token_shapes": {k: list(v) for k, v in schema.token_shapes.items()},
        "rows_per_split": {name: int((splits == code).sum()) for code, name in enumerate(SPLITS)},
        "teacher_accuracy": {},
        "stored_kl_vs_fp32": None,
    }
    stored = _store_bytes(getattr(reader, "path", None))
    if stored is not None and len(reader):
        report["bytes_per_sample"] = stored / len(reader)
    if schema.token_form is not None:
        report["token_form"] = form_report(schema.token_form, reader.metadata.manifest)
    tokens = token_count(reader)
    if tokens is not None:
        report["tokens"] = tokens
    if stored is not None and tokens:
        report["bytes_per_token"] = stored / tokens
    return report


def token_count(reader: Any) -> int | None:
    """Tokens a cache holds per-token outputs for (the sum of its rows' token lengths; no per-token
    array is read); None for a cache of per-row outputs only."""
    schema = reader.schema
    if schema.token_form is None and schema.logits != "token" and not schema.token_shapes:
        return None
    return int(reader.token_offsets()[-1])


def store_bytes_per_token(reader: Any) -> float | None:
    """The cache's bytes on disk (every file of the store, as compressed) per token it holds: what
    a sparse per-token form costs in storage (docs/token_distillation.md, "Bytes per token"); None
    for an in-memory cache or one without per-token outputs."""
    stored, tokens = _store_bytes(getattr(reader, "path", None)), token_count(reader)
    return stored / tokens if stored is not None and tokens else None


def write_plots(reader: Any, report: dict[str, Any], directory: str | Path) -> list[Path]:
    """PNG plots of the report into `directory`: entropy vs T, reliability diagram, KL error vs T
    (none for a cache without per-row logits)."""
    if reader.logits is None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        return []
    if getattr(reader, "view", None) is not None:  # a view cache: plot its originals, as the report
        from pipeline.cache.view_report import RowSubset

        reader = RowSubset(reader, np.flatnonzero(np.asarray(reader.view) < 0))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plotted = np.unique(
        np.linspace(0, len(reader.logits) - 1, min(len(reader.logits), 20000)).astype(np.int64)
    )
    logits = np.asarray(reader.logits[plotted], np.float32)  # an even sample bounds the plots' memory
    labels = np.asarray(reader.label)[plotted]
    written = []

    grid = np.geomspace(0.25, 32, 29)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(grid, [entropy_nats(logits, t).mean() for t in grid], marker=".", label="mean entropy")
    ax.axhline(np.log(logits.shape[1]), color="gray", ls="--", label="log C (uniform)")
    ax.set(
        xscale="log",
        xlabel="temperature T",
        ylabel="entropy of softmax(z/T) [nats]",
        title="Soft-label entropy vs temperature",
    )
    ax.legend()
    written.append(_save(fig, directory / "entropy_vs_temperature.png"))

    labelled = labels != UNLABELLED
    if labelled.any():
        bins = reliability_bins(logits[labelled], labels[labelled])
        fig, ax = plt.subplots(figsize=(4, 4))
        centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
        ax.bar(
            centres,
            np.nan_to_num(bins["accuracy"]),
            width=1 / ECE_BINS,
            edgecolor="k",
            alpha=0.7,
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        ece = report["teacher_ece_15"]
        ax.set(
            xlabel="confidence",
            ylabel="accuracy",
            title="Teacher reliability (" + ", ".join(f"{k} ECE {v:.3f}" for k, v in ece.items()) + ")",
        )
        ax.title.set_fontsize(8)
        ax.legend()
        written.append(_save(fig, directory / "reliability.png"))

    series = {}
    if report.get("stored_kl_vs_fp32"):
        series[f"{report['logits_dtype']} vs fp32"] = report["stored_kl_vs_fp32"]
    if report.get("sparse"):
        series[f"top-{report['sparse']['top_k']} vs dense"] = report["sparse"]["kl_vs_dense"]
    if series:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, summary in series.items():
            ts = [float(k[1:]) for k in summary if k.startswith("T")]
            for stat, style in (("mean", "-"), ("p99", "--")):
                values = [max(summary[f"T{t:g}"][stat], 1e-16) for t in ts]
                ax.plot(ts, values, style, marker="o", label=f"{name} ({stat})")
        ax.axhline(KL_GOAL_P99_NATS, color="gray", ls=":", label="goal p99")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="temperature T",
            ylabel="KL [nats]",
            title="Stored-form KL error",
        )
        ax.set_xticks(ts, [f"{t:g}" for t in ts])
        ax.minorticks_off()
        ax.legend(fontsize=7)
        written.append(_save(fig, directory / "kl_error.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
