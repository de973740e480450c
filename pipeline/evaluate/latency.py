"""ONNX Runtime latency of an exported model: median wall time of one `session.run` per batch size.

CPU provider always; the CUDA provider when asked and it really loads (onnxruntime-gpu lists CUDA on
every machine and silently falls back to CPU, so the provider in use is read back from the session
and a fallback is reported as "n/a", never as a CUDA number).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
NOT_AVAILABLE = "n/a"
_ORT_DEFAULT_SEVERITY = 2  # warnings and above: ONNX Runtime's own default


def open_session(path: str | Path, provider: str = CPU, intra_op_threads: int | None = 1):
    """An ORT session on `provider`, or None when that provider does not load on this machine.

    intra_op_threads=1 by default: latency of one request on one core, stable on a shared machine.
    ONNX Runtime's own messages about a provider that fails to load are silenced (default logger
    at severity 4 while the session is created); CUDA runs with the teacher's options (no TF32).
    """
    import onnxruntime as ort

    if provider != CPU and provider not in ort.get_available_providers():
        return None
    options = ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if provider == CPU:
        return ort.InferenceSession(str(path), sess_options=options, providers=[CPU])
    provider_options = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": 0} if provider == CUDA else {}
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=[(provider, provider_options), CPU]
        )
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
    return session if session.get_providers()[0] == provider else None


def timeable(session) -> bool:
    """True when the session has one float32 input whose dims after the batch axis are all fixed."""
    inputs = session.get_inputs()
    return (
        len(inputs) == 1
        and inputs[0].type == "tensor(float)"
        and all(isinstance(d, int) for d in inputs[0].shape[1:])
    )


def session_latency_ms(session, batch_size: int, warmup: int = 3, repeats: int = 20, seed: int = 0) -> float:
    """Median milliseconds of `session.run` on one random float32 batch of `batch_size` rows
    (a `timeable` session: one float32 input, fixed dims after the batch axis)."""
    model_input = session.get_inputs()[0]
    shape = [batch_size, *model_input.shape[1:]]
    batch = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    feed = {model_input.name: batch}
    for _ in range(warmup):
        session.run(None, feed)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        timings.append((time.perf_counter() - start) * 1e3)
    return float(np.median(timings))


def onnx_latency_ms(
    path: str | Path,
    batch_sizes: Sequence[int] = (1, 64),
    providers: Sequence[str] = (CPU, CUDA),
    warmup: int = 3,
    repeats: int = 20,
    intra_op_threads: int | None = 1,
) -> dict[str, float | str]:
    """{"latency_ms_<cpu|cuda>_b<batch>": median ms or "n/a"} for every provider and batch size
    ("n/a": the provider does not load here, or the model's input is not `timeable`)."""
    result: dict[str, float | str] = {}
    for provider in providers:
        short = provider.removesuffix("ExecutionProvider").lower()
        session = open_session(path, provider, intra_op_threads)
        for batch_size in batch_sizes:
            key = f"latency_ms_{short}_b{batch_size}"
            result[key] = (
                NOT_AVAILABLE
                if session is None or not timeable(session)
                else session_latency_ms(session, batch_size, warmup, repeats)
            )
    return result


def latency_of(path: str | Path, settings) -> dict[str, float | str]:
    """`onnx_latency_ms` of `path` with the `evaluate.latency` settings (a LatencyParams)."""
    return onnx_latency_ms(
        path,
        settings.batch_sizes,
        settings.providers,
        settings.warmup,
        settings.repeats,
        settings.intra_op_threads,
    )
