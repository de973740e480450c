"""Prepared-data benchmarks (issue 14): on-disk format, prepare's peak RSS as data grows 4x, and what
padding costs with and without length bucketing. Ratios are measured in one run.

    python benchmarks/bench_data.py formats --rows 20000
    python benchmarks/bench_data.py rss --rows 25000            # Parquet and image-folder sources, N and 4N
    python benchmarks/bench_data.py padding --sequences 100000
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
        data.blocks._cache.clear()
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


def _peak_rss(argv: list[str], env: dict) -> tuple[float, float]:
    """(peak RSS MiB of the process tree, seconds), sampled every 20 ms with psutil."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("formats").add_argument("--rows", type=int, default=20000)
    sub.add_parser("rss").add_argument("--rows", type=int, default=25000)
    sub.add_parser("padding").add_argument("--sequences", type=int, default=100000)
    args = parser.parse_args()
    if args.what == "formats":
        formats(args.rows)
    elif args.what == "rss":
        rss(args.rows)
    else:
        padding(args.sequences)


if __name__ == "__main__":
    main()
