"""The per-coordinate view of the state: the flat 2016 state, rearranged one row per coordinate."""

from __future__ import annotations

import pytest
import torch

from optenv.core import StateLayout


@pytest.mark.parametrize(("d", "history"), [(1, 1), (4, 3), (12, 25)])
def test_coordinatewise_rows_hold_each_coordinates_own_history(d: int, history: int) -> None:
    lay = StateLayout(d, history)
    state = torch.randn(5, lay.state_dim, dtype=torch.float64)
    rows = lay.coordinatewise(state)
    assert rows.shape == (5, d, lay.coordinate_width) and lay.coordinate_width == 3 * history + 1
    cols, flat = lay.coordinate_slices, lay.state_slices
    grads = state[:, flat["PAST_GRADS"]].reshape(5, history, d)
    steps = state[:, flat["PAST_LOC_DELTAS"]].reshape(5, history, d)
    for j in range(d):
        assert torch.equal(rows[:, j, cols["PAST_OBJ_VAL_DELTAS"]],
                           state[:, flat["PAST_OBJ_VAL_DELTAS"]])
        assert torch.equal(rows[:, j, cols["PAST_GRADS"]], grads[:, :, j])
        assert torch.equal(rows[:, j, cols["CUR_GRAD"]], state[:, flat["CUR_GRAD"]][:, j:j + 1])
        assert torch.equal(rows[:, j, cols["PAST_LOC_DELTAS"]], steps[:, :, j])


def test_coordinatewise_view_of_the_observation_equals_that_of_the_state() -> None:
    lay = StateLayout(3, 4)
    state = torch.randn(2, 7, lay.state_dim)
    assert torch.equal(lay.coordinatewise(lay.observation(state), observation=True),
                       lay.coordinatewise(state))


def test_every_flat_observation_entry_appears_in_the_rows() -> None:
    lay = StateLayout(3, 2)
    obs = torch.arange(lay.obs_dim, dtype=torch.float64)
    rows = lay.coordinatewise(obs, observation=True)
    assert set(rows.flatten().tolist()) == set(obs.tolist())
    slices = lay.coordinate_slices
    assert [slices[k].stop - slices[k].start for k in slices] == [2, 2, 1, 2]
