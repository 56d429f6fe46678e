"""The named feature sets (optenv.features): Li & Malik 2017's Φ and Ψ against values derived by
hand from hand-made histories, their column layouts and history needs, and argument errors.

The hand-made history: f(j) = j + 1, x(j) = c·j², ∇f(j) = v·j (one coordinate), from which the
averages over the last min(i+1, 3) iterates follow in closed form:
f̄(i) = i (i >= 2), 1.5, 1;  ḡ(i) = (i−1)·v (i >= 2), v/2, 0;
x̄(i) = c·(i² − 2i + 5/3) (i >= 2), c/2, 0, so x̄(a) − x̄(a−5) = c·(10a − 35) for a >= 7.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optenv.core import StateLayout
from optenv.features import (
    FEATURE_SETS,
    PHI_MIN_HISTORY,
    check_features,
    check_observation,
    make_observer,
    resolve_history,
)

C, V = 0.5, -2.0
PHI = FEATURE_SETS["li-malik-2017"]
PSI = FEATURE_SETS["li-malik-2017-psi"]


def _hand_made_observation(t: int, history: int) -> torch.Tensor:
    """The 2016 observation at iteration t of the hand-made run (d = 1), zero-padded before
    iteration 0 as the core pads it: r(j) = 1/j, Δx(j) = c·(2j − 1), g(j) = v·j."""
    h = history
    rel, grads, steps = (torch.zeros(n, dtype=torch.float64) for n in (h, h + 1, h))
    for p in range(h + 1):
        j = t - h + p  # gradients of iterations t−H .. t
        grads[p] = V * j if j >= 0 else 0.0
    for q in range(h):
        j = t - h + 1 + q  # changes and steps of iterations t−H+1 .. t
        if j >= 1:
            rel[q], steps[q] = 1.0 / j, C * (2 * j - 1)
    return torch.cat([rel, grads[:h], grads[h:], steps])


def _phi(t: int, history: int = PHI_MIN_HISTORY) -> dict[str, np.ndarray]:
    lay = StateLayout(1, history)
    rows = PHI.rows(lay, _hand_made_observation(t, history), t)
    assert rows.shape == (1, 76)
    return {k: rows[0, s].numpy() for k, s in PHI.columns(history).items()}


def _padded(values: list[float], n: int) -> np.ndarray:
    """Zeros for the undefined (older) features, then ``values`` (oldest first)."""
    return np.array([0.0] * (n - len(values)) + values)


def test_phi_at_iteration_7_keeps_the_start_averages_and_zeros_what_is_undefined():
    phi = _phi(7)
    # f̄(7) = 7, f̄(2) = (1+2+3)/3 = 2: one defined change, (7 − 2)/2
    np.testing.assert_allclose(phi["AVG_OBJ_CHANGES"], _padded([2.5], 25), rtol=1e-12)
    # ḡ(7) = 6v over |ḡ(2)| + 1 = |v| + 1; ḡ(2) = v over itself (clamp at t mod 5 = 2)
    np.testing.assert_allclose(phi["AVG_GRADS_NORMALISED"],
                               _padded([V / (abs(V) + 1), 6 * V / (abs(V) + 1)], 26),
                               rtol=1e-12)
    # x̄(7) − x̄(2) = c·(110/3 − 5/3) = 35c, compared with itself (the earliest change)
    np.testing.assert_allclose(phi["AVG_ITERATE_CHANGE_RATIOS"],
                               _padded([35 * C / (35 * C + 0.1)], 25), rtol=1e-12)


def test_phi_at_iteration_23_follows_the_stride_and_the_t_mod_5_clamps():
    phi = _phi(23)
    np.testing.assert_allclose(phi["AVG_OBJ_CHANGES"],
                               _padded([5 / 3, 5 / 8, 5 / 13, 5 / 18], 25), rtol=1e-12)
    # ḡ(23−5i) / (|ḡ(max(23−5(i+1), 3))| + 1), i = 4 .. 0; with v = −2:
    np.testing.assert_allclose(phi["AVG_GRADS_NORMALISED"],
                               _padded([-0.8, -2.8, -1.6, -34 / 25, -44 / 35], 26), rtol=1e-12)
    # previous over current change of x̄ (c = 0.5): i = 3 compares x̄(8) − x̄(3) with itself
    np.testing.assert_allclose(phi["AVG_ITERATE_CHANGE_RATIOS"],
                               _padded([22.5 / 22.6, 22.5 / 47.6, 47.5 / 72.6, 72.5 / 97.6], 25),
                               rtol=1e-12)


def test_phi_far_from_the_start_matches_the_closed_forms_at_every_stride():
    t = 200
    phi = _phi(t)
    i = np.arange(24, -1, -1)  # the paper's i, oldest column first
    a = t - 5 * i
    np.testing.assert_allclose(phi["AVG_OBJ_CHANGES"], 5.0 / (a - 5), rtol=1e-10)
    ig = np.arange(25, -1, -1)
    ag = t - 5 * ig
    np.testing.assert_allclose(phi["AVG_GRADS_NORMALISED"],
                               (ag - 1) * V / ((ag - 6) * abs(V) + 1), rtol=1e-10)
    np.testing.assert_allclose(phi["AVG_ITERATE_CHANGE_RATIOS"],
                               C * (10 * (a - 5) - 35) / (C * (10 * a - 35) + 0.1), rtol=1e-10)


def test_phi_does_not_depend_on_the_scale_of_f_or_on_history_beyond_the_minimum():
    # the relative changes r are scale-free; a longer history only adds older entries
    base = _phi(200)
    longer = _phi(200, history=PHI_MIN_HISTORY + 9)
    for k in base:
        np.testing.assert_allclose(longer[k], base[k], rtol=1e-12)


def test_psi_on_a_hand_made_history():
    # d = 2, H = 3: r = [0, 0.5, −0.25]; g(t−1) = [2, −4], g(t) = [3, 1];
    # Δx(t−1) = [0.2, −0.1], Δx(t) = [0.4, 0]
    lay = StateLayout(2, 3)
    past_grads = torch.tensor([[9.0, 9.0], [7.0, 7.0], [2.0, -4.0]])
    steps = torch.tensor([[5.0, 5.0], [0.2, -0.1], [0.4, 0.0]])
    obs = torch.cat([torch.tensor([0.0, 0.5, -0.25]), past_grads.flatten(),
                     torch.tensor([3.0, 1.0]), steps.flatten()]).double()
    cols = PSI.columns(3)
    later = PSI.rows(lay, obs, 5)
    np.testing.assert_allclose(later[:, cols["OBJ_CHANGE"]].flatten(), [-0.25, -0.25])
    np.testing.assert_allclose(later[:, cols["GRAD_NORMALISED"]].flatten(), [1.0, 0.2])
    np.testing.assert_allclose(later[:, cols["ITERATE_CHANGE_RATIO"]].flatten(), [0.4, 1.0])
    first = PSI.rows(lay, obs, 1)  # x(max(0, 1)) − x(0) is the current step itself
    np.testing.assert_allclose(first[:, cols["ITERATE_CHANGE_RATIO"]].flatten(), [0.8, 0.0])
    start = PSI.rows(lay, obs, 0)  # no step yet: g(0) over itself, the rest undefined (0)
    np.testing.assert_allclose(start[:, cols["GRAD_NORMALISED"]].flatten(), [0.75, 0.5])
    assert not start[:, cols["OBJ_CHANGE"]].any()
    assert not start[:, cols["ITERATE_CHANGE_RATIO"]].any()


def test_rows_of_a_batch_use_each_rows_own_iteration():
    lay = StateLayout(1, PHI_MIN_HISTORY)
    obs = torch.stack([_hand_made_observation(7, PHI_MIN_HISTORY),
                       _hand_made_observation(23, PHI_MIN_HISTORY)])
    rows = PHI.rows(lay, obs, torch.tensor([7, 23]))
    for b, t in enumerate((7, 23)):
        single = PHI.rows(lay, obs[b], t)
        torch.testing.assert_close(rows[b], single, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(FEATURE_SETS))
def test_columns_tile_the_row_and_the_width_does_not_depend_on_d(name):
    fs = FEATURE_SETS[name]
    h = fs.min_history + 2
    cols = fs.columns(h)
    start = 0
    for sl in cols.values():
        assert sl.start == start and sl.stop > sl.start
        start = sl.stop
    assert start == fs.width(h)
    for d in (1, 3, 17):
        lay = StateLayout(d, h)
        rows = fs.rows(lay, torch.randn(4, lay.obs_dim, dtype=torch.float64), 30)
        assert rows.shape == (4, d, fs.width(h))
        assert torch.isfinite(rows).all()


def test_widths_and_history_needs_are_the_documented_ones():
    assert FEATURE_SETS["li-malik-2016"].width(25) == 76 and FEATURE_SETS["li-malik-2016"].width(
        4) == 13
    assert PHI.width(132) == PHI.width(500) == 76 and PHI.min_history == PHI_MIN_HISTORY == 132
    assert PSI.width(2) == 3 and PSI.min_history == 2
    assert resolve_history(PHI, None) == 132 and resolve_history(PSI, None) == 25
    assert resolve_history(FEATURE_SETS["li-malik-2016"], None) == 25


@pytest.mark.parametrize(("call", "match"), [
    (lambda: check_observation("grid"),
     r"observation: got 'grid', allowed: 'flat', 'coordinatewise'"),
    (lambda: check_features("adam"),
     r"features: got 'adam', allowed: 'li-malik-2016', 'li-malik-2017', 'li-malik-2017-psi'"),
    (lambda: check_features("li-malik-2017", "flat"),
     r"features: got 'li-malik-2017' with observation='flat', allowed: 'li-malik-2016'"),
    (lambda: resolve_history(PHI, 131), r"history: got 131, allowed: an int >= 132 for "
                                        r"features='li-malik-2017'"),
    (lambda: resolve_history(PSI, 1), r"history: got 1, allowed: an int >= 2"),
    (lambda: resolve_history(PSI, 2.5), r"history: got 2.5, allowed: an int >= 1"),
    (lambda: make_observer("coordinatewise", "li-malik-2017", StateLayout(3, 25)),
     r"history: got 25, allowed: an int >= 132"),
])
def test_bad_modes_feature_sets_and_histories_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
