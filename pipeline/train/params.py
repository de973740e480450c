"""The `students:` section of params.yaml: one entry per student, each a `StudentParams`.

```yaml
students:
  kd:
    arch: {kind: mlp, hidden: [64]}                 # pipeline/students
    loss:                                           # pipeline/losses/recipe.py
      ce: {kind: ce, weight: 0.5}
      kd: {kind: hinton, weight: 0.5, temperature: 4.0}
    optimizer: {kind: adamw, lr: 0.01, weight_decay: 0.0001}
    schedule: {kind: cosine, warmup_epochs: 1}
    epochs: 20
    batch_size: 64
    seeds: [0]
    cache: data/cache/store                         # another cache for a teacher chain
    train_rows: all                                 # labelled | all (+ the unlabelled split)
    label_budget: null                              # {per_class: 15, seed: 0, held_back: false}
    views: null                                     # k: train on k cached views per sample (cache.views)
    inputs: null                                    # [input_ids, attention_mask]: named fields (arg -> field)
    loader_workers: 0                               # DataLoader processes reading the prepared files
  cohort4:                                          # M students, one pass over the cache
    cohort:
      members:
        small: {arch: {kind: mlp, hidden: [32]}}
        wide:  {arch: {kind: mlp, hidden: [128]}, loss: {...}}   # a member may override `loss`
    loss: {...}                                     # shared recipe; a `mutual` term reads the peers
    ...
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, RootModel, field_validator, model_validator

from pipeline.config import ParamsError, Seed, StrictModel, validate_section
from pipeline.errors import DistilleryError
from pipeline.losses.recipe import RecipeParams
from pipeline.names import safe_name
from pipeline.students.registry import ArchParams
from pipeline.train.budget import StudentLabelBudget


class UnknownStudentError(DistilleryError, KeyError):
    """`--student NAME` names no entry of the `students:` section."""

    def __str__(self) -> str:  # KeyError quotes its message; print it plainly
        return str(self.args[0])


class OptimizerParams(StrictModel):
    """AdamW (decoupled weight decay) or SGD with momentum; `lr` is the peak learning rate."""

    kind: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-2, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)


class ScheduleParams(StrictModel):
    """Learning rate per step: linear warm-up over `warmup_epochs`, then cosine (or constant) decay
    towards `min_lr_ratio * lr`, reached just after the last step."""

    kind: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(default=0.0, ge=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)


class CohortMember(StrictModel):
    """One member of a cohort: its architecture, and optionally its own recipe."""

    arch: ArchParams
    loss: RecipeParams | None = None


class CohortParams(StrictModel):
    """Students trained together in one pass over the cache, each batch shared by all members.
    Member names become directories (`data/train/<cohort>/<member>/seed_<k>/`)."""

    members: dict[safe_name("cohort member"), CohortMember] = Field(min_length=1)

    @field_validator("members")
    @classmethod
    def _names_are_not_seed_directories(cls, members: dict[str, CohortMember]) -> dict[str, CohortMember]:
        for name in members:
            if name.startswith("seed_"):
                raise ValueError(
                    f"cohort member name {name!r} must not start with 'seed_' (a seed's directory)"
                )
        return members


class StudentParams(StrictModel):
    """One student (or one cohort) and how it is trained. Exactly one of `arch` and `cohort`."""

    arch: ArchParams | None = None
    cohort: CohortParams | None = None
    loss: RecipeParams
    optimizer: OptimizerParams = OptimizerParams()
    schedule: ScheduleParams = ScheduleParams()
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=1)
    eval_batch_size: int = Field(default=512, ge=1)
    seeds: tuple[Seed, ...] = Field(default=(0, 1, 2), min_length=1)
    cache: str = "data/cache/store"
    train_rows: Literal["labelled", "all"] = "all"
    label_budget: StudentLabelBudget | None = None  # labels masked at train time; the cache stays as it is
    views: int | None = Field(default=None, ge=1)  # k cached views per sample (cache.views); None = originals
    # forward argument -> prepared field (a list: the same names); None: one float32 input
    inputs: dict[str, str] | list[str] | None = None
    # DataLoader processes reading inputs from the prepared files (train/loader.py); 0: in the loop
    loader_workers: int = Field(default=0, ge=0)
    checkpoint_every_steps: int | None = Field(default=None, ge=1)
    checkpoint_every_seconds: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    torch_threads: int | None = Field(
        default=1, ge=1
    )  # small students run fastest on one thread; null = torch's default
    # processes training seeds side by side on the CPU (pipeline/train/seed_pool.py); null: as many as
    # the seeds and the cores at torch_threads each allow; 1: one after the other
    seed_processes: int | None = Field(default=None, ge=1)
    # How the step runs (docs/training.md, "GPUs" and "Many processes"); the defaults are the plain
    # float32 step of one process, bit for bit.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast of the students' forward
    accumulate_steps: int = Field(default=1, ge=1)  # micro-batches per optimiser step
    compile: bool = False  # torch.compile the students' forward
    nproc: int = Field(default=1, ge=1)  # processes (PyTorch DDP, launched by torchrun)

    @model_validator(mode="after")
    def _some_term_has_weight(self) -> StudentParams:
        for member, (_, recipe) in self.members().items():
            weights = [getattr(term, "weight", None) for term in (recipe or {}).values()]
            if weights and all(weight == 0 for weight in weights):
                where = f"cohort member {member!r}: " if member else ""
                raise ValueError(
                    f"{where}every loss term has weight 0, so the student would learn nothing; give at "
                    "least one term a non-zero weight"
                )
        return self

    @model_validator(mode="after")
    def _one_of_arch_or_cohort(self) -> StudentParams:
        if (self.arch is None) == (self.cohort is None):
            raise ValueError(
                "give exactly one of `arch` (one student) and `cohort` (members trained together)"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {list(self.seeds)}")
        refusal = split_refusal(self, self.nproc)
        if refusal:
            raise ValueError(refusal)
        return self

    def members(self) -> dict[str, tuple[Any, Any]]:
        """member name -> (arch params, recipe params); a single student is the one member named ''."""
        if self.cohort is None:
            return {"": (self.arch, self.loss)}
        return {
            name: (m.arch, m.loss if m.loss is not None else self.loss)
            for name, m in self.cohort.members.items()
        }


def whole_batch_terms(params: StudentParams) -> list[str]:
    """The recipe terms (`term`, or `member/term` in a cohort) whose loss relates the rows of a batch
    to each other (CRD's in-batch negatives, RKD, Gram, MMD: `whole_batch` on their params)."""
    return [
        f"{member}/{term}" if member else term
        for member, (_, recipe) in params.members().items()
        for term, term_params in (recipe or {}).items()
        if getattr(term_params, "whole_batch", False)
    ]


def split_refusal(params: StudentParams, nproc: int) -> str | None:
    """Why `params` cannot train with each batch split over `nproc` processes and
    `accumulate_steps` micro-batches, or None. Each rank and micro-batch computes the loss on its
    own rows, which is the loss of the whole batch only for terms that average over rows."""
    parts = nproc * params.accumulate_steps
    if parts == 1:
        return None
    split = f"nproc {nproc} x accumulate_steps {params.accumulate_steps}"
    if params.batch_size % parts:
        return (
            f"batch_size {params.batch_size} does not split into {split} = {parts} equal parts; "
            f"use a batch_size that is a multiple of {parts}"
        )
    if nproc > 1 and params.cohort is not None:
        return (
            "a cohort trains its members in one process (they share each batch); train it with "
            "nproc: 1, or train the members as separate students"
        )
    terms = whole_batch_terms(params)
    if terms:
        return (
            f"loss terms {', '.join(terms)} relate the rows of a batch to each other, so {split} "
            f"would change the loss (each part would see {params.batch_size // parts} rows); train "
            "with nproc: 1 and accumulate_steps: 1"
        )
    return None


class StudentsSection(RootModel[dict[safe_name("student"), StudentParams]]):
    """The whole `students:` section: student name -> StudentParams. A name becomes a directory, a
    DVC stage key (`train@<name>`) and a command word, so it is held to `pipeline.names`."""

    model_config = {"frozen": True}


def validate_students(data: Any) -> dict[str, StudentParams]:
    """Validate the raw `students:` mapping, or raise ParamsError naming each bad key path."""
    if data is None:
        raise ParamsError("students: the section is missing or empty; add at least one student")
    return dict(validate_section(StudentsSection, data, "students").root)


def select_student(students: dict[str, StudentParams], name: str) -> StudentParams:
    """The params of student `name`, or UnknownStudentError listing the valid names."""
    if name not in students:
        raise UnknownStudentError(
            f"no student named {name!r} in the `students:` section of params.yaml; "
            f"valid: {', '.join(sorted(students)) or '(none)'}"
        )
    return students[name]
