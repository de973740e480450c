"""GPU figures in one JSON: run by benchmarks/gpu_check.sh on a machine with a GPU (or with
`--device cpu` anywhere, at small sizes, to check the script itself).

Four independent sections; a section that fails (a package missing, no CUDA execution provider, a
time limit) records its error and the others still run:

- `cache`: the cache stage (pipeline/cache build_cache on a TeacherSession: IO binding on the CUDA
  EP) against bare `InferenceSession.run` on the same ResNet-18-like teacher and the same batches;
  `cache_vs_bare` = bare seconds / cache seconds (goal >= 0.95).
- `student_steps`: a ResNet-18-like student (examples/resnet_student.py) on synthetic 3x32x32 data,
  optimiser steps per second in bf16 with CE only and with CE + Hinton KD read from a Zarr cache;
  `kd_vs_ce` = KD steps/s over CE steps/s (goal >= 0.9).
- `export_latency`: the student exported to ONNX, latency on ONNX Runtime's CUDA EP at batch 1 and
  64 (medians); without the CUDA EP, "CUDA EP unavailable" and the CPU EP and torch-on-GPU figures.
- `cuda_vs_cpu`: a few `device: cuda` training steps against the same steps on the CPU (fp32: the
  weights within a relative tolerance; bf16: reported).

Usage: python benchmarks/gpu_check.py [--device cuda|cpu] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

NEEDED = ("numpy", "torch", "onnx", "onnxscript", "onnxruntime", "pydantic", "yaml", "zarr", "numcodecs")
NEEDED += ("safetensors", "filelock", "tqdm", "pyarrow", "polars", "dvclive")
CUDA_EP = "CUDAExecutionProvider"
FACTORY = "examples.resnet_student:make_student"
# ResNet-18's stages (2, 2, 2, 2 blocks of 64..512 channels) with a CIFAR stem; tiny on the CPU.
SIZES = {
    "cuda": {
        "width": 64,
        "blocks": [2, 2, 2, 2],
        "rows": 20480,
        "batch": 256,
        "warmup": 15,
        "steps": 60,
        "rounds": 2,
    },
    "cpu": {"width": 8, "blocks": [1, 1], "rows": 1024, "batch": 64, "warmup": 2, "steps": 6, "rounds": 1},
}
LIMITS = {"cache": 90, "student_steps": 90, "export_latency": 70, "cuda_vs_cpu": 50}  # seconds
INPUT_SHAPE, CLASSES = (3, 32, 32), 100


class SectionTimeout(Exception):
    """A section ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: int):
    def expire(signum, frame):
        raise SectionTimeout(f"ran past its {seconds} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def environment(device: str) -> dict:
    """Versions, the GPU, ONNX Runtime's providers, and the packages this machine lacks."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_asked": device,
        "missing_packages": [name for name in NEEDED if importlib.util.find_spec(name) is None],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = ort.get_available_providers()
    except Exception as error:  # noqa: BLE001 (recorded, not raised)
        info["onnxruntime"] = f"unavailable: {error}"
    return info


def ort_providers(path: Path, device: str) -> tuple[list, str | None]:
    """The providers to time `path` on, and why not the CUDA EP when device is cuda but it cannot
    be used: ONNX Runtime lists the CUDA EP whenever onnxruntime-gpu is installed and falls back to
    the CPU silently when CUDA does not load, so a session is opened to see which one runs."""
    import onnxruntime as ort

    from pipeline.teacher.session import CUDA_OPTIONS

    cpu = ["CPUExecutionProvider"]
    if device != "cuda":
        return cpu, None
    if CUDA_EP not in ort.get_available_providers():
        return cpu, f"CUDA EP unavailable (onnxruntime {ort.__version__}: {ort.get_available_providers()})"
    providers = [(CUDA_EP, CUDA_OPTIONS), *cpu]
    if ort.InferenceSession(str(path), providers=providers).get_providers()[0] != CUDA_EP:
        return cpu, "CUDA EP unavailable: listed by onnxruntime but it did not load"
    return providers, None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resnet(size: dict, taps: dict | None = None):
    """The ResNet-18-like TappedModel (pipeline/students registry, kind python)."""
    from pipeline.students.registry import build_student

    arch = {
        "kind": "python",
        "factory": FACTORY,
        "kwargs": {"width": size["width"], "blocks": size["blocks"]},
    }
    arch["taps"] = taps or {"embed": "pool"}
    return build_student(arch, INPUT_SHAPE, CLASSES)


def synthetic_prepared(rows: int, seed: int = 0):
    """(rows, 3, 32, 32) float32 normal inputs, every row in the train split with a label."""
    from pipeline.data.prepared import PreparedData

    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((rows, *INPUT_SHAPE), dtype=np.float32)
    labels = rng.integers(0, CLASSES, rows).astype(np.int64)
    return PreparedData(
        np.arange(rows, dtype=np.int64), np.zeros(rows, np.int8), labels, inputs, CLASSES, f"gpu-check-{rows}"
    )


def export(model, path: Path, names) -> Path:
    from pipeline.teacher.export import export_onnx

    return export_onnx(model, torch.zeros(2, *INPUT_SHAPE), path, names)


def cache_section(device: str, size: dict, work: Path) -> dict:
    """(a) cache stage vs bare sess.run, same model and batches."""
    import onnxruntime as ort

    from pipeline.cache.params import CacheParams
    from pipeline.cache.writer import build_cache
    from pipeline.teacher.session import open_teacher

    torch.manual_seed(0)
    path = export(resnet(size), work / "teacher.onnx", ["logits", "embed"])
    providers, why_not = ort_providers(path, device)
    on_cuda = why_not is None and device == "cuda"
    result: dict = {"cuda_ep": why_not + ": timed on the CPU EP at CPU sizes"} if why_not else {}
    rows = size["rows"] if on_cuda else min(size["rows"], 4096)
    batch = 512 if on_cuda else 64
    prepared = synthetic_prepared(rows)
    batches = [prepared.inputs[i : i + batch] for i in range(0, rows, batch)]
    bare = ort.InferenceSession(str(path), providers=providers)
    result.update(provider=bare.get_providers()[0], rows=rows, batch=batch)
    for x in batches[:2]:
        bare.run(["logits", "embed"], {"input": x})
    started = time.perf_counter()
    for x in batches:
        bare.run(["logits", "embed"], {"input": x})
    result["bare_seconds"] = round(time.perf_counter() - started, 3)
    teacher = open_teacher(path, tap_names=("embed",), provider="cuda" if on_cuda else "cpu")
    for x in batches[:2]:
        teacher.run(x)
    started = time.perf_counter()
    for x in batches:
        teacher.run(x)
    result["session_seconds"] = round(time.perf_counter() - started, 3)
    result["session_vs_bare"] = round(result["bare_seconds"] / result["session_seconds"], 3)
    params = CacheParams(batch_size=batch, rows_per_chunk=batch, chunks_per_shard=8)
    started = time.perf_counter()
    build_cache(prepared, teacher, "0" * 64, prepared.fingerprint, params, work / "store", work / "scratch")
    result["cache_seconds"] = round(time.perf_counter() - started, 3)
    result["cache_vs_bare"] = round(result["bare_seconds"] / result["cache_seconds"], 3)
    result["goal"] = "cache_vs_bare >= 0.95"
    return result


class RandomTeacher:
    """A fixed random projection of the inputs (logits (B, 100), embed (B, 64)): what a cache for the
    student benchmark needs, without running a network."""

    provider = "numpy"
    tap_names = ("embed",)

    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        flat = int(np.prod(INPUT_SHAPE))
        self.w = rng.standard_normal((flat, CLASSES), dtype=np.float32) * 0.02
        self.v = rng.standard_normal((flat, 64), dtype=np.float32) * 0.02

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        flat = inputs.reshape(len(inputs), -1)
        return {"logits": flat @ self.w, "embed": np.tanh(flat @ self.v)}


def student_cache(prepared, work: Path):
    """The teacher cache of `prepared`: a Zarr store (the real reader), or in RAM when that fails."""
    from pipeline.cache.params import CacheParams
    from pipeline.cache.reader import MemoryCache

    try:
        from pipeline.cache.open import open_cache
        from pipeline.cache.writer import build_cache

        params = CacheParams(batch_size=1024, rows_per_chunk=256, chunks_per_shard=8)
        teacher = RandomTeacher()
        build_cache(
            prepared, teacher, "1" * 64, prepared.fingerprint, params, work / "store", work / "scratch"
        )
        return open_cache(work / "store", dataset_fingerprint=prepared.fingerprint), "zarr"
    except Exception as error:  # noqa: BLE001 (the figure still comes, from RAM)
        outputs = RandomTeacher().run(prepared.inputs)
        reader = MemoryCache(
            prepared.sample_id,
            prepared.split,
            prepared.label,
            outputs["logits"].astype(np.float16),
            {"embed": outputs["embed"]},
        )
        return reader, f"memory (zarr cache failed: {type(error).__name__}: {str(error)[:200]})"


def steps_per_second(params, data, device: torch.device, warmup: int, steps: int) -> float:
    """Optimiser steps per second of the training step (pipeline/train/step.py) fed by the loop's
    source: seeded rows, cache batches, one-batch-ahead device copies."""
    from pipeline.cache.reader import iter_batches
    from pipeline.train.loop import EpochSums, build_members
    from pipeline.train.prefetch import device_batches
    from pipeline.train.step import Stepper, grouped

    members = build_members(params, data, 0, device)
    step = Stepper(members, params, device)
    sums = EpochSums()
    rows = np.random.default_rng(0).permutation(data.train_rows)
    rows = rows[: (len(rows) // params.batch_size) * params.batch_size]
    host = ((b, data.inputs[b.rows]) for b in iter_batches(data.reader, params.batch_size, rows=rows))
    started = None
    for index, micro in enumerate(grouped(device_batches(host, device), params.accumulate_steps)):
        if index == warmup:
            sync(device)
            started = time.perf_counter()
        if index == warmup + steps:
            break
        step(micro, 0, None, sums)
    sync(device)
    sums.flush_into({}, 0)  # reads the losses back: a NaN would raise here
    return steps / (time.perf_counter() - started)


def student_section(device: str, size: dict, work: Path) -> dict:
    """(b) ResNet-18-like student steps/s in bf16: CE only vs CE + KD from the cache."""
    from pipeline.train.data import join_training_data
    from pipeline.train.params import StudentParams

    needed = (size["warmup"] + size["steps"] + 1) * size["batch"]
    prepared = synthetic_prepared(max(size["rows"], needed))
    reader, kind = student_cache(prepared, work)
    data = join_training_data(reader, prepared, "labelled")
    arch = {
        "kind": "python",
        "factory": FACTORY,
        "kwargs": {"width": size["width"], "blocks": size["blocks"]},
    }
    arch["taps"] = {"embed": "pool"}
    losses = {
        "ce": {"ce": {"kind": "ce", "weight": 1.0}},
        "kd": {
            "ce": {"kind": "ce", "weight": 0.5},
            "kd": {"kind": "hinton", "weight": 0.5, "temperature": 4.0},
        },
    }
    result = {"cache": kind, "batch": size["batch"], "precision": "bf16", "timed_steps": size["steps"]}
    dev = torch.device(device)
    rates: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(size["rounds"]):  # alternated, the best of each kept: less noise from the machine
        for name, loss in losses.items():
            params = StudentParams.model_validate(
                {
                    "arch": arch,
                    "loss": loss,
                    "batch_size": size["batch"],
                    "precision": "bf16",
                    "device": device,
                }
            )
            rates[name].append(steps_per_second(params, data, dev, size["warmup"], size["steps"]))
    for name, values in rates.items():
        result[f"{name}_steps_per_s"] = round(max(values), 2)
    result["rounds"] = size["rounds"]
    result["kd_vs_ce"] = round(result["kd_steps_per_s"] / result["ce_steps_per_s"], 3)
    result["goal"] = "kd_vs_ce >= 0.9"
    return result


def median_latency_ms(call, runs: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 3)


def latency_section(device: str, size: dict, work: Path) -> dict:
    """(c) exported student latency, ORT CUDA EP at batch 1 and 64 (medians, ms)."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = resnet(size).eval()
    path = export(model, work / "student.onnx", ["logits", "embed"])
    inputs = {
        b: np.random.default_rng(b).standard_normal((b, *INPUT_SHAPE), dtype=np.float32) for b in (1, 64)
    }
    runs = {1: 200, 64: 50} if device == "cuda" else {1: 20, 64: 5}
    result: dict = {"runs": runs}
    providers, why_not = ort_providers(path, device)
    if why_not:
        result["cuda_ep"] = why_not
    session = ort.InferenceSession(str(path), providers=providers)
    result["provider"] = session.get_providers()[0]
    for b, x in inputs.items():
        result[f"ort_batch{b}_ms"] = median_latency_ms(
            lambda x=x: session.run(["logits"], {"input": x}), runs[b]
        )
    if device == "cuda" and torch.cuda.is_available():  # torch-side figures, for comparison
        dev = torch.device("cuda")
        model = model.to(dev)
        for b, x in inputs.items():
            tensor = torch.from_numpy(x).to(dev)

            def forward(tensor=tensor):
                with torch.no_grad():
                    model(tensor)
                torch.cuda.synchronize(dev)

            result[f"torch_cuda_batch{b}_ms"] = median_latency_ms(forward, runs[b])
    return result


def correctness_section(device: str, size: dict, work: Path) -> dict:
    """(d) a few training steps on `device` against the same steps on the CPU."""
    from pipeline.train.data import join_training_data
    from pipeline.train.loop import run_seed
    from pipeline.train.params import StudentParams
    from tests.train.helpers import make_cache, make_prepared

    prepared = make_prepared()
    data = join_training_data(make_cache(prepared), prepared, "labelled")
    result: dict = {
        "compared": f"{device} vs cpu",
        "model": "mlp [64, 32], ce + hinton, 2 epochs of batch 32",
    }

    def weights(precision: str, where: str) -> dict:
        params = StudentParams.model_validate(
            {
                "arch": {"kind": "mlp", "hidden": [64, 32]},
                "loss": {"ce": {"kind": "ce", "weight": 0.5}, "kd": {"kind": "hinton", "weight": 0.5}},
                "epochs": 2,
                "batch_size": 32,
                "precision": precision,
                "device": where,
            }
        )
        members, _ = run_seed(
            params, data, 0, work / f"{where}-{precision}", "h", progress=False, device=where
        )
        return {k: v.detach().cpu().double() for k, v in members[0].model.state_dict().items()}

    reference = weights("fp32", "cpu")
    scale = max(v.abs().max().item() for v in reference.values())
    for precision in ("fp32", "bf16"):
        other = weights(precision, device)
        difference = max((other[k] - reference[k]).abs().max().item() for k in reference)
        result[f"{precision}_max_relative_difference"] = float(f"{difference / scale:.3g}")
    result["fp32_ok"] = result["fp32_max_relative_difference"] < 1e-4
    result["tolerance"] = "fp32: max |w_dev - w_cpu| / max |w_cpu| < 1e-4; bf16: reported only"
    return result


SECTIONS = {
    "cache": cache_section,
    "student_steps": student_section,
    "export_latency": latency_section,
    "cuda_vs_cpu": correctness_section,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON to write")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = {"environment": environment(args.device), "sections": {}}
    size = SIZES[args.device]
    if args.device == "cuda" and not torch.cuda.is_available():
        report["error"] = "--device cuda but torch sees no CUDA device; run with --device cpu"
    for name in args.only:
        if "error" in report:
            break
        section_started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as work:
            try:
                with time_limit(LIMITS[name]):
                    figures = {"ok": True, **SECTIONS[name](args.device, size, Path(work))}
            except BaseException as error:  # noqa: BLE001 (each section records its own failure)
                if isinstance(error, KeyboardInterrupt):
                    raise
                lines = traceback.format_exception(error)
                figures = {
                    "ok": False,
                    "error": f"{type(error).__name__}: {error}"[:500],
                    "where": lines[-3:-1],
                }
        figures["seconds"] = round(time.perf_counter() - section_started, 1)
        report["sections"][name] = figures
        print(f"gpu_check: {name}: {json.dumps(figures)}", flush=True)
        Path(args.out).write_text(json.dumps(report, indent=2))  # what is done survives a later kill
    report["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"gpu_check: wrote {args.out} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
