"""Evaluation of a causal-LM student (per-token logits, `arch: {kind: causal_lm}`) on one split of a
prepared token dataset: held-out perplexity, top-1 agreement with the teacher and KL(teacher ||
student), per seed, mean ± std (docs/token_distillation.md, "The LM scenario").

The teacher's logits come from its ONNX file run on the same padded batches, not from the cache:
a sampled or top-k cache holds no dense row to compare with, and every student (dense, sampled
or top-k cache) is then scored against the same exact teacher. Each sentence is `<bos> ... <eos>`;
position t's logits predict token t + 1, so the targets are the ids shifted by one and the real
targets are those whose mask is 1 (pipeline/text/lm_metrics.py). Sums run over every real target
of the split, so the figures are per token, not per sentence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from pipeline.errors import DistilleryError
from pipeline.evaluate.latency import latency_of
from pipeline.evaluate.params import EvaluateParams
from pipeline.evaluate.recipe import recipe_summary
from pipeline.io import atomic_write_json
from pipeline.students.inputs import PreparedRows, named_batches
from pipeline.text.lm_metrics import nll_sum, shift_for_next_token, token_kl, top1_agreement

LM_SPREAD = ("perplexity", "top1_agreement", "kl_to_teacher")
"""The LM metrics reported as mean ± std over seeds."""


class LMEvaluationError(DistilleryError):
    """The split, the student or the teacher cannot be scored as a language model."""


def _spread(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


class _TeacherLogits:
    """The teacher ONNX (CPU) on a batch of named int64 fields -> (B, L, V) float32 logits."""

    def __init__(self, path: str | Path, logits_name: str = "logits") -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.logits_name = logits_name

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> np.ndarray:
        missing = [name for name in self.inputs if name not in batch]
        if missing:
            raise LMEvaluationError(
                f"the teacher takes {', '.join(self.inputs)} but the student's batches carry "
                f"{', '.join(batch)}; train the student on the teacher's input fields"
            )
        feed = {name: batch[name].numpy().astype(np.int64) for name in self.inputs}
        return self.session.run([self.logits_name], feed)[0]


def lm_scores(
    modules: Mapping[str, torch.nn.Module],
    inputs: PreparedRows,
    teacher_onnx: str | Path,
    batch_size: int = 64,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(seed -> {"perplexity", "nll", "top1_agreement", "kl_to_teacher", "tokens"}, the teacher's
    {"perplexity", "nll", "tokens"}) on the rows `inputs` (int64 `input_ids` + `attention_mask`).
    Every module (eval mode) sees the same batches as the teacher."""
    teacher = _TeacherLogits(teacher_onnx)
    sums = {seed: {"nll": 0.0, "agree": 0.0, "kl": 0.0} for seed in modules}
    teacher_nll, count = 0.0, 0
    first = next(iter(modules.values()))
    with torch.no_grad():
        for batch in named_batches(first, inputs, batch_size):
            if "input_ids" not in batch or "attention_mask" not in batch:
                raise LMEvaluationError(
                    f"an LM student reads input_ids and attention_mask; this one reads {', '.join(batch)}"
                )
            ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
            _, _, targets, target_mask = shift_for_next_token(ids, mask)
            tokens = int(target_mask.sum())
            if not tokens:
                continue
            teacher_logits = teacher(batch)[:, :-1]
            teacher_nll += nll_sum(teacher_logits, targets, target_mask)[0]
            for seed, module in modules.items():
                logits = module.eval()(**batch).logits.float().numpy()[:, :-1]
                sums[seed]["nll"] += nll_sum(logits, targets, target_mask)[0]
                sums[seed]["agree"] += top1_agreement(teacher_logits, logits, target_mask) * tokens
                sums[seed]["kl"] += token_kl(teacher_logits, logits, target_mask) * tokens
            count += tokens
    if not count:
        raise LMEvaluationError("the split has no token to predict (every sentence shorter than 2 tokens)")
    per_seed = {
        seed: {
            "perplexity": math.exp(s["nll"] / count),
            "nll": s["nll"] / count,
            "top1_agreement": s["agree"] / count,
            "kl_to_teacher": s["kl"] / count,
            "tokens": count,
        }
        for seed, s in sums.items()
    }
    return per_seed, {
        "perplexity": math.exp(teacher_nll / count),
        "nll": teacher_nll / count,
        "tokens": count,
    }


def evaluate_lm_student(
    student_dir: str | Path,
    inputs: PreparedRows,
    split: str,
    params: EvaluateParams,
    recipe: Mapping[str, Any],
    teacher_onnx: str | Path,
    export_dir: str | Path | None,
    out_dir: str | Path,
    teacher: str | None = None,
    cache_bytes_per_token: float | None = None,
) -> dict[str, Any]:
    """Score every seed of the LM student in `student_dir` on `inputs` (the rows of `split`), time
    its export (`export_dir/model.onnx`, when given) and write `out_dir/metrics.json`: {"model",
    "recipe", "teacher", "params", "seeds", "split", "rows", "tokens", perplexity / top1_agreement
    / kl_to_teacher {"mean", "std"}, "teacher_perplexity", "cache_bytes_per_token", "latency_ms",
    "per_seed"}. cache_bytes_per_token: the bytes on disk a token of the student's cache takes
    (`cache.report.store_bytes_per_token`), reported beside the scores; None leaves it out."""
    from pipeline.evaluate.run import exported_model
    from pipeline.students.registry import count_parameters
    from pipeline.students.trained import list_trained, load_trained_student

    student_dir = Path(student_dir)
    models = list_trained(student_dir)
    if len(models) != 1:
        raise LMEvaluationError(
            f"{student_dir}: an LM student is one model with its seeds (found {len(models)} models); "
            "cohorts of LM students are not evaluated"
        )
    name, seed_dirs = next(iter(models.items()))
    modules = {seed_dir.name: load_trained_student(seed_dir) for seed_dir in seed_dirs}
    per_seed, teacher_scores = lm_scores(modules, inputs, teacher_onnx, min(params.batch_size, 64))
    report: dict[str, Any] = {
        "model": name,
        "recipe": recipe_summary(recipe),
        **({"teacher": teacher} if teacher is not None else {}),
        "params": count_parameters(next(iter(modules.values()))),
        "seeds": len(modules),
        "split": split,
        "rows": len(inputs),
        "tokens": teacher_scores["tokens"],
        **{metric: _spread([s[metric] for s in per_seed.values()]) for metric in LM_SPREAD},
        "teacher_perplexity": teacher_scores["perplexity"],
    }
    if cache_bytes_per_token is not None:
        report["cache_bytes_per_token"] = float(cache_bytes_per_token)
    if export_dir is not None:
        onnx_path, _ = exported_model(export_dir, seed_dirs)
        latency = latency_of(onnx_path, params.latency)
        report["latency_ms"] = {k.removeprefix("latency_ms_"): v for k, v in latency.items()}
    report["per_seed"] = per_seed
    atomic_write_json(Path(out_dir) / "metrics.json", report)
    return report
