"""``optenv.metrics.suboptimality``: f − f* per objective and iteration, for log-axis figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optenv.metrics import mean_ci, suboptimality


def test_gap_is_f_minus_f_star_clipped_at_the_floor_where_it_reaches_zero():
    f = np.array([[3.0, 2.0, 1.0, 1.0 - 1e-17],   # reaches f* = 1, then rounds below it
                  [9.0, 5.0, 4.5, 4.5]])          # f* = 4: never reaches it
    gap = suboptimality(f, [1.0, 4.0], floor=1e-10)
    np.testing.assert_allclose(gap, [[2.0, 1.0, 1e-10, 1e-10], [5.0, 1.0, 0.5, 0.5]])


def test_floor_scales_with_the_size_of_f_star():
    gap = suboptimality(np.array([[1e6, 1e6]]), [1e6], floor=1e-12)
    assert gap[0, 0] == pytest.approx(1e-6)  # 1e-12 relative to |f*| = 1e6


def test_non_finite_runs_become_nan_and_means_leave_them_out():
    f = np.array([[2.0, 1.5, 1.0], [2.0, math.inf, math.inf], [3.0, 2.0, math.nan]])
    gap = suboptimality(f, [0.0, 0.0, 1.0])
    assert np.isnan(gap[1, 1:]).all() and np.isnan(gap[2, 2])
    mean, _, _, n = mean_ci(gap)
    np.testing.assert_allclose(mean, [(2 + 2 + 2) / 3, (1.5 + 1.0) / 2, 1.0])
    assert n.tolist() == [3, 2, 1]


def test_an_unknown_f_star_leaves_that_objective_out():
    gap = suboptimality(np.array([[2.0, 1.0], [2.0, 1.0]]), [0.0, math.nan])
    assert np.isfinite(gap[0]).all() and np.isnan(gap[1]).all()


@pytest.mark.parametrize(("f_star", "floor", "match"), [
    ([0.0], 1e-12, "f_star: got 1 values"),
    ([0.0, 0.0], 0.0, "floor: got 0.0"),
    ([0.0, 0.0], math.inf, "floor: got inf"),
])
def test_bad_arguments_are_named(f_star, floor, match):
    with pytest.raises(ValueError, match=match):
        suboptimality(np.ones((2, 3)), f_star, floor)
