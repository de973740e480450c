"""The `teacher:` section of params.yaml: the built-in CNN's training, or the user's ONNX file.

```yaml
teacher:
  onnx: null              # path to your teacher ONNX; null = train and export the built-in CNN
  input_name: input
  inputs: null            # ONNX input -> prepared field; null = {<input_name>: input}
  logits_name: logits     # null: a teacher without logits (only taps are cached)
  tap_names: null         # null = every output except logits
  max_length: null        # the longest sequence a dynamic sequence axis takes (checked up front)
  per_token: null         # outputs stored per token (ragged); null = those sharing an input's sequence axis
  provider: auto          # auto | cpu | cuda
  intra_op_threads: null  # ONNX Runtime threads; null = its default (physical cores)
  builtin: {...}          # see BuiltinTeacherParams
  parity: {rtol: 1.0e-4, atol: 1.0e-5, batch_sizes: [1, 7, 64]}
```
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from pipeline.config import Seed, StrictModel, Width
from pipeline.names import safe_name


class BuiltinTeacherParams(StrictModel):
    """The built-in CNN (pipeline/teacher/builtin.py) and how it is trained.

    train_on: "full_train" learns from every labelled train row as prepared before the label
    budget and omitted classes (a teacher that knows everything, as in Hinton 2015 §3);
    "transfer_set" learns only from the labelled rows the students see.
    """

    seed: Seed = 0
    channels: list[Width] = Field(default_factory=lambda: [32, 64], min_length=1)
    embed_dim: Width = 128
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=64, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    torch_threads: int = Field(
        default=1, ge=1
    )  # 1: no thread contention on shared cores; digits needs no more
    train_on: Literal["full_train", "transfer_set"] = "full_train"


def _checked_batch_sizes(sizes: tuple[int, ...]) -> tuple[int, ...]:
    if not sizes:
        raise ValueError("give at least one batch size to check parity on, e.g. [1, 7, 64]")
    if any(size < 1 for size in sizes):
        raise ValueError(
            f"every batch size must be >= 1 (a batch of 0 rows compares nothing), got {list(sizes)}; "
            "e.g. [1, 7, 64]"
        )
    return sizes


ParityBatchSizes = Annotated[tuple[int, ...], AfterValidator(_checked_batch_sizes)]
"""Batch sizes of a parity check (teacher.parity.batch_sizes, export.parity_batch_sizes): >= 1 each,
at least one."""

ParityTolerance = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ParityParams(StrictModel):
    """ONNX Runtime vs torch gate on the exported teacher (fp32, CPU provider, real input rows):
    each output passes when max|onnx - torch| <= atol + rtol * max|torch| (docs/evaluation.md)."""

    rtol: ParityTolerance = 1e-4
    atol: ParityTolerance = 1e-5
    batch_sizes: ParityBatchSizes = (1, 7, 64)


class TeacherParams(StrictModel):
    """The whole `teacher:` section."""

    onnx: str | None = None
    input_name: str = "input"
    inputs: dict[str, str] | None = Field(default=None, min_length=1)
    logits_name: str | None = "logits"
    tap_names: list[safe_name("teacher tap")] | None = None  # cache arrays features/<tap>
    max_length: int | None = Field(default=None, ge=1)
    per_token: list[str] | None = None  # outputs stored per token; null = detected from the ONNX dims
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int | None = Field(default=None, ge=1)
    builtin: BuiltinTeacherParams = Field(default_factory=BuiltinTeacherParams)
    parity: ParityParams = Field(default_factory=ParityParams)

    def session_options(self) -> dict:
        """The keyword arguments of `pipeline.teacher.session.open_teacher` this section sets
        (input names and fields, output names, provider, threads, max_length)."""
        return {
            "input_name": self.input_name,
            "inputs": self.inputs,
            "logits_name": self.logits_name,
            "tap_names": self.tap_names,
            "provider": self.provider,
            "intra_op_threads": self.intra_op_threads,
            "max_length": self.max_length,
            "per_token": self.per_token,
        }
