"""Small datasets written in each of the formats the adapters read."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import validate_section
from pipeline.data.params import PrepareParams


def make_params(**section) -> PrepareParams:
    """A validated `prepare:` section (goes through the same checks as params.yaml)."""
    return validate_section(PrepareParams, section, "prepare")


@pytest.fixture
def arrays():
    """60 rows of (2, 3) inputs, 3 classes (20 each), ids 100.., a few rows without a label."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2, 3)).astype(np.float32)
    y = np.repeat(np.arange(3), 20).astype(np.int64)
    ids = np.arange(100, 160, dtype=np.int64)
    return ids, x, y
