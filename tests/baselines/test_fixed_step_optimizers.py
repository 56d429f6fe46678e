"""cg-fixed and lbfgs-fixed: Li & Malik's fixed-step CG and L-BFGS baselines, checked against
their formulas on hand-made gradients."""

from __future__ import annotations

import pytest
import torch

from baselines.optimizers import CGFixed, LBFGSFixed, make_optimizer, run_optimizer
from optenv.families import Quadratic
from optenv.lab.methods import parse_methods

F64 = torch.float64


def _grads(seed: int, n: int = 3, b: int = 2, d: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g, dtype=F64) for _ in range(n)]


def test_cg_fixed_steps_along_the_polak_ribiere_plus_directions() -> None:
    g0, g1, g2 = _grads(0)
    g2 = -3.0 * g1 + 0.1 * g2  # makes β's max(0, ·) clip for some row
    opt = CGFixed(lr=0.5)
    x = torch.zeros_like(g0)
    f = torch.zeros(2, dtype=F64)
    steps = [opt.propose(x, f, g) for g in (g0, g1, g2)]
    torch.testing.assert_close(steps[0], -0.5 * g0)
    d, prev_d, prev_g = None, -g0, g0
    for g, step in ((g1, steps[1]), (g2, steps[2])):
        beta = ((g * (g - prev_g)).sum(-1) / (prev_g * prev_g).sum(-1)).clamp_min(0)
        d = -g + beta[:, None] * prev_d
        descent = (g * d).sum(-1) < 0
        d = torch.where(descent[:, None], d, -g)
        torch.testing.assert_close(step, 0.5 * d)
        prev_d, prev_g = d, g


def test_cg_fixed_restarts_every_restart_iterations() -> None:
    g0, noise, g2 = _grads(1, n=3)
    gs = [g0, 2.0 * g0 + 0.1 * noise, g2]  # β > 0 and a descent direction at iteration 2
    opt = CGFixed(lr=1.0, restart=2)
    x, f = torch.zeros_like(gs[0]), torch.zeros(2, dtype=F64)
    steps = [opt.propose(x, f, g) for g in gs]
    assert not torch.allclose(steps[1], -gs[1])  # iteration 2 is conjugate
    torch.testing.assert_close(steps[2], -gs[2])  # the third iteration starts afresh


def test_lbfgs_fixed_direction_is_the_bfgs_update_of_the_scaled_identity() -> None:
    """With one stored pair (s, y), −H g for H = (I − ρsyᵀ) γI (I − ρysᵀ) + ρssᵀ,
    γ = sᵀy / yᵀy, ρ = 1 / sᵀy (Nocedal & Wright eq. 7.19 from H0 = γI)."""
    A = torch.tensor([[3.0, 0.5, 0.0], [0.5, 2.0, 0.2], [0.0, 0.2, 1.0]], dtype=F64)
    x0 = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    opt = LBFGSFixed(lr=0.25, history_size=1)
    f = torch.zeros(1, dtype=F64)
    g0 = x0 @ A
    s = opt.propose(x0, f, g0)
    torch.testing.assert_close(s, -0.25 * g0)  # empty memory: steepest descent
    x1 = x0 + s
    g1 = x1 @ A
    step = opt.propose(x1, f, g1)
    s_, y = s[0], (g1 - g0)[0]
    rho, gamma = 1.0 / (s_ @ y), (s_ @ y) / (y @ y)
    eye = torch.eye(3, dtype=F64)
    H = (eye - rho * torch.outer(s_, y)) @ (gamma * eye) @ (eye - rho * torch.outer(y, s_)) \
        + rho * torch.outer(s_, s_)
    torch.testing.assert_close(step[0], -0.25 * H @ g1[0])


def test_fixed_step_methods_converge_on_a_quadratic_and_diverge_with_too_large_a_step() -> None:
    fam = Quadratic(dim=6, condition_number=10.0)
    data, x0 = fam.sample(list(range(4)), split="test")
    f_star = fam.objective(fam.optimum(data), data)
    for name, good in (("cg-fixed", 1.0), ("lbfgs-fixed", 0.5)):
        run = run_optimizer(make_optimizer(name, lr=good), fam, data, x0, horizon=60)
        gap = torch.as_tensor(run.f) - f_star[:, None]
        assert bool((gap[:, -1] < 1e-4 * gap[:, 0]).all()), name
        wild = run_optimizer(make_optimizer(name, lr=2.0**6), fam, data, x0, horizon=60)
        fw = torch.as_tensor(wild.f)
        assert bool((~torch.isfinite(fw[:, -1]) | (fw[:, -1] > fw[:, 0])).all()), name


def test_fixed_step_methods_are_compare_methods_with_a_tuning_grid() -> None:
    assert parse_methods("cg-fixed,lbfgs-fixed,cg") == [("cg-fixed", None),
                                                        ("lbfgs-fixed", None), ("cg", None)]
    assert not CGFixed.needs_oracle and not LBFGSFixed.needs_oracle
    assert CGFixed.default_grid["lr"] and LBFGSFixed.default_grid["lr"]
    with pytest.raises(ValueError, match=r"^lbfgs-fixed.history_size: got a tensor"):
        LBFGSFixed(history_size=torch.tensor([2.0, 3.0]))
    with pytest.raises(ValueError, match=r"^cg-fixed.restart: got a tensor"):
        CGFixed(restart=torch.tensor([0.0, 2.0]))  # used to fail at the first step instead
    with pytest.raises(ValueError, match=r"^cg-fixed.lr: got 0"):
        CGFixed(lr=0)
