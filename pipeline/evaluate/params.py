"""The `evaluate:` section of params.yaml."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from pipeline.config import StrictModel
from pipeline.evaluate.bias_correction import BiasCorrectionParams


class LatencyParams(StrictModel):
    """ONNX Runtime timing: median of `repeats` runs after `warmup`, per batch size and provider."""

    batch_sizes: tuple[PositiveInt, ...] = Field(default=(1, 64), min_length=1)  # 0 times nothing
    providers: tuple[str, ...] = ("CPUExecutionProvider", "CUDAExecutionProvider")
    warmup: int = Field(default=3, ge=0)
    repeats: int = Field(default=20, ge=1)
    intra_op_threads: int | None = Field(default=1, ge=1)


class EmbeddingParams(StrictModel):
    """`evaluate.embedding: {teacher_tap: sentence_embedding, student_tap: null, k: 10,
    encode_batch_sizes: [1, 64], encode_sentences: 256}`."""

    teacher_tap: str = "sentence_embedding"
    student_tap: str | None = None  # null: the teacher's tap name
    k: PositiveInt = 10
    encode_batch_sizes: tuple[PositiveInt, ...] = Field(default=(1, 64), min_length=1)
    encode_sentences: PositiveInt = 256


class EvaluateParams(StrictModel):
    """`evaluate: {split: test, ece_bins: 15, top_k: 5, batch_size: 512, latency: {...}}`."""

    split: str = "test"
    ece_bins: int = Field(default=15, ge=1)
    top_k: int = Field(default=5, ge=1)
    batch_size: int = Field(default=512, ge=1)
    latency: LatencyParams = LatencyParams()
    embedding: EmbeddingParams | None = None  # issue 18: a sentence encoder's student (embedding_eval.py)
    bias_correction: BiasCorrectionParams | None = (
        None  # Hinton 2015 §3; on by itself when prepare.omit_classes is set
    )
