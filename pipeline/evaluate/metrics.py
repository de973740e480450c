"""Classification metrics of a student on a labelled split, and its distance to the teacher.

Pure numpy on raw logits (B, C); every function computes in float64, whatever the input dtype, so
a metric never depends on how the logits were stored. Natural logarithms throughout (nats).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import DistilleryError


class MetricInputError(DistilleryError, ValueError):
    """Logits and labels that cannot be scored together (shape, range or emptiness)."""


def _logits(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise MetricInputError(f"{name}: expected a non-empty (B, C) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise MetricInputError(f"{name}: contains NaN or Inf; check the model that produced them")
    return array


def _labels(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (logits.shape[0],):
        raise MetricInputError(f"labels: expected shape ({logits.shape[0]},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise MetricInputError(
            f"labels: values must be class indices in [0, {logits.shape[1]}); got "
            f"[{labels.min()}, {labels.max()}] (drop unlabelled rows, label -1, before scoring)"
        )
    return labels.astype(np.int64)


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(z / T) row-wise: (B, C) -> (B, C) float64, stable (max subtracted)."""
    if temperature <= 0:
        raise MetricInputError(f"temperature: must be > 0, got {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) row-wise: (B, C) -> (B, C) float64 probabilities."""
    return np.exp(log_softmax(logits, temperature))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax is the label. logits (B, C), labels (B,) in [0, C)."""
    logits = _logits(logits)
    labels = _labels(labels, logits)
    return float(np.mean(logits.argmax(axis=1) == labels))


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Fraction of rows whose label is among the k highest logits.

    A row counts when fewer than k classes score strictly higher than the label (so ties go in the
    label's favour, and k >= C always gives 1.0). logits (B, C), labels (B,).
    """
    logits = _logits(logits)
    labels = _labels(labels, logits)
    label_score = logits[np.arange(len(labels)), labels]
    rank = (logits > label_score[:, None]).sum(axis=1)
    return float(np.mean(rank < k))


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the label, -1/B sum_i log softmax(z_i)[y_i], in nats."""
    logits = _logits(logits)
    labels = _labels(labels, logits)
    return float(-np.mean(log_softmax(logits)[np.arange(len(labels)), labels]))


def agreement(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Fraction of rows where the student's argmax equals the teacher's. Both (B, C)."""
    student = _logits(student_logits, "student_logits")
    teacher = _logits(teacher_logits, "teacher_logits")
    if student.shape != teacher.shape:
        raise MetricInputError(f"student logits {student.shape} and teacher logits {teacher.shape} differ")
    return float(np.mean(student.argmax(axis=1) == teacher.argmax(axis=1)))


def mean_kl(teacher_logits: np.ndarray, student_logits: np.ndarray, temperature: float = 1.0) -> float:
    """Mean over rows of KL(p_t^T || p_s^T) = sum_c p_t (log p_t - log p_s), p^T = softmax(z / T).

    In nats, *without* the T^2 factor of the training loss (Hinton et al. 2015 §2), so the number is a
    divergence between two distributions and comparable across temperatures. Both (B, C).
    """
    teacher = _logits(teacher_logits, "teacher_logits")
    student = _logits(student_logits, "student_logits")
    if student.shape != teacher.shape:
        raise MetricInputError(f"student logits {student.shape} and teacher logits {teacher.shape} differ")
    log_p_teacher = log_softmax(teacher, temperature)
    log_p_student = log_softmax(student, temperature)
    per_row = (np.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum(axis=1)
    return float(np.mean(np.maximum(per_row, 0.0)))


@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width confidence bins over [0, 1] (bin b holds confidences in (edges[b], edges[b+1]]).

    edges: (M+1,); count: (M,) rows per bin; accuracy: (M,) fraction correct (NaN if empty);
    confidence: (M,) mean max-probability (NaN if empty).
    """

    edges: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def ece(self) -> float:
        """sum_b |B_b|/n * |acc(B_b) - conf(B_b)| over the non-empty bins (eq. 3 of Guo, Pleiss,
        Sun & Weinberger 2017, "On Calibration of Modern Neural Networks", arXiv:1706.04599)."""
        filled = self.count > 0
        weights = self.count[filled] / self.count.sum()
        return float(np.sum(weights * np.abs(self.accuracy[filled] - self.confidence[filled])))


def calibration_bins(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> CalibrationBins:
    """Bin each row by its confidence max_c softmax(z)_c into `n_bins` equal-width bins.

    Bin b (0-based) holds confidences in (b/M, (b+1)/M]; a confidence of exactly b/M goes to bin
    b-1, as in Guo et al. 2017. logits (B, C), labels (B,).
    """
    if n_bins < 1:
        raise MetricInputError(f"n_bins: must be >= 1, got {n_bins}")
    logits = _logits(logits)
    labels = _labels(labels, logits)
    probabilities = softmax(logits)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    bin_of_row = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bin_of_row, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_accuracy = np.bincount(bin_of_row, weights=correct, minlength=n_bins) / count
        bin_confidence = np.bincount(bin_of_row, weights=confidence, minlength=n_bins) / count
    return CalibrationBins(np.linspace(0.0, 1.0, n_bins + 1), count, bin_accuracy, bin_confidence)


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with `n_bins` equal-width confidence bins (see `calibration_bins`), in [0, 1]."""
    return calibration_bins(logits, labels, n_bins).ece


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, n_bins: int = 15, top_k: int = 5
) -> dict[str, float]:
    """accuracy, top-k accuracy (key `top5` for k=5), NLL and ECE of logits (B, C) on labels (B,)."""
    return {
        "accuracy": accuracy(logits, labels),
        f"top{top_k}": top_k_accuracy(logits, labels, top_k),
        "nll": nll(logits, labels),
        "ece": expected_calibration_error(logits, labels, n_bins),
    }


def teacher_metrics(
    student_logits: np.ndarray, teacher_logits: np.ndarray, temperature: float | None = None
) -> dict[str, float]:
    """agreement with the teacher's argmax, KL(teacher || student) at T=1 and, when the recipe has
    one, at the student's temperature (key `kl_T`; T itself is reported as `temperature`)."""
    result = {
        "agreement": agreement(student_logits, teacher_logits),
        "kl_T1": mean_kl(teacher_logits, student_logits, 1.0),
    }
    if temperature is not None:
        result["kl_T"] = mean_kl(teacher_logits, student_logits, temperature)
    return result
