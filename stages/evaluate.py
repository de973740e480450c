"""`distillery evaluate --student NAME` (or `--params-students`, or `--all`): metrics of every seed of
a student on the test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cache.open import open_cache
from pipeline.config import load_section, read_params_file
from pipeline.data.prepared import open_for_reading
from pipeline.errors import DistilleryError
from pipeline.evaluate.bias_correction import bias_classes
from pipeline.evaluate.evaluation import join_split
from pipeline.evaluate.lineage import is_root_cache, learned_from, validate_chains
from pipeline.evaluate.params import EvaluateParams
from pipeline.evaluate.run import evaluate_student_dir
from pipeline.io import output_lock
from pipeline.names import child_path
from stages.cli import student_name


class MissingTeacherError(DistilleryError):
    """The teacher ONNX the encode speed is compared with does not exist."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--student", type=student_name, help="a name under `students:` in params.yaml")
    which.add_argument(
        "--all",
        action="store_true",
        help="every student directory under --train-dir, into <out>/<student>/ (the `sweep` students)",
    )
    which.add_argument(
        "--params-students",
        action="store_true",
        help="every student under `students:` in params.yaml, in one process, into <out>/<student>/ "
        "(the pipeline's `evaluate` stage: one process start instead of one per student)",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (sections `evaluate`, `students`)"
    )
    parser.add_argument("--train-dir", default="data/train", help="where the train stage wrote the student")
    parser.add_argument("--prepared", default="data/prepared", help="prepared dataset directory")
    parser.add_argument("--cache", default=None, help="teacher cache (default: the student's `cache`)")
    parser.add_argument(
        "--root-cache",
        default="data/cache/store",
        help="the root teacher's cache (a chain student's `root_agreement` is measured on it)",
    )
    parser.add_argument("--export-dir", default="data/export", help="export root (ONNX for latency)")
    parser.add_argument(
        "--teacher",
        default="data/teacher/model.onnx",
        help="the teacher ONNX: an LM student (per-token logits) is scored against its logits; a sentence "
        "encoder's student is compared with its encode speed (evaluate.embedding on token-id data)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (default data/evaluate/<student>; with --all or --params-students, the "
        "root of one per student)",
    )


def run(args: argparse.Namespace) -> int:
    params = load_section(EvaluateParams, "evaluate", args.params)
    raw = read_params_file(args.params)
    prepared = open_for_reading(args.prepared)  # whole when small; named fields read per batch
    if args.student:
        out = Path(args.out) if args.out else child_path("data/evaluate", args.student, "student")
        _evaluate_student(args, args.student, out, params, raw, prepared)
        return 0
    from pipeline.students.trained import trained_student_dirs

    out_root = Path(args.out or "data/evaluate")
    if args.all:
        students = [d.name for d in trained_student_dirs(args.train_dir)]
    else:
        students = list(raw.get("students") or {})
        _check_trained(students, Path(args.train_dir))
    out_root.mkdir(parents=True, exist_ok=True)  # the DVC output exists even when nothing is trained
    if not students:
        print(f"evaluate: no trained students under {args.train_dir}; nothing to evaluate")
    for student in students:
        _evaluate_student(args, student, child_path(out_root, student, "student"), params, raw, prepared)
    return 0


def _check_trained(students: list[str], train_dir: Path) -> None:
    """Refuse, before any student is scored, when a student of params.yaml has no trained seeds."""
    from pipeline.evaluate.evaluation import EvaluationError
    from pipeline.students.trained import list_trained

    for student in students:
        student_dir = child_path(train_dir, student, "student")
        if not student_dir.is_dir() or not list_trained(student_dir):
            raise EvaluationError(
                f"student {student!r} of params.yaml has no trained seeds under {student_dir}; "
                f"train it first: dvc repro train@{student}"
            )


def _evaluate_student(args, student: str, out: Path, params: EvaluateParams, raw: dict, prepared) -> None:
    recipe = (raw.get("students") or {}).get(student) or {}
    cache_path = args.cache or recipe.get("cache", args.root_cache)
    cache = open_cache(cache_path, dataset_fingerprint=prepared.fingerprint)
    if getattr(cache.schema, "logits", "row") == "token":  # a language model's students
        _evaluate_lm_student(args, student, out, params, raw, recipe, cache, cache_path, prepared)
        return
    taps = (params.embedding.teacher_tap,) if params.embedding is not None else ()
    data = join_split(prepared, cache, params.split, features=taps)
    root = None
    if not is_root_cache(
        cache_path, args.root_cache
    ):  # a chain student: also scored against the root teacher
        root = join_split(
            prepared, open_cache(args.root_cache, dataset_fingerprint=prepared.fingerprint), params.split
        )
    teacher = learned_from(
        {**recipe, "cache": cache_path}, validate_chains(raw.get("chains")), args.root_cache
    )
    classes = bias_classes(
        params.bias_correction, (raw.get("prepare") or {}).get("omit_classes"), prepared.class_names
    )
    bias = (
        (
            join_split(prepared, open_cache(cache_path, dataset_fingerprint=prepared.fingerprint), "val"),
            classes,
        )
        if classes
        else None
    )
    student_dir = child_path(args.train_dir, student, "student")
    encode = _encode_inputs(args.teacher, data, params, raw)
    with output_lock(out, f"distillery evaluate --student {student}"):
        reports = evaluate_student_dir(
            student_dir, data, params, recipe, args.export_dir, out, root, teacher, bias, encode
        )
    for model, report in reports.items():
        latency = report["latency_ms"].get("cpu_b1")
        latency = f"{latency:.3f}" if isinstance(latency, float) else latency
        scores = [
            f"{name} {report[name]['mean']:.4f}"
            for name in ("agreement", "mean_cosine", "knn_agreement", "similarity_spearman")
            if name in report  # a teacher without logits has no agreement; the embedding metrics are opt-in
        ]
        speedup = (report.get("embedding") or {}).get("encode", {})
        scores += [
            f"encode {k.removeprefix('speedup_')} {v:.2f}x" for k, v in speedup.items() if "speedup" in k
        ]
        accuracy = report.get("accuracy")  # none on unlabelled sentences
        accuracy = f" accuracy {accuracy['mean']:.4f} ± {accuracy['std']:.4f}" if accuracy else ""
        print(
            f"evaluate: {model}: {data.name}{accuracy} over {report['seeds']} seeds, "
            f"{', '.join(scores + [f'CPU latency b1 {latency} ms'])} -> {out / 'metrics.json'}"
        )
        if "bias_correction" in report:
            fixed = report["bias_correction"]
            names = fixed.get("class_names") or [str(c) for c in fixed["classes"]]
            print(
                f"evaluate: {model}: bias correction of classes {', '.join(names)}: accuracy "
                f"{fixed['accuracy_before']['mean']:.4f} -> {fixed['accuracy_after']['mean']:.4f}, "
                + ", ".join(
                    f"class {name} {fixed[f'class_{c}_before']['mean']:.4f} -> "
                    f"{fixed[f'class_{c}_after']['mean']:.4f}"
                    for c, name in zip(fixed["classes"], names)
                )
            )


def _encode_inputs(teacher_onnx: str, data, params: EvaluateParams, raw: dict):
    """(teacher ONNX, the evaluated sentences' token ids) for the encode speed of a sentence
    encoder's student (`embedding_block`), or None: without evaluate.embedding, or on data that
    holds no token ids (one float32 input)."""
    from pipeline.evaluate.embedding_eval import encode_sentences
    from pipeline.students.inputs import PreparedRows
    from pipeline.teacher.inputs import fields_of

    if params.embedding is None or not isinstance(data.inputs, PreparedRows):
        return None
    field = ((raw.get("teacher") or {}).get("inputs") or {}).get("input_ids", "input_ids")
    if field not in fields_of(data.inputs.source).names():
        return None
    if not Path(teacher_onnx).is_file():
        raise MissingTeacherError(
            f"{teacher_onnx}: no teacher ONNX to compare encode speed with; run `distillery teacher` "
            "first, or pass --teacher PATH"
        )
    return teacher_onnx, encode_sentences(data.inputs[: params.embedding.encode_sentences], field)


def _evaluate_lm_student(
    args, student, out: Path, params, raw: dict, recipe: dict, cache, cache_path, prepared
):
    """Perplexity, top-1 agreement and KL to the teacher (`--teacher`) on the split's cached rows."""
    from pipeline.cache.report import store_bytes_per_token
    from pipeline.evaluate.lm_eval import evaluate_lm_student

    data = join_split(prepared, cache, params.split)
    teacher = learned_from(
        {**recipe, "cache": cache_path}, validate_chains(raw.get("chains")), args.root_cache
    )
    with output_lock(out, f"distillery evaluate --student {student}"):
        report = evaluate_lm_student(
            child_path(args.train_dir, student, "student"),
            data.inputs,
            data.name,
            params,
            recipe,
            args.teacher,
            Path(args.export_dir) / student,
            out,
            teacher,
            store_bytes_per_token(cache),
        )
    print(
        f"evaluate: {report['model']}: {data.name} perplexity {report['perplexity']['mean']:.3f} "
        f"(teacher {report['teacher_perplexity']:.3f}), top-1 agreement "
        f"{report['top1_agreement']['mean']:.4f}, KL to the teacher {report['kl_to_teacher']['mean']:.4f} "
        f"nats over {report['tokens']} tokens -> {out / 'metrics.json'}"
    )
