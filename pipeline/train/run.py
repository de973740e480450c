"""Train one student (every seed, or every member of a cohort) and write its outputs.

`train_student` is what the `train` stage and the Dask sweep call. Per seed it trains in
`scratch_dir/seed_<k>/` (checkpoints, dvclive), resuming from a checkpoint when one was left by a
killed run with the same params and data; when every seed is done it assembles the declared output
(docs/architecture.md) in scratch and moves it onto `out_dir` in one rename:

    out_dir/seed_<k>/{model.safetensors, student.json, live/}              one student
    out_dir/<member>/seed_<k>/{model.safetensors, student.json, live/}     each cohort member
    out_dir/summary.json                                                   val accuracy per seed, mean, std

On several processes (`nproc`, pipeline/train/distributed.py) every rank trains and rank 0 alone
writes: checkpoints, dvclive logs, the outputs and the summary.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.io import atomic_write_json, replace_dir
from pipeline.students.inputs import input_map
from pipeline.students.registry import count_parameters
from pipeline.students.trained import save_trained_student
from pipeline.train.budget import apply_budget, held_back_labels
from pipeline.train.data import join_training_data
from pipeline.train.device import resolve_device
from pipeline.train.distributed import SINGLE, DistributedError, Ranks, process_group
from pipeline.train.log import EpochLogger
from pipeline.train.loop import run_seed
from pipeline.train.params import StudentParams
from pipeline.train.seed_pool import map_seeds, seed_processes

log = logging.getLogger(__name__)


def _processes(params: StudentParams, ranks: Ranks) -> StudentParams:
    """`params` for the processes really running: a library caller (the sweep, the label curve)
    trains in one process, whatever `nproc` says (the same result up to float rounding)."""
    if params.nproc == ranks.world:
        return params
    if ranks.world == 1:
        log.warning(
            "nproc %d: this caller trains in one process; `distillery train` launches several",
            params.nproc,
        )
        return params.model_copy(update={"nproc": 1})
    raise DistributedError(f"launched on {ranks.world} processes but the student's nproc is {params.nproc}")


def config_hash(params: StudentParams, prepared_fingerprint: str, reader) -> str:
    """sha256 of everything a seed's checkpoint depends on: the params (less `seeds`, which only
    picks which seeds run, the `cache` path, which the cache's own shape and fingerprint replace,
    and the threads, seed processes and checkpoint intervals, which change no result), the dataset
    fingerprint, the cache's shape and identity. A checkpoint with another hash is never resumed."""
    schema = reader.schema
    unused = {
        "seeds",
        "cache",
        "torch_threads",
        "seed_processes",
        "checkpoint_every_steps",
        "checkpoint_every_seconds",
    }
    unused.add("loader_workers")  # where the named inputs are read changes no result
    if params.inputs is None:  # the default single input: the hash of earlier checkpoints stays valid
        unused.add("inputs")
    identity = {
        "params": params.model_dump(mode="json", exclude=unused),
        "dataset": prepared_fingerprint,
        "cache": [
            len(reader),
            schema.num_classes,
            schema.logits_dtype,
            {k: list(v) for k, v in schema.feature_shapes.items()},
            getattr(getattr(reader, "metadata", None), "build_fingerprint", None),
        ],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _model_dir(root: Path, member: str, seed: int) -> Path:
    return root / member / f"seed_{seed}" if member else root / f"seed_{seed}"


def _summarise(
    name: str, params: StudentParams, per_seed: dict[int, dict[str, dict]], sizes: dict[str, int]
) -> dict:
    models = {}
    for member in params.members():
        model_name = f"{name}/{member}" if member else name
        accuracy = {str(seed): per_seed[seed][member].get("val/acc") for seed in per_seed}
        values = [v for v in accuracy.values() if v is not None]
        models[model_name] = {
            "num_parameters": sizes[member],
            "val_acc": accuracy,
            "val_acc_mean": statistics.fmean(values) if values else None,
            "val_acc_std": statistics.pstdev(values) if len(values) > 1 else (0.0 if values else None),
        }
    return {
        "student": name,
        "cohort": params.cohort is not None,
        "seeds": sorted(per_seed),
        "epochs": params.epochs,
        "models": models,
    }


def _move_into_place(staging: Path, out_dir: Path) -> None:
    try:
        replace_dir(staging, out_dir)
    except OSError as error:  # scratch on another filesystem: copy next to the target first
        if error.errno != errno.EXDEV:
            raise
        sibling = out_dir.with_name(f".tmp-{out_dir.name}")
        shutil.rmtree(sibling, ignore_errors=True)
        shutil.copytree(staging, sibling)
        replace_dir(sibling, out_dir)


def _write_seed_output(
    target: Path, name: str, params: StudentParams, member, seed: int, data, state, live_dir: Path
) -> None:
    """model.safetensors + student.json + the dvclive directory of one trained member and seed;
    a student of named inputs also records them (`inputs`: argument -> {field, dtype, shape})."""
    config = {
        "student": name,
        "member": member.name or None,
        "seed": seed,
        "arch": params.members()[member.name][0].model_dump(mode="json"),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "epochs": state.epoch,
        "val_acc": state.history[-1][member.name].get("val/acc"),
    }
    if data.fields is not None:
        config["inputs"] = data.fields.describe(data.position[data.train_rows[:2]])
    save_trained_student(target, member.model.cpu(), config)
    shutil.copytree(live_dir, target / "live")


def train_from_reader(
    name: str,
    params: StudentParams,
    reader,
    prepared,
    out_dir: str | Path,
    scratch_dir: str | Path,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    threads: int | None = None,
    on_step: Callable[[int], None] | None = None,
    label_pool: tuple | None = None,
    ranks: Ranks = SINGLE,
    source=None,
    fork_seeds: bool = False,
) -> dict[str, Any]:
    """`train_student` on an open cache reader (any CacheReader, e.g. a MemoryCache in tests) and a
    loaded PreparedData (or, for a student of named inputs, any index with sample_id, split, label,
    num_classes and fingerprint; `source` holds its fields, default `prepared`). Returns the
    summary (as written to summary.json) plus `out_dir` and `seconds`. label_pool: (sample_id,
    label) known outside the cache, read by a `label_budget` with `held_back: true`
    (pipeline/train/budget.py). ranks: this process among those launched by `distillery train
    --nproc` (every rank trains, rank 0 writes). fork_seeds: train the seeds side by side in forked
    processes as `params.seed_processes` and the cores allow (pipeline/train/seed_pool.py; the train
    stage; never inside a Dask worker, whose processes are daemonic and may not fork)."""
    started = time.perf_counter()
    threads = threads or params.torch_threads
    if threads:
        torch.set_num_threads(threads)
    out_dir, scratch_dir = Path(out_dir), Path(scratch_dir)
    budget_report = None
    if params.label_budget is not None:
        budgeted = apply_budget(reader, prepared, params.label_budget, label_pool)
        reader, prepared, budget_report = budgeted.reader, budgeted.prepared, budgeted.report
    data = join_training_data(
        reader, prepared, params.train_rows, params.views, name, input_map(params.inputs), source
    )
    check_token_targets(reader, params)
    params = _processes(params, ranks)
    digest = config_hash(params, prepared.fingerprint, reader)
    device = resolve_device(params.device, name, ranks.local_rank if ranks.world > 1 else None)
    seeds = list(params.seeds if seeds is None else seeds)
    staging = scratch_dir / "output"
    if ranks.writes:
        shutil.rmtree(staging, ignore_errors=True)

    def train_seed(seed: int) -> tuple[dict, dict[str, int]]:
        """Train one seed, write its output into `staging`; (its last epoch's metrics, member sizes)."""
        if threads and processes > 1:  # a forked child: keep to its own core(s)
            torch.set_num_threads(threads)
        seed_scratch = scratch_dir / f"seed_{seed}"
        lives = {m: seed_scratch / "live" / m if m else seed_scratch / "live" for m in params.members()}
        logger = EpochLogger(lives) if ranks.writes else None
        try:
            members, state = run_seed(
                params,
                data,
                seed,
                seed_scratch,
                digest,
                progress and ranks.writes and processes == 1,
                on_epoch=logger,
                on_step=on_step,
                device=device,
                ranks=ranks,
            )
        finally:
            if logger is not None:
                logger.close()
        for member in members:
            if logger is not None:
                target = _model_dir(staging, member.name, seed)
                live = Path(logger.lives[member.name].dir)
                _write_seed_output(target, name, params, member, seed, data, state, live)
        return state.history[-1], {member.name: count_parameters(member.model) for member in members}

    processes = (
        seed_processes(params.seed_processes, len(seeds), threads, device.type, ranks.world)
        if fork_seeds and on_step is None
        else 1
    )
    with process_group(ranks, device):
        results = map_seeds(
            train_seed, seeds, processes, f"{name}: seeds in {processes} processes" if progress else None
        )
    per_seed = {seed: last for seed, (last, _) in results.items()}
    sizes = {member: size for _, seed_sizes in results.values() for member, size in seed_sizes.items()}
    summary = _summarise(name, params, per_seed, sizes)
    if budget_report is not None:
        summary["label_budget"] = budget_report
    if ranks.writes:
        atomic_write_json(staging / "summary.json", summary)
        _move_into_place(staging, out_dir)
        shutil.rmtree(scratch_dir, ignore_errors=True)
    return {**summary, "out_dir": str(out_dir), "seconds": round(time.perf_counter() - started, 3)}


UNCHECKED = "unchecked"
"""`cache_views` of a caller that does not know the `cache:` section (the cache is not checked)."""


def check_token_targets(reader, params: StudentParams) -> None:
    """Before the first step: every token_kd term that names its teacher form (`teacher_source`
    dense, sampled or top_k) finds that form in a cache of per-token logits, or one line
    (TokenFormMismatchError) names `cache.token_logits.form` and the `dvc repro cache` to run."""
    schema = reader.schema
    if getattr(schema, "logits", "row") != "token":
        return
    from pipeline.cache.token_store import check_token_form

    spec = schema.token_form
    vocab = int(spec["vocab_size"]) if spec is not None else int(schema.num_classes)
    for _arch, loss in params.members().values():
        for term in loss.values():
            source = getattr(term, "teacher_source", "auto")
            if getattr(term, "kind", None) == "token_kd" and source != "auto":
                check_token_form(getattr(reader, "path", "(in memory)"), spec, vocab, source)


def open_student_cache(path: str | Path, dataset_fingerprint: str, cache_views=UNCHECKED):
    """The cache reader at `path`, checked against the prepared dataset's fingerprint and, unless
    UNCHECKED, against `cache_views` (the `cache.views` params, or None): StaleCacheError when the
    cache was built with other views (pipeline.cache.open.check_views)."""
    from pipeline.cache.open import check_views, open_cache

    reader = open_cache(path, dataset_fingerprint=dataset_fingerprint)
    if cache_views is not UNCHECKED:
        check_views(path, reader.metadata, cache_views)
    return reader


def train_student(
    name: str,
    params: StudentParams,
    prepared_dir: str | Path,
    out_dir: str | Path,
    scratch_dir: str | Path,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    threads: int | None = None,
    ranks: Ranks = SINGLE,
    cache_views=UNCHECKED,
) -> dict[str, Any]:
    """Train student `name` (all of `seeds`, default `params.seeds`) from the cache at `params.cache`
    joined to the prepared data in `prepared_dir`; write `out_dir` (see the module docstring).

    A small JSON-able summary comes back: per model the val accuracy per seed, mean, std and size.
    `threads` sets torch's intra-op threads (Dask workers pass 1); default `params.torch_threads`. Safe
    to re-run after a kill: the seeds resume from their last checkpoint in `scratch_dir`. ranks:
    this process among those `distillery train --nproc` launched (default: the only one).
    `cache_views`: the `cache.views` the cache must have been built with (the train stage passes
    params.yaml's; a changed spec is a stale cache), or UNCHECKED.
    """
    from pipeline.data.prepared import open_for_training

    # small single-input data whole (digits); large data, its views and named fields read per batch
    prepared, source = open_for_training(prepared_dir, whole_if_small=params.inputs is None)
    reader = open_student_cache(params.cache, prepared.fingerprint, cache_views)
    held_back = params.label_budget is not None and params.label_budget.held_back
    return train_from_reader(
        name,
        params,
        reader,
        prepared,
        out_dir,
        scratch_dir,
        seeds,
        progress,
        threads,
        label_pool=held_back_labels(prepared_dir) if held_back else None,
        ranks=ranks,
        source=source,
        fork_seeds=True,
    )
