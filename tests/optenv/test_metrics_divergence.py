"""Late divergence and the first upturn, on hand-made curves whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optenv.metrics import first_upturn, fraction_diverged, fraction_late_divergence

INF, NAN = math.inf, math.nan


def test_late_divergence_counts_runs_that_climb_back_after_their_minimum() -> None:
    f = np.array([
        [10.0, 4.0, 2.0, 2.5, 2.7],   # min 2, drop 8, rises 0.7 <= 0.8: not late
        [10.0, 4.0, 2.0, 2.5, 2.81],  # rises 0.81 > 0.8: late, though below f(x0)
        [10.0, 4.0, 2.0, 3.0, NAN],   # non-finite after its minimum: late
        [10.0, 11.0, 12.0, 13.0, 14.0],  # never below f(x0): no minimum to climb from
        [NAN, 1.0, 1.0, 1.0, 1.0],    # non-finite from the start: not counted
        [10.0, 9.0, 8.0, 7.0, 6.0],   # still descending
    ])
    assert fraction_late_divergence(f) == pytest.approx(2 / 6)
    assert fraction_late_divergence(f, rise=0.05) == pytest.approx(3 / 6)
    assert fraction_late_divergence(f, rise=0.2) == pytest.approx(1 / 6)
    # the plain divergence figure sees only rows 3 (ends above f(x0)), 4 (NaN start: final
    # 1.0 is not <= NaN) and 2 (non-finite end)
    assert fraction_diverged(f) == pytest.approx(3 / 6)


def test_first_upturn_finds_where_the_mean_curve_turns_up() -> None:
    assert first_upturn([5.0, 3.0, 2.0, 1.9, 2.5, 1.0]) == 4
    assert first_upturn([5.0, 3.0, 2.0, 1.9, 1.8]) is None
    # a rise within 1% of the decrease so far (3.1 → 0.031) is a wiggle, not an upturn
    assert first_upturn([5.0, 3.0, 1.9, 1.92, 1.93, 1.8]) is None
    assert first_upturn([5.0, 3.0, 1.9, 1.92, 1.93, 1.8], tolerance=0.0) == 3
    assert first_upturn([5.0, 3.0, INF]) == 2
    assert first_upturn([5.0, 6.0]) == 1
    assert first_upturn([NAN, 1.0]) is None


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match=r"^rise: got -1"):
        fraction_late_divergence(np.ones((2, 3)), rise=-1)
    with pytest.raises(ValueError, match=r"^tolerance: got nan"):
        first_upturn([1.0, 2.0], tolerance=NAN)
    with pytest.raises(ValueError, match=r"^curve: got shape \(2, 2\)"):
        first_upturn(np.ones((2, 2)))
