"""Transform specs: validation with key paths, one record slot per augmentation, fingerprints."""

from __future__ import annotations

import pytest

from pipeline.config import ParamsError
from pipeline.transforms import (
    TransformError,
    ViewsParams,
    check_view_count,
    parse_spec,
    spec_fingerprint,
    without_augmentations,
)

SPEC = [
    {"kind": "scale", "factor": 0.0625},
    {"kind": "shift", "pixels": 1},
    {"kind": "rotate", "degrees": 15},
    {"kind": "mixup", "alpha": 0.2},
]


def test_a_spec_validates_to_steps_in_order_with_shorthands_expanded():
    steps = parse_spec(SPEC + [{"kind": "crop", "size": 6, "padding": 1}])
    assert [step.kind for step in steps] == ["scale", "shift", "rotate", "mixup", "crop"]
    assert steps[2].degrees == (-15.0, 15.0) and steps[4].size == (6, 6)
    assert parse_spec(steps) == steps


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"kind": "rotat"}], "transforms.0: kind 'rotat' is not known; valid: cast, scale"),
        ([{"kind": "rotate", "degrees": "x"}], "transforms.0.degrees: expected a list, got 'x'"),
        ([{"kind": "flip", "prob": 0.5}], "transforms.0.prob: unknown key; valid keys: kind, p"),
        ([{"kind": "normalize", "mean": [0, 0], "std": [1, 1, 1]}], "mean has 2 values but std has 3"),
        ([{"kind": "rotate", "degrees": [5, -5]}], "degrees must be [low, high] with low <= high"),
        ([{"kind": "resized_crop", "size": 4, "scale": [0.5, 2]}], "scale must satisfy 0 < low <= high <= 1"),
        (
            [{"kind": "flip"}, {"kind": "flip"}],
            "transforms: flip appears twice: a view records one flip only",
        ),
        ([{"kind": "mixup"}, {"kind": "cutmix"}], "cutmix after mixup: a view records one mix only"),
        ([{"kind": "crop", "size": 4}, {"kind": "resized_crop", "size": 4}], "records one crop only"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_key_path(raw, message):
    with pytest.raises(ParamsError) as error:
        parse_spec(raw)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_read_time_steps_may_repeat_and_augmentations_are_dropped_for_evaluation():
    spec = [{"kind": "cast", "dtype": "float32"}, {"kind": "flip"}, {"kind": "scale", "factor": 2.0}]
    spec.append({"kind": "scale", "factor": 0.5})
    assert [step.kind for step in without_augmentations(spec)] == ["cast", "scale", "scale"]


def test_the_fingerprint_is_canonical_and_changes_with_any_parameter():
    spelled_out = [
        {"kind": "scale", "factor": 0.0625},
        {"kind": "shift", "pixels": 1, "fill": 0},
        {"kind": "rotate", "degrees": [-15, 15], "interpolation": "bilinear", "fill": 0.0},
        {"alpha": 0.2, "kind": "mixup"},
    ]
    assert spec_fingerprint(SPEC) == spec_fingerprint(spelled_out) == spec_fingerprint(parse_spec(SPEC))
    changed = [dict(step) for step in SPEC]
    changed[2]["degrees"] = 16
    reordered = [SPEC[0], SPEC[2], SPEC[1], SPEC[3]]
    fingerprints = {spec_fingerprint(spec) for spec in (SPEC, changed, reordered, SPEC[:3], [])}
    assert len(fingerprints) == 5


def test_the_fingerprint_of_a_spec_is_pinned():
    # A change here re-keys every cache built with views: bump TRANSFORMS_FORMAT on purpose instead.
    assert spec_fingerprint(SPEC) == "080ed0a6e6b9b421dd7dd014f5044d0c61e88b32e7b8feb7c144b35a4b887cab"


def test_views_params_need_at_least_one_view_and_fingerprint_count_seed_and_spec():
    views = ViewsParams(count=8, seed=3, transforms=SPEC)
    assert views.transforms == parse_spec(SPEC)
    others = [ViewsParams(count=9, seed=3, transforms=SPEC), ViewsParams(count=8, seed=4, transforms=SPEC)]
    others.append(ViewsParams(count=8, seed=3, transforms=SPEC[:2]))
    assert len({views.fingerprint(), *(other.fingerprint() for other in others)}) == 4
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        ViewsParams(count=0, transforms=SPEC)


@pytest.mark.parametrize("count", [0, -1, 2.0, True])
def test_a_view_count_below_one_or_not_an_integer_is_refused(count):
    with pytest.raises(TransformError, match="ask for at least 1 view, or leave views out"):
        check_view_count(count)


def test_asking_for_more_views_than_cached_names_both_numbers():
    assert check_view_count(8, available=8) == 8
    with pytest.raises(TransformError, match="is 9 but the cache holds 8 views per sample"):
        check_view_count(9, available=8, what="students.kd.views")
