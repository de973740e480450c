"""Student architectures made by name, each returning logits plus named feature taps.

`build_student(arch_params, input_shape, num_classes)` makes one; `load_trained_student(seed_dir)`
loads a trained one (safetensors + student.json). docs/training.md says how to add an architecture.
"""

from pipeline.students.output import StudentOutput
from pipeline.students.registry import ARCHITECTURES, ArchParams, build_student, count_parameters, parse_arch
from pipeline.students.trained import (
    TrainedStudentError,
    list_trained,
    load_trained_student,
    save_trained_student,
)

__all__ = [
    "ARCHITECTURES",
    "ArchParams",
    "StudentOutput",
    "TrainedStudentError",
    "build_student",
    "count_parameters",
    "list_trained",
    "load_trained_student",
    "parse_arch",
    "save_trained_student",
]
