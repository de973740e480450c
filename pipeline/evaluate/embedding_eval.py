"""The embedding metrics (pipeline/evaluate/embedding.py) of a trained student against its teacher's
cached sentence embedding, per seed and as mean ± std, and the encode speed of the exported student
against the exported teacher: the `embedding` block of evaluate's metrics.json (issue 18).

Turned on by `evaluate.embedding` in params.yaml (default off; `EmbeddingParams`): the teacher's
embedding is the cached per-row tap `teacher_tap` (the MiniLM export's `sentence_embedding`), the
student's its tap `student_tap` (default the same name) on the same rows of the evaluated split.
Mean cosine needs one width (give the student an embedding of the teacher's width); neighbours
and Spearman do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.evaluate.embedding import embedding_agreement, encode_throughput
from pipeline.evaluate.metrics import MetricInputError
from pipeline.students.inputs import PreparedRows, call_student, named_batches
from pipeline.teacher.inputs import fields_of
from pipeline.text.tokenizer import TokenizedText


@torch.no_grad()
def student_embeddings(module: torch.nn.Module, inputs: Any, tap: str, batch_size: int = 512) -> np.ndarray:
    """(N, D) float32: the tap `tap` of a StudentOutput-returning module, in eval mode, on (N,
    *input_shape) float32 inputs, or for a student of named inputs (token ids) on a PreparedRows
    read in padded batches as in training. MetricInputError naming the taps the student has when it
    lacks `tap`."""
    module.eval()
    chunks = []
    for batch in named_batches(module, inputs, batch_size):
        features = call_student(module, batch).features
        if tap not in features:
            raise MetricInputError(
                f"the student has no tap {tap!r} (it has {sorted(features)}); set "
                "evaluate.embedding.student_tap to its embedding tap"
            )
        chunks.append(features[tap].float().reshape(len(features[tap]), -1).cpu().numpy())
    return np.concatenate(chunks)


def encode_sentences(inputs: Any, field: str = "input_ids", pad_id: int = 0) -> TokenizedText:
    """The token ids `encode_speed` feeds both encoders: field `field` (ragged int64 ids) of the
    evaluated rows `inputs` (a PreparedRows), in row order; `pad_id` fills padded positions (the
    attention mask hides them). MetricInputError naming the fields there are when it is missing."""
    if not isinstance(inputs, PreparedRows):
        raise MetricInputError(
            "encode speed needs token ids, but the evaluated data is one float32 array; prepare the "
            "sentences as token fields (prepare.dataset.kind: sentences)"
        )
    source = fields_of(inputs.source)
    if field not in source.names():
        raise MetricInputError(
            f"encode speed reads the token ids of field {field!r}, but the prepared data has "
            f"{source.names()}; set teacher.inputs.input_ids to the field of the token ids"
        )
    ids = source.read(np.asarray(inputs.rows, np.int64), [field])[field]
    values, offsets = np.asarray(ids.values, np.int64), np.asarray(ids.offsets, np.int64)
    longest = int(np.diff(offsets).max(initial=1))
    return TokenizedText(values, offsets, max(longest, 2), 0, int(pad_id))


def spread_over_seeds(per_seed: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "std"}} over the seeds' values (sample std, 0 for one seed), for every
    metric every seed has."""
    names = [m for m in next(iter(per_seed.values())) if all(m in seed for seed in per_seed.values())]
    result = {}
    for name in names:
        values = np.asarray([seed[name] for seed in per_seed.values()], np.float64)
        result[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        }
    return result


def embedding_report(
    per_seed: Mapping[str, np.ndarray], teacher: np.ndarray, k: int = 10
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(spread, per seed) of the embedding metrics of each seed's (N, D_s) embeddings against the
    teacher's (N, D_t): spread = {"mean_cosine" (when D_s == D_t), "knn_agreement",
    "similarity_spearman": {"mean", "std"}}; per seed the raw values under the same names."""
    scores = {}
    for seed, embeddings in per_seed.items():
        raw = embedding_agreement(embeddings, teacher, k)
        scores[seed] = {("knn_agreement" if name.startswith("knn") else name): v for name, v in raw.items()}
    return spread_over_seeds(scores), scores


def encode_speed(
    student_onnx: str | Path,
    teacher_onnx: str | Path,
    tokenized: TokenizedText,
    batch_sizes: tuple[int, ...] = (1, 64),
    max_sentences: int = 256,
) -> dict[str, Any]:
    """{"student": {"sentences_per_s_b<B>"}, "teacher": {...}, "speedup_b<B>": student / teacher}:
    encode throughput of both ONNX encoders on the same tokenised sentences, CPU provider, one
    intra-op thread (so the ratio does not depend on the core count), measured in one run."""
    student = encode_throughput(student_onnx, tokenized, batch_sizes, max_sentences, intra_op_threads=1)
    teacher = encode_throughput(teacher_onnx, tokenized, batch_sizes, max_sentences, intra_op_threads=1)
    return {
        "student": student,
        "teacher": teacher,
        **{
            f"speedup_b{b}": student[f"sentences_per_s_b{b}"] / teacher[f"sentences_per_s_b{b}"]
            for b in batch_sizes
        },
    }
