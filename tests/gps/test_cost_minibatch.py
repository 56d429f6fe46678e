"""GPS's cost expansion on a minibatch family: the cost of step t is expanded on the minibatch
the samples saw there (minibatch t + 1, where the core evaluates iterate t + 1), not on one
minibatch for every step."""

from __future__ import annotations

import dataclasses

import torch

from gps.controller import LQRStateMap
from gps.coordinatewise import CoordinatewiseGPSAgent
from gps.model import data_by_iteration, expand_cost
from gps.train import make_config
from optenv.core import StateLayout
from optenv.families import LogisticRegression, MLPClassifier


def _mlp() -> MLPClassifier:
    return MLPClassifier(hidden=2, inputs=6, batch_size=8)


def test_row_t_holds_the_data_of_iterate_t_plus_1_and_the_input_is_kept() -> None:
    fam = _mlp()
    data, _ = fam.sample(torch.arange(3), split="train", dtype=torch.float64)
    data["iteration"].fill_(7.0)  # where a rollout left it
    before = {k: v.clone() for k, v in data.items()}
    rows = data_by_iteration(fam, data, 4)
    assert rows["iteration"].reshape(3, 4).tolist() == [[1.0, 2.0, 3.0, 4.0]] * 3
    assert torch.equal(rows["key"], data["key"].repeat_interleave(4, 0))
    for k in data:
        assert torch.equal(data[k], before[k]), k


def test_an_exact_family_gets_its_data_repeated() -> None:
    fam = LogisticRegression()
    data, _ = fam.sample(torch.arange(2), split="train", dtype=torch.float64)
    rows = data_by_iteration(fam, data, 3)
    for k, v in data.items():
        assert torch.equal(rows[k], v.repeat_interleave(3, 0)), k


def test_flat_expansion_at_step_t_is_f_on_minibatch_t_plus_1() -> None:
    fam = _mlp()
    M, N, T, H = 2, 2, 3, 2
    data, _ = fam.sample(torch.arange(M), split="train", dtype=torch.float64)
    smap = LQRStateMap(StateLayout(fam.d, H), H)
    gen = torch.Generator().manual_seed(0)
    Z = 0.1 * torch.randn(M, N, T, smap.dim, generator=gen, dtype=torch.float64)
    U = 0.01 * torch.randn(M, N, T, fam.d, generator=gen, dtype=torch.float64)
    cost = expand_cost(fam, data, Z, U, smap)
    y = (Z[..., smap.layout.state_slices["CUR_LOC"]] + U).mean(1)  # [M,T,d]
    for t in range(T):
        at_t = {k: v.clone() for k, v in data.items()}
        at_t["iteration"].fill_(t + 1.0)
        f, _ = fam.value_and_grad(y[:, t], at_t)
        # the quadratic's value at the expansion point (z = mean z, u = mean u) is f there
        zu = torch.cat([Z[:, :, t].mean(1), U[:, :, t].mean(1)], -1)
        value = (0.5 * torch.einsum("mi,mij,mj->m", zu, cost.Cm[:, t], zu)
                 + (cost.cv[:, t] * zu).sum(-1) + cost.c0[:, t])
        torch.testing.assert_close(value, f, rtol=1e-9, atol=1e-9)


def test_coordinatewise_expansion_evaluates_each_step_on_its_own_minibatch() -> None:
    fam = _mlp()
    cfg = dataclasses.replace(make_config(quick=True), policy="coordinatewise", conditions=2,
                              samples=2, horizon=3, lqr_history=2, cost_hessian="exact",
                              hessian_exact_max=1, hessian_probes=1)
    agent = CoordinatewiseGPSAgent(fam, cfg, history=3)
    seen: list[torch.Tensor] = []
    original = fam.value_and_grad

    def recording(x: torch.Tensor, data: dict[str, torch.Tensor]):
        seen.append(data["iteration"].clone())
        return original(x, data)

    object.__setattr__(fam, "value_and_grad", recording)
    P, N, T = agent.n_problems, 2, 3
    Z = torch.zeros(P, N, T, agent.smap.dim, dtype=torch.float64)
    U = torch.zeros(P, N, T, 1, dtype=torch.float64)
    agent.coordinate_cost(Z, U, hessian="exact")
    assert seen[0].reshape(2, T).tolist() == [[1.0, 2.0, 3.0]] * 2
