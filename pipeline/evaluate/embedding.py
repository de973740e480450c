"""How close a student's sentence embeddings are to the teacher's, in the terms an embedding user
trusts (issue 18): direction, neighbours, and the ranking of similarities; and how fast each encodes.

Pure numpy (and scipy's Spearman) on (N, D) float embeddings of the same N sentences, row-aligned;
similarities are cosines, computed in float64. Only `mean_cosine` needs the two widths to agree
(the student's embedding projected to the teacher's width); neighbours and similarity rankings
compare each model with itself first, so any widths work.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from pipeline.evaluate.latency import CPU, open_session
from pipeline.evaluate.metrics import MetricInputError
from pipeline.text.tokenizer import TokenizedText


def _embeddings(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise MetricInputError(
            f"{name}: expected a non-empty (N, D) array of embeddings, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise MetricInputError(f"{name}: contains NaN or Inf; check the model that produced them")
    return array


def _pair(student: np.ndarray, teacher: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    student, teacher = _embeddings(student, "student"), _embeddings(teacher, "teacher")
    if len(student) != len(teacher):
        raise MetricInputError(
            f"student has {len(student)} embeddings and teacher {len(teacher)}; give both the same sentences"
        )
    return student, teacher


def _unit_rows(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, np.finfo(np.float64).tiny)


def mean_cosine(student: np.ndarray, teacher: np.ndarray) -> float:
    """Mean over rows of cos(student_i, teacher_i); both (N, D) with the same D. 1 = same directions."""
    student, teacher = _pair(student, teacher)
    if student.shape[1] != teacher.shape[1]:
        raise MetricInputError(
            f"student embeddings are {student.shape[1]} wide and the teacher's {teacher.shape[1]}; "
            f"cosine needs one width: project the student's embedding to the teacher's width"
        )
    return float(np.mean(np.sum(_unit_rows(student) * _unit_rows(teacher), axis=1)))


def cosine_similarities(embeddings: np.ndarray) -> np.ndarray:
    """(N, N) float64 matrix of pairwise cosine similarities of (N, D) embeddings."""
    unit = _unit_rows(_embeddings(embeddings, "embeddings"))
    return unit @ unit.T


def nearest_neighbours(embeddings: np.ndarray, k: int) -> np.ndarray:
    """(N, k) int64: the k rows most cosine-similar to each row, itself excluded, most similar
    first (ties broken by the lower row index)."""
    similarities = cosine_similarities(embeddings)
    np.fill_diagonal(similarities, -np.inf)
    return np.argsort(-similarities, axis=1, kind="stable")[:, :k].astype(np.int64)


def knn_agreement(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Mean over rows i of |kNN_student(i) ∩ kNN_teacher(i)| / k, neighbours by cosine within each
    model's own embeddings, self excluded. 1 = the same neighbourhoods; about k / (N - 1) by chance."""
    student, teacher = _pair(student, teacher)
    if not 1 <= k < len(student):
        raise MetricInputError(f"k must be in [1, {len(student) - 1}] for {len(student)} sentences, got {k}")
    ours, theirs = nearest_neighbours(student, k), nearest_neighbours(teacher, k)
    overlap = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(ours, theirs)]
    return float(np.mean(overlap) / k)


def similarity_spearman(student: np.ndarray, teacher: np.ndarray) -> float:
    """Spearman rank correlation between the student's and the teacher's pairwise cosine
    similarities over all pairs i < j (the upper triangle). 1 = the same ranking of pairs."""
    student, teacher = _pair(student, teacher)
    if len(student) < 3:
        raise MetricInputError(f"Spearman over pairs needs at least 3 sentences, got {len(student)}")
    upper = np.triu_indices(len(student), k=1)
    rho = spearmanr(cosine_similarities(student)[upper], cosine_similarities(teacher)[upper]).statistic
    return float(rho)


def embedding_agreement(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> dict[str, float]:
    """{"mean_cosine" (only when the widths agree), "knn_agreement@k", "similarity_spearman"}."""
    report = {f"knn_agreement@{k}": knn_agreement(student, teacher, k)}
    report["similarity_spearman"] = similarity_spearman(student, teacher)
    if np.shape(student)[1] == np.shape(teacher)[1]:
        report = {"mean_cosine": mean_cosine(student, teacher), **report}
    return report


def encode_throughput(
    model_path: str | Path,
    tokenized: TokenizedText,
    batch_sizes: Sequence[int] = (1, 64),
    max_sentences: int | None = 256,
    intra_op_threads: int | None = None,
) -> dict[str, float]:
    """{"sentences_per_s_b<B>": ...} of an ONNX encoder on ONNX Runtime's CPU provider.

    tokenized: the sentences' token ids (special tokens included, as the encoder expects). For each
    batch size B, the first `max_sentences` sentences (all when None) are encoded in order in
    batches of B, each right-padded to its own longest sentence; the model's inputs `input_ids`,
    `attention_mask` and, when it declares one, `token_type_ids` (zeros) are fed. One untimed
    batch first (warm-up). intra_op_threads: None = ONNX Runtime's default (every core).
    """
    count = len(tokenized) if max_sentences is None else min(len(tokenized), max_sentences)
    if count == 0:
        raise MetricInputError("tokenized: no sentence to encode")
    session = open_session(model_path, CPU, intra_op_threads)
    declared = {i.name for i in session.get_inputs()}
    result: dict[str, float] = {}
    for batch_size in batch_sizes:
        batches = [
            _feed(tokenized, range(s, min(s + batch_size, count)), declared)
            for s in range(0, count, batch_size)
        ]
        session.run(None, batches[0])
        start = time.perf_counter()
        for feed in batches:
            session.run(None, feed)
        result[f"sentences_per_s_b{batch_size}"] = count / (time.perf_counter() - start)
    return result


def _feed(tokenized: TokenizedText, rows: range, declared: set[str]) -> dict[str, np.ndarray]:
    ids, mask = tokenized.padded(list(rows))
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: value for name, value in feed.items() if name in declared}
