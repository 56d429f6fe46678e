"""optenv.history: the rings hold the core's states bit for bit, whichever way they are indexed."""

import pytest
import torch

from optenv.core import OptimizationCore
from optenv.families import make_family
from optenv.history import HistoryRing


@pytest.mark.parametrize("device_indexed", [False, True], ids=["host-start", "device-order"])
def test_ring_reads_the_cores_concatenated_state_bit_for_bit_across_wraps_and_restarts(
        device_indexed):
    family = make_family("LogisticRegression", dim=3)
    core = OptimizationCore(family, history=4)
    data, x0 = family.sample(list(range(5)))
    start = core.start(data, x0)
    ring = HistoryRing(core.layout, 5, dtype=torch.float64, device=torch.device("cpu"),
                       device_indexed=device_indexed)
    ring.load(start.state, idx=torch.arange(5))
    state, f = start.state, start.f
    g = torch.Generator().manual_seed(0)
    out = torch.empty_like(state)
    for step in range(11):  # past two wraps of a 4-slot ring
        dx = 0.3 * torch.randn(5, family.d, generator=g, dtype=torch.float64)
        ref = core.step(data, state, f, dx)
        tr = core.transition(data, ring.x, f, dx)
        ring.push(tr)
        assert torch.equal(tr.f, ref.f) and torch.equal(tr.diverged, ref.diverged)
        assert torch.equal(ring.read(out), ref.state)
        obs = torch.empty(5, core.layout.obs_dim, dtype=torch.float32)
        assert torch.equal(ring.read(obs, with_loc=False), ref.state[:, family.d:].float())
        state, f = ref.state, ref.f
        if step in (5, 8):  # restart rows 1 and 3 mid-ring, by index then by mask
            fresh = core.start(data, x0)
            rows = torch.tensor([1, 3])
            if step == 5:
                ring.load(fresh.state[rows], idx=rows)
            else:
                ring.load(fresh.state, mask=torch.tensor([False, True, False, True, False]))
            state = state.clone()
            state[rows] = fresh.state[rows]
            f = torch.where(torch.isin(torch.arange(5), rows), fresh.f, f)
            assert torch.equal(ring.read(out), state)
