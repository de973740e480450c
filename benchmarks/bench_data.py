"""Prepared-data benchmarks (issue 14): on-disk format, prepare's peak RSS as data grows 4x, and what
padding costs with and without length bucketing. Ratios are measured in one run.

    python benchmarks/bench_data.py formats --rows 20000
    python benchmarks/bench_data.py rss --rows 25000            # Parquet and image-folder sources, N and 4N
    python benchmarks/bench_data.py padding --sequences 100000
    python benchmarks/bench_data.py pipeline --rows 50000 --out /tmp/bench_pipeline   # N and 4N images,
        # image folder and Parquet: prepare -> teacher -> cache -> train peak RSS, then train steps/s
        # from the cache vs a plain DataLoader over the same prepared files
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = (3, 32, 32)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


def formats(rows: int, block: int = 1024, reads: int = 40) -> None:
    """Write `rows` uint8 images as Arrow IPC (ours), Parquet row groups and Zarr chunks of `block`
    rows; time reading `reads` random blocks and 64 random single rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr

    from pipeline.data.dataset import open_prepared
    from pipeline.data.writer import write_arrays

    x = _images(rows)
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, rows // block, size=reads)
    singles = rng.integers(0, rows, size=64)
    write_arrays(
        tmp / "ipc", np.arange(rows), np.zeros(rows), np.zeros(rows), 10, {"pixels": x}, block_rows=block
    )
    flat = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), int(np.prod(SHAPE)))
    for codec in ("none", "zstd"):
        pq.write_table(
            pa.table({"pixels": flat}), tmp / f"{codec}.parquet", row_group_size=block, compression=codec
        )
    z = zarr.create_array(
        tmp / "z.zarr", shape=x.shape, chunks=(block, *SHAPE), dtype="uint8", compressors=None
    )
    z[:] = x
    data = open_prepared(tmp / "ipc")

    def ipc_block(b):
        return data.read(np.arange(b * block, (b + 1) * block), ["pixels"])["pixels"]

    def parquet_block(codec):
        f = pq.ParquetFile(tmp / f"{codec}.parquet")
        return lambda b: f.read_row_group(int(b)).column(0).combine_chunks().flatten().to_numpy()

    cases = {
        "arrow ipc (ours)": (ipc_block, lambda r: data.read(r, ["pixels"])["pixels"], tmp / "ipc"),
        "parquet none": (parquet_block("none"), None, tmp / "none.parquet"),
        "parquet zstd": (parquet_block("zstd"), None, tmp / "zstd.parquet"),
        "zarr (no codec)": (
            lambda b: z[b * block : (b + 1) * block],
            lambda r: z.get_orthogonal_selection(np.sort(r)),
            tmp / "z.zarr",
        ),
    }
    print(f"| format | MB on disk | ms / random {block}-row block | ms / 64 random rows |")
    print("| --- | --- | --- | --- |")
    for name, (read_block, read_rows, path) in cases.items():
        size = (
            sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
            if Path(path).is_dir()
            else Path(path).stat().st_size
        )
        start = time.perf_counter()
        for b in blocks:
            read_block(b)
        per_block = (time.perf_counter() - start) / reads * 1e3
        rows_ms = "n/a (a row group per row)"
        if read_rows is not None:
            start = time.perf_counter()
            read_rows(singles)
            rows_ms = f"{(time.perf_counter() - start) * 1e3:.1f}"
        print(f"| {name} | {size / 2**20:.0f} | {per_block:.2f} | {rows_ms} |")
    shutil.rmtree(tmp, ignore_errors=True)


def _peak_rss(argv: list[str], env: dict, cwd: Path | None = None) -> tuple[float, float]:
    """(peak RSS MiB of the process tree, seconds), sampled every 20 ms with psutil."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            total = parent.memory_info().rss + sum(
                c.memory_info().rss for c in parent.children(recursive=True)
            )
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(0.02)
    if proc.returncode:
        raise SystemExit(proc.stderr.read().decode())
    return peak / 2**20, time.perf_counter() - start


def _parquet_source(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for start in range(0, n, 10000):
        k = min(10000, n - start)
        x = _images(k, seed=start)
        table = pa.table(
            {
                "id": np.arange(start, start + k),
                "label": np.arange(start, start + k) % 10,
                "pixels": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), int(np.prod(SHAPE))),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=4096)
    writer.close()


def _image_folder(root: Path, n: int) -> None:
    from PIL import Image

    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for start in range(0, n, 5000):
        x = _images(min(5000, n - start), seed=start).transpose(0, 2, 3, 1)
        for i, image in enumerate(x):
            Image.fromarray(image).save(root / str((start + i) % 10) / f"{start + i}.png", compress_level=1)


def rss(rows: int) -> None:
    """`distillery prepare` peak RSS for N and 4N images, from Parquet and from an image folder."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    print("| source | rows | prepare peak RSS MiB | seconds | prepared MB |")
    print("| --- | --- | --- | --- | --- |")
    for kind in ("parquet", "image_folder"):
        for n in (rows, 4 * rows):
            tmp = Path(tempfile.mkdtemp())
            if kind == "parquet":
                _parquet_source(tmp / "d.parquet", n)
                shapes = "field_shapes: {pixels: [3, 32, 32]}"
                dataset = f"{{kind: parquet, path: {tmp / 'd.parquet'}, fields: [pixels], {shapes}}}"
            else:
                _image_folder(tmp / "imgs", n)
                dataset = f"{{kind: image_folder, path: {tmp / 'imgs'}, size: [32, 32]}}"
            (tmp / "params.yaml").write_text(
                f"prepare:\n  dataset: {dataset}\n"
                "  transforms: {pixels: [{kind: scale, factor: 0.00392156862745098}]}\n"
            )
            argv = [
                sys.executable,
                "-m",
                "stages.cli",
                "prepare",
                "--params",
                str(tmp / "params.yaml"),
                "--out",
                str(tmp / "out"),
            ]
            peak, seconds = _peak_rss(argv, env)
            size = sum(p.stat().st_size for p in (tmp / "out").rglob("*") if p.is_file()) / 2**20
            print(f"| {kind} | {n} | {peak:.0f} | {seconds:.1f} | {size:.0f} |")
            shutil.rmtree(tmp, ignore_errors=True)


def padding(sequences: int, batch_size: int = 64) -> None:
    """Padded tokens per real token over `sequences` lengths uniform in 8..512, plain shuffle vs
    seeded length bucketing (pipeline.data.collate.length_batches)."""
    from pipeline.data.collate import length_batches, padded_tokens

    lengths = np.random.default_rng(0).integers(8, 513, size=sequences)
    real = int(lengths.sum())
    print(f"| batches (size {batch_size}) | padded tokens / real token |")
    print("| --- | --- |")
    for name, window in (("shuffled, no bucketing", 1), ("bucketed, windows of 100 batches", 100)):
        batches = length_batches(lengths, batch_size, seed=0, bucket_batches=window)
        print(f"| {name} | {padded_tokens(lengths, batches) / real:.3f} |")


PIPELINE_STAGES = ("prepare", "teacher", "cache", "train")


def _teacher_onnx(path: Path, hidden: int = 64, classes: int = 10) -> None:
    """A small ONNX teacher on `pixels` float32 (B, 3, 32, 32): flatten -> linear -> ReLU (`embed`)
    -> linear (`logits`), fixed random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    width = int(np.prod(SHAPE))
    inits = [
        numpy_helper.from_array((rng.standard_normal((width, hidden)) / width**0.5).astype(np.float32), "w1"),
        numpy_helper.from_array(
            (rng.standard_normal((hidden, classes)) / hidden**0.5).astype(np.float32), "w2"
        ),
    ]
    nodes = [
        helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w1"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["embed"]),
        helper.make_node("MatMul", ["embed", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bench_teacher",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", *SHAPE])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("embed", TensorProto.FLOAT, ["batch", hidden]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(path))


def _pipeline_params(root: Path, dataset: str, batch_size: int, workers: int) -> Path:
    """params.yaml of the scale run: the prepared `pixels` uint8 scaled at read time, the ONNX
    teacher on it, one MLP student (0.5 CE + 0.5 KD) trained one epoch on every train row."""
    path = root / "params.yaml"
    path.write_text(
        f"""prepare:
  dataset: {dataset}
  transforms: {{pixels: [{{kind: scale, factor: 0.00392156862745098}}]}}
teacher:
  onnx: {root / "teacher.onnx"}
  inputs: {{pixels: pixels}}
  provider: cpu
  intra_op_threads: 1
cache:
  batch_size: 1024
  rows_per_chunk: 1024
  kl_sample_rows: 2000
students:
  scale:
    arch: {{kind: mlp, hidden: [64]}}
    epochs: 1
    batch_size: {batch_size}
    seeds: [0]
    torch_threads: 1
    loss:
      ce: {{kind: ce, weight: 0.5}}
      kd: {{kind: hinton, weight: 0.5, temperature: 4.0}}
"""
    )
    return path


def _stage_argv(stage: str) -> list[str]:
    """The stage's command line, run in the scale run's directory (default paths under data/)."""
    argv = [sys.executable, "-m", "stages.cli", stage]
    if stage in ("cache", "train"):
        argv.append("--no-progress")
    return [*argv, "--student", "scale"] if stage == "train" else argv


def _steps_per_second(
    root: Path, steps: int, batch_size: int, workers: int, rounds: int = 3
) -> tuple[float, float]:
    """(steps/s of the train stage's loop from the cache, steps/s of a plain DataLoader over the same
    prepared files with the same read-time transform, no teacher): same MLP, AdamW, batch size and
    train rows, one torch thread; `rounds` alternations of `steps` timed steps each (after 5 warm-up
    steps), the best round of each side (the machine is shared)."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from pipeline.config import read_params_file
    from pipeline.data.prepared import open_for_training
    from pipeline.students.registry import build_student
    from pipeline.train.params import validate_students
    from pipeline.train.run import open_student_cache, train_from_reader

    torch.set_num_threads(1)
    params = validate_students(read_params_file(root / "params.yaml")["students"])["scale"]
    params = params.model_copy(update={"epochs": 10_000})  # on_step stops it after the timed steps
    index, source = open_for_training(root / "data" / "prepared")  # as `distillery train` opens it
    reader = open_student_cache(root / "data" / "cache" / "store", index.fingerprint)

    def ours() -> float:
        times: list[float] = []

        def on_step(step: int) -> None:
            times.append(time.perf_counter())
            if len(times) >= steps + 6:
                raise _Enough

        shutil.rmtree(root / "scratch", ignore_errors=True)
        try:
            train_from_reader(
                "scale",
                params,
                reader,
                index,
                root / "out",
                root / "scratch",
                progress=False,
                on_step=on_step,
                source=source,
            )
        except _Enough:
            pass
        return (len(times) - 6) / (times[-1] - times[5])

    class Batches(Dataset):
        def __len__(self):
            return len(rows) // batch_size

        def __getitem__(self, i):
            batch = rows[i * batch_size : (i + 1) * batch_size]
            return source.inputs[batch], source.label[batch]

    rows = np.random.default_rng(0).permutation(source.rows("train", labelled_only=True))
    model = build_student(params.arch, tuple(source.inputs.shape[1:]), source.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.optimizer.lr)

    def plain() -> float:
        loader = DataLoader(
            Batches(), batch_size=None, shuffle=True, num_workers=workers, collate_fn=lambda b: b
        )
        times: list[float] = []
        for inputs, labels in loader:
            logits = model(torch.from_numpy(inputs)).logits
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter())
            if len(times) >= steps + 6:
                break
        return (len(times) - 6) / (times[-1] - times[5])

    best_ours = best_plain = 0.0
    for _ in range(rounds):
        best_ours, best_plain = max(best_ours, ours()), max(best_plain, plain())
    return best_ours, best_plain


class _Enough(Exception):
    """Stops the training loop after the timed steps."""


def pipeline(rows: int, out: Path, kinds: list[str], steps: int, batch_size: int, workers: int) -> None:
    """The scale run (issue 14 item 5): for N = `rows` and 4N synthetic 32x32x3 uint8 images, from an
    image folder and from Parquet, the peak RSS (process tree, sampled) of each stage run through the
    CLI, then the train loop's steps/s from the cache against a plain DataLoader."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    header = " | ".join(f"{s} peak MiB (s)" for s in PIPELINE_STAGES)
    print(f"| source | rows | {header} | steps/s from cache | steps/s plain DataLoader | ratio |", flush=True)
    print("| --- | --- | " + " | ".join("---" for _ in PIPELINE_STAGES) + " | --- | --- | --- |", flush=True)
    for kind in kinds:
        for n in (rows, 4 * rows):
            root = out / f"{kind}-{n}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            if kind == "parquet":
                _parquet_source(root / "d.parquet", n)
                dataset = (
                    f"{{kind: parquet, path: {root / 'd.parquet'}, id_column: id, label_column: label, "
                    "fields: [pixels], field_shapes: {pixels: [3, 32, 32]}}"
                )
            else:
                _image_folder(root / "imgs", n)
                dataset = f"{{kind: image_folder, path: {root / 'imgs'}, size: [32, 32]}}"
            _teacher_onnx(root / "teacher.onnx")
            _pipeline_params(root, dataset, batch_size, workers)
            cells = []
            for stage in PIPELINE_STAGES:
                peak, seconds = _peak_rss(_stage_argv(stage), env, cwd=root)
                cells.append(f"{peak:.0f} ({seconds:.0f})")
            ours, plain = _steps_per_second(root, steps, batch_size, workers)
            print(
                f"| {kind} | {n} | {' | '.join(cells)} | {ours:.1f} | {plain:.1f} | {ours / plain:.2f} |",
                flush=True,
            )
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("formats").add_argument("--rows", type=int, default=20000)
    sub.add_parser("rss").add_argument("--rows", type=int, default=25000)
    sub.add_parser("padding").add_argument("--sequences", type=int, default=100000)
    run = sub.add_parser("pipeline")
    run.add_argument("--rows", type=int, default=50000, help="N; the run also takes 4N")
    run.add_argument("--out", type=Path, default=Path("/tmp/bench_pipeline"))
    run.add_argument("--sources", nargs="+", default=["image_folder", "parquet"])
    run.add_argument("--steps", type=int, default=100, help="timed training steps of each loop, per round")
    run.add_argument("--batch-size", type=int, default=256)
    run.add_argument("--workers", type=int, default=0, help="DataLoader workers of the plain loop")
    args = parser.parse_args()
    if args.what == "pipeline":
        pipeline(args.rows, args.out, args.sources, args.steps, args.batch_size, args.workers)
    elif args.what == "formats":
        formats(args.rows)
    elif args.what == "rss":
        rss(args.rows)
    else:
        padding(args.sequences)


if __name__ == "__main__":
    main()
