"""K cached views per sample (issue 16) on the built-in default, measured in one run:

- test accuracy (mean +- std over the seeds) of one student recipe trained on the single-view cache,
  on k = 1, 8, 32 views of one K = 32 view cache (shift + rotation + mixup), and with online KD (the
  teacher run through ONNX Runtime on freshly drawn views of the same spec every step);
- training wall time per run (equal steps everywhere) and its ratio online / view cache;
- the build time and bytes per view of the view cache;
- docs/views_k_sweep.png: test accuracy against k.

Every run uses the production loop (`pipeline.train.loop.run_seed`): the cached runs read through
`join_training_data`, online KD through a reader that draws each batch's views (`ViewDrawer`, a new
view index per epoch), replays them (`apply_batch`) and runs the teacher on them, so the only
difference is where the teacher's outputs come from. The cache stores the logits only (no taps):
the recipe reads no features. One torch thread, one ONNX Runtime thread. The whole run (3 seeds, 150
epochs = 2,700 steps) took 8 min 51 s on a shared 2-core box, online KD most of it; `--seeds 0`
takes about 3 min, `--epochs 30` a fifth of that (accuracy then is not the patient figure).

    .venv/bin/python benchmarks/bench_views.py [--prepared data/prepared] [--teacher data/teacher/model.onnx]
        [--epochs 150] [--seeds 0 1 2] [--plot docs/views_k_sweep.png]
        [--spec JSON] [--k 1 8 32] [--with-originals] [--only-views | --no-online]

--spec sets the transforms (default SPEC), --k the views trained on (the cache holds max(k)),
--with-originals adds, for each k, a run whose cycles also train once on each sample's original row
(k + 1 choices per sample, without replacement), --only-views skips the single-view and online runs
(and the plot), --no-online the online run only. The search of docs/transforms.md section 6 ran, e.g.:

    nice -n 10 .venv/bin/python benchmarks/bench_views.py --only-views --with-originals --k 8 \
        --spec '[{"kind": "rotate", "degrees": 5}]'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cache.batch import TeacherBatch  # noqa: E402
from pipeline.cache.open import open_cache  # noqa: E402
from pipeline.cache.params import CacheParams  # noqa: E402
from pipeline.cache.views import PartnerIndex, pool_mask  # noqa: E402
from pipeline.cache.writer import build_cache  # noqa: E402
from pipeline.data.prepared import load_prepared  # noqa: E402
from pipeline.teacher.session import open_teacher, teacher_sha256  # noqa: E402
from pipeline.train.data import TrainingData, join_training_data  # noqa: E402
from pipeline.train.loop import run_seed  # noqa: E402
from pipeline.train.params import StudentParams  # noqa: E402
from pipeline.transforms import PartnerPool, ViewDrawer, apply_batch, stack_views  # noqa: E402

SPEC = [{"kind": "rotate", "degrees": 10}, {"kind": "mixup", "alpha": 0.1}]
"""Rotation + mixup. A 1-pixel shift (the smallest) moves 1/8 of a digit: with it (shift 1 + rotate
15 + mixup 0.2) every augmented student lost 3 points (k = 8: 0.930; online KD: 0.933; seed 0)."""
CACHED_VIEWS = 32
VIEW_COUNTS = (1, 8, 32)


def student(epochs: int, views: int | None) -> StudentParams:
    """The recipe every run trains: MLP [64], 0.5 CE + 0.5 T^2 KL at T = 4 (hinton in params.yaml);
    on mixed views the CE term masks the rows (their label is no class), so it is KD alone there."""
    return StudentParams.model_validate(
        {
            "arch": {"kind": "mlp", "hidden": [64]},
            "loss": {
                "ce": {"kind": "ce", "weight": 0.5},
                "kd": {"kind": "hinton", "weight": 0.5, "temperature": 4.0},
            },
            "epochs": epochs,
            "seeds": [0],
            "views": views,
            "checkpoint_every_seconds": 1e9,
        }
    )


class OnlineViews:
    """Online KD through the production loop: a reader whose `batch(rows)` draws a fresh view of each
    row's sample (view index = the epoch), replays it and runs the teacher on it, and a replay whose
    `batch_inputs(rows)` hands the loop those very inputs."""

    def __init__(self, reader, prepared, teacher, spec, seed: int = 0) -> None:
        self.reader, self.teacher, self.spec = reader, teacher, spec
        self.inputs = np.ascontiguousarray(prepared.inputs, np.float32)
        self.source = PartnerIndex(prepared.sample_id).rows(reader.sample_id)
        pool = np.asarray(prepared.sample_id)[pool_mask(prepared.split)]
        self.drawer = ViewDrawer(spec, seed, self.inputs.shape[1:], PartnerPool(pool))
        self.partners = PartnerIndex(prepared.sample_id)
        self.schema, self.sample_id, self.split, self.label = (
            reader.schema,
            reader.sample_id,
            reader.split,
            reader.label,
        )
        self.shape, self.epoch, self._last = tuple(self.inputs.shape[1:]), 0, (None, None)
        self.train_rows = None

    def __len__(self) -> int:
        return len(self.reader)

    def epoch_rows(self, seed: int, epoch: int) -> np.ndarray:
        self.epoch = epoch
        return self.train_rows

    def batch(self, rows) -> TeacherBatch:
        rows = np.asarray(rows, np.int64)
        records = stack_views(self.drawer.draw(int(self.sample_id[r]), self.epoch) for r in rows)
        partners = self.inputs[self.partners.rows(records["partner_id"])]
        inputs = apply_batch(self.spec, records, self.inputs[self.source[rows]], partners).astype(np.float32)
        logits = self.teacher.run(inputs)[self.teacher.logits_name]
        label = np.where(records["lam"] < 1, -1, self.label[rows])
        self._last = (rows, inputs)
        return TeacherBatch(
            rows, self.sample_id[rows], self.split[rows], torch.from_numpy(label), torch.from_numpy(logits)
        )

    def batch_inputs(self, rows) -> np.ndarray:
        last_rows, inputs = self._last
        if last_rows is not None and np.array_equal(last_rows, rows):
            return inputs
        return self.inputs[self.source[np.asarray(rows, np.int64)]]  # validation: the originals


def train_and_test(
    params: StudentParams, data: TrainingData, seed: int, test_inputs, test_labels, workdir: Path
):
    """(test accuracy, training seconds) of one seed."""
    started = time.perf_counter()
    members, _ = run_seed(
        params, data, seed, workdir / f"s{seed}-{time.monotonic_ns()}", "bench", progress=False
    )
    seconds = time.perf_counter() - started
    with torch.no_grad():
        predicted = members[0].model(torch.from_numpy(test_inputs)).logits.argmax(1).numpy()
    return float((predicted == test_labels).mean()), seconds


def cache_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--teacher", default="data/teacher/model.onnx")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--plot", default=str(ROOT / "docs" / "views_k_sweep.png"))
    parser.add_argument("--spec", type=json.loads, default=SPEC, help="the transforms, JSON list")
    parser.add_argument("--k", type=int, nargs="+", default=list(VIEW_COUNTS), help="views trained on")
    parser.add_argument(
        "--with-originals",
        action="store_true",
        help="also train each k with the original row as one more view per cycle (k + 1 choices)",
    )
    parser.add_argument("--only-views", action="store_true", help="skip the single-view and online runs")
    parser.add_argument("--no-online", action="store_true", help="skip the online KD run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prepared = load_prepared(args.prepared)
    teacher = open_teacher(args.teacher, tap_names=[], provider="cpu", intra_op_threads=1)
    sha = teacher_sha256(args.teacher)
    test = prepared.split == 2
    test_inputs, test_labels = np.ascontiguousarray(prepared.inputs[test], np.float32), prepared.label[test]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        builds = {}
        for name, views in (
            ("single", None),
            ("views", {"count": max(args.k), "seed": 0, "transforms": args.spec}),
        ):
            started = time.perf_counter()
            result = build_cache(
                prepared,
                teacher,
                sha,
                prepared.fingerprint,
                CacheParams(views=views),
                work / name,
                work / f"{name}-scratch",
                progress=False,
            )
            builds[name] = (
                open_cache(result.store_dir, prepared.fingerprint),
                time.perf_counter() - started,
                cache_bytes(result.store_dir),
            )
        single, views_cache = builds["single"][0], builds["views"][0]
        view_rows = int((views_cache.view >= 0).sum())
        per_view = (builds["views"][2] - builds["single"][2]) / view_rows
        runs: dict[str, tuple[StudentParams, TrainingData]] = {
            "single-view cache": (student(args.epochs, None), join_training_data(single, prepared, "all"))
        }
        for k in args.k:
            runs[f"view cache, k = {k}"] = (
                student(args.epochs, k),
                join_training_data(views_cache, prepared, "all", k),
            )
            if args.with_originals:
                runs[f"view cache, k = {k} + originals"] = (
                    student(args.epochs, k),
                    with_originals(join_training_data(views_cache, prepared, "all", k)),
                )
        base = runs["single-view cache"][1]
        if not (args.only_views or args.no_online):
            online = OnlineViews(single, prepared, teacher, args.spec)
            online.train_rows = base.train_rows
            runs["online KD (same views drawn live)"] = (
                student(args.epochs, None),
                TrainingData(online, base.inputs, base.train_rows, base.val_rows, base.num_classes, online),
            )
        if args.only_views:
            del runs["single-view cache"]
        results = {}
        for name, (params, data) in runs.items():
            results[name] = [
                train_and_test(params, data, seed, test_inputs, test_labels, work) for seed in args.seeds
            ]
            print(f"  {name}: {[round(a, 4) for a, _ in results[name]]}", flush=True)
    steps = args.epochs * (len(base.train_rows) // 64)
    print(
        f"\nbuilt-in digits, {len(base.train_rows)} training samples (150 labelled), {steps} steps of 64, "
        f"seeds {args.seeds}; test split ({int(test.sum())} rows); teacher test accuracy 0.978"
    )
    print(
        f"single-view cache: built in {builds['single'][1]:.1f} s, {builds['single'][2]} bytes; view cache "
        f"(K = {max(args.k)}, {view_rows} views, spec {json.dumps(args.spec)}): "
        f"built in {builds['views'][1]:.1f} s, "
        f"{builds['views'][2]} bytes, "
        f"{per_view:.1f} bytes per view on disk"
    )
    print("| run | test accuracy (mean +- std) | train s / seed | online / this |")
    print("| --- | --- | --- | --- |")
    online = results.get("online KD (same views drawn live)")
    online_s = statistics.fmean(s for _, s in online) if online else float("nan")
    for name, values in results.items():
        accuracy = [a for a, _ in values]
        seconds = statistics.fmean(s for _, s in values)
        std = statistics.pstdev(accuracy) if len(accuracy) > 1 else 0.0
        print(
            f"| {name} | {statistics.fmean(accuracy):.4f} +- {std:.4f} | {seconds:.1f} "
            f"| {online_s / seconds:.2f} |"
        )
    if not (args.only_views or args.no_online) and tuple(args.k) == VIEW_COUNTS:
        plot(results, args.plot)


def with_originals(data: TrainingData) -> TrainingData:
    """`data` whose every cycle also trains once on each sample's original row (view -1): k + 1 choices
    per sample, drawn without replacement like the views (the replay serves view -1 unchanged)."""
    replay = data.replay
    replay.view_rows = np.concatenate([replay.view_rows, data.train_rows[:, None]], axis=1)
    replay.views += 1
    return data


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def stats(name):
        values = [a for a, _ in results[name]]
        return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0

    fig, ax = plt.subplots(figsize=(5, 3.4))
    means, stds = zip(*(stats(f"view cache, k = {k}") for k in VIEW_COUNTS))
    ax.errorbar(VIEW_COUNTS, means, yerr=stds, marker="o", capsize=3, label="view cache (k of K = 32 views)")
    for name, style in (("single-view cache", "--"), ("online KD (same views drawn live)", ":")):
        mean, _ = stats(name)
        ax.axhline(mean, linestyle=style, color="gray" if style == "--" else "black", label=name)
    ax.axhline(0.970, color="red", linewidth=0.8, label="goal 0.970")
    ax.set_xscale("log", base=2)
    ax.set_xticks(VIEW_COUNTS, [str(k) for k in VIEW_COUNTS])
    ax.set_xlabel("views per sample the student trains on (k)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Digits, 150 labels: accuracy against cached views")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
