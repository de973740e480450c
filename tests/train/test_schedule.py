"""The learning-rate schedule: warm-up to the peak, then a cosine that never rises and ends at the floor."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from pipeline.train.params import ScheduleParams
from pipeline.train.schedule import learning_rate


@given(
    total=st.integers(2, 400),
    warmup_fraction=st.floats(0, 0.5),
    peak=st.floats(1e-5, 1.0),
    floor=st.floats(0, 1),
)
def test_cosine_warms_up_to_the_peak_then_decays_monotonically_to_the_floor(
    total, warmup_fraction, peak, floor
):
    schedule = ScheduleParams(kind="cosine", min_lr_ratio=floor)
    warmup = int(warmup_fraction * total)
    rates = [learning_rate(step, total, warmup, peak, schedule) for step in range(total)]
    assert all(0 < r <= peak * (1 + 1e-12) for r in rates)
    assert all(r >= floor * peak * (1 - 1e-12) for r in rates[warmup:])
    assert all(a <= b + 1e-15 for a, b in zip(rates[:warmup], rates[1 : warmup + 1]))  # rising warm-up
    after = rates[warmup:]
    assert math.isclose(after[0], peak, rel_tol=1e-9)
    assert all(b <= a + 1e-15 for a, b in zip(after, after[1:]))  # never rises again
    assert math.isclose(
        learning_rate(total, total, warmup, peak, schedule), floor * peak, rel_tol=1e-9, abs_tol=1e-15
    )


def test_constant_schedule_holds_the_peak_after_warm_up():
    schedule = ScheduleParams(kind="constant")
    assert [learning_rate(s, 10, 2, 0.1, schedule) for s in range(4)] == [0.05, 0.1, 0.1, 0.1]
