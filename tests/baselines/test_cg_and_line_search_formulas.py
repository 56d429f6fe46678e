"""CG's search directions and the Wolfe search's acceptance test against their formulas.

CG's directions against the formula it documents: Polak–Ribière+ (Nocedal & Wright
§5.2), d₀ = −g₀ and d₁ = −g₁ + β d₀ with β = max(0, g₁ᵀ(g₁ − g₀) / ‖g₀‖²).

The end-to-end CG test (it solves quadratics) cannot tell β formulas apart: any conjugate-
gradient variant converges on a quadratic. Here the returned step αd is compared in direction
with the formula's d, at gradients chosen so that Polak–Ribière, Fletcher–Reeves
(β = ‖g₁‖² / ‖g₀‖²) and the unclamped Polak–Ribière give visibly different directions.
"""

from __future__ import annotations

import torch

from baselines.optimizers import CG

A = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))


def _oracle(x: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x) = ½ xᵀAx and its gradient, per row."""
    g = x @ A
    return 0.5 * (x * g).sum(-1), g


def _at(x: list[float]) -> tuple[torch.Tensor, ...]:
    xt = torch.tensor([x], dtype=torch.float64)
    f, g = _oracle(xt, torch.ones(1, dtype=torch.bool))
    return xt, f, g


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def _two_steps(x0: list[float], x1: list[float]) -> tuple[torch.Tensor, ...]:
    """CG's steps at x0 (a fresh start) and then at x1, with the gradients there."""
    cg = CG()
    x, f, g0 = _at(x0)
    step0 = cg.propose(x, f, g0, _oracle)
    x, f, g1 = _at(x1)
    step1 = cg.propose(x, f, g1, _oracle)
    return step0[0], step1[0], g0[0], g1[0]


def test_first_direction_is_steepest_descent_and_the_second_is_polak_ribiere():
    # g₀ = (1, 4, 9), g₁ = (−5, 2, −1): β_PR = 36/98, β_FR = 30/98
    x1 = torch.linalg.solve(A, torch.tensor([-5.0, 2.0, -1.0], dtype=torch.float64)).tolist()
    step0, step1, g0, g1 = _two_steps([1.0, 1.0, 1.0], x1)
    assert _cosine(step0, -g0) > 1 - 1e-12
    d0 = -g0
    beta = float(g1 @ (g1 - g0) / (g0 @ g0))
    beta_fr = float(g1 @ g1 / (g0 @ g0))
    assert beta > 0.05 and abs(beta - beta_fr) > 0.05, "the case separates PR from FR"
    d1 = -g1 + beta * d0
    assert _cosine(step1, d1) > 1 - 1e-12
    assert _cosine(step1, -g1 + beta_fr * d0) < 1 - 1e-3


def test_a_negative_polak_ribiere_beta_is_clamped_to_zero_so_the_step_is_steepest_descent():
    # g₁ ≈ g₀ / 2 plus a small orthogonal part: g₁ᵀ(g₁ − g₀) < 0
    x0 = [1.0, 1.0, 1.0]
    g0 = (torch.tensor(x0, dtype=torch.float64) @ A)
    v = torch.tensor([1.0, -0.25, 0.0], dtype=torch.float64) * 0.5  # v ⟂ g0 = (1, 4, 9)
    g1_want = 0.5 * g0 + v
    x1 = torch.linalg.solve(A, g1_want).tolist()
    _, step1, g0, g1 = _two_steps(x0, x1)
    beta_pr = float(g1 @ (g1 - g0) / (g0 @ g0))
    assert beta_pr < -0.1, "the case makes the unclamped β negative"
    assert _cosine(step1, -g1) > 1 - 1e-12
    assert _cosine(step1, -g1 + beta_pr * -g0) < 1 - 1e-3


def test_the_wolfe_search_returns_only_steps_with_sufficient_decrease():
    """φ(α) = (α − 1)² along p = 1 from x = 0: a first trial α = 1.9 passes the curvature test
    at c2 = 1 (|φ'(1.9)| = 1.8 <= 2) and decreases φ, but by less than Armijo asks. The accepted α
    must satisfy Armijo's φ(α) <= φ(0) + c1·α·φ'(0), whatever c1 and the first trial."""
    from baselines.optimizers import wolfe_line_search

    def oracle(x: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ((x - 1) ** 2).sum(-1), 2 * (x - 1)

    x = torch.zeros(1, 1, dtype=torch.float64)
    f0, g0 = oracle(x, torch.ones(1, dtype=torch.bool))
    p = torch.ones(1, 1, dtype=torch.float64)
    for c1 in (0.1, 0.3, 0.5):
        for a0 in (0.5, 1.9, 2.0, 3.0):
            alpha, f, _, ok = wolfe_line_search(oracle, x, f0, g0, p,
                                                torch.tensor([a0], dtype=torch.float64),
                                                torch.ones(1, dtype=torch.bool), c1=c1, c2=1.0)
            assert bool(ok[0]) and float(alpha[0]) > 0
            assert float(f[0]) <= float(f0[0]) + c1 * float(alpha[0]) * -2.0, (c1, a0)
