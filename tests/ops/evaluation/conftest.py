"""Fixtures of the evaluation tests."""

from __future__ import annotations

import pytest
from curve_helpers import tiny_real_pairs

from ops.evaluation.real_split import RealPairs


@pytest.fixture(scope="module")
def real() -> RealPairs:
    return tiny_real_pairs()
