"""Where the teacher runs: the ONNX Runtime execution provider that really works here.

`onnxruntime-gpu` lists the CUDA provider whether or not CUDA can load and silently falls back to CPU
while printing errors (onnxruntime#23372; docs/data_and_teacher.md, "Where it runs"), so the provider
really in use is read back from the session, logged in one line, and ONNX Runtime's own messages are
silenced while probing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

from pipeline.errors import DistilleryError
from pipeline.teacher.inputs import TeacherModelError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": 0}
"""HEURISTIC: EXHAUSTIVE re-benchmarks every new batch shape; use_tf32 0: fp32 results comparable
with the CPU (docs/data_and_teacher.md, "Where it runs")."""
PROVIDERS = ("auto", "cpu", "cuda")
_ORT_DEFAULT_SEVERITY = 2  # warnings and above: ONNX Runtime's own default
_QUIET_RUN = ort.RunOptions()
_QUIET_RUN.log_severity_level = 4  # a failing run raises with the same text; ORT's log line would repeat it


class TeacherProviderError(DistilleryError):
    """The requested execution provider (e.g. cuda) cannot run here."""


def _cuda_plausible() -> tuple[bool, str]:
    """Whether the CUDA provider could load here, and if not, why (cheap checks, no session)."""
    if CUDA not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False, "CUDA_VISIBLE_DEVICES hides every GPU"
    if not (Path("/dev/nvidiactl").exists() or Path("/dev/dxg").exists()):
        return False, "no NVIDIA GPU device on this machine"
    return True, ""


def _session_options(intra_op_threads: int | None, quiet: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = int(intra_op_threads)
    if quiet:
        options.log_severity_level = 3
    return options


def _create(path: Path, providers: list, intra_op_threads: int | None, quiet: bool) -> ort.InferenceSession:
    """An ORT session; `quiet` silences ORT's own provider-loading messages (default logger at 4)."""
    if quiet:
        ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(str(path), _session_options(intra_op_threads, quiet), providers=providers)
    except Exception as error:  # ORT raises Fail/InvalidGraph/InvalidArgument/NotImplemented
        raise TeacherModelError(
            f"{path}: ONNX Runtime cannot load the model ({type(error).__name__}: {error}); "
            f"re-export it with an opset and IR version this onnxruntime {ort.__version__} supports "
            f"(torch.onnx.export with dynamo=True writes IR 10)"
        ) from None
    finally:
        if quiet:
            ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def _open_session(path: Path, provider: str, intra_op_threads: int | None) -> ort.InferenceSession:
    if provider not in PROVIDERS:
        raise TeacherProviderError(f"provider {provider!r} is not known; valid: {', '.join(PROVIDERS)}")
    if provider == "cpu":
        session = _create(path, [CPU], intra_op_threads, quiet=False)
        log.info("teacher runs on %s (requested)", CPU)
        return session
    plausible, reason = _cuda_plausible()
    if provider == "cuda" and not plausible:
        raise TeacherProviderError(
            f"teacher.provider is cuda but {reason}; run on a machine with an NVIDIA GPU or set "
            f"teacher.provider: auto or cpu"
        )
    if not plausible:
        session = _create(path, [CPU], intra_op_threads, quiet=False)
        log.info("teacher runs on %s (CUDA provider unavailable: %s)", CPU, reason)
        return session
    session = _create(path, [(CUDA, dict(CUDA_OPTIONS)), CPU], intra_op_threads, quiet=True)
    used = session.get_providers()[0]
    if used == CUDA:
        log.info("teacher runs on %s", CUDA)
        return session
    reason = reason or "the CUDA provider failed to load (it needs the CUDA 13 and cuDNN 9 libraries)"
    if provider == "cuda":
        raise TeacherProviderError(
            f"teacher.provider is cuda but {reason}; install the CUDA libraries "
            f"(pip install 'onnxruntime-gpu[cuda,cudnn]') or set teacher.provider: auto or cpu"
        )
    log.info("teacher runs on %s (CUDA provider unavailable: %s)", used, reason)
    return session
