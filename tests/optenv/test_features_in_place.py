"""A feature set's rows written into ``out`` are its rows, bit for bit (FeatureSet.rows(out=))."""

from __future__ import annotations

import pytest
import torch

from optenv.core import StateLayout
from optenv.features import FEATURE_SETS


@pytest.mark.parametrize("name", list(FEATURE_SETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_into_a_buffer_equal_the_allocated_rows(name: str, dtype: torch.dtype) -> None:
    fs = FEATURE_SETS[name]
    layout = StateLayout(7, fs.default_history)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(4, layout.obs_dim, generator=g, dtype=torch.float64).to(dtype)
    obs[0, 5], obs[1, -1], obs[2, -3] = float("nan"), float("inf"), 0.0  # non-finite, zero
    for t in (0, 1, 2, 9, torch.tensor([0, 1, 2, 150])):
        want = fs.rows(layout, obs, t)
        columns = torch.full((fs.width(layout.history), 4, 7), 3.0, dtype=dtype)
        out = columns.permute(1, 2, 0)  # column by column, as the optimiser keeps it
        got = fs.rows(layout, obs, t, out=out)
        assert got.data_ptr() == out.data_ptr()
        # bit for bit (the 2016 rows are a rearrangement: a NaN of the state stays a NaN)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=str(t))
