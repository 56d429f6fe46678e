"""Random convex quadratics ½(x − x*)ᵀA(x − x*) with a chosen condition number."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from optenv.families.base import ObjectiveFamily, ProblemData
from optenv.rng import KeyedRNG
from optenv.validation import check_int, check_number


@dataclass(repr=False)
class Quadratic(ObjectiveFamily):
    """f(x) = ½(x − x*)ᵀA(x − x*), A symmetric positive definite, known optimum x* (f* = 0).

    A = Q diag(λ) Qᵀ with Q a Haar-random rotation (QR of a Gaussian matrix, signs fixed so the
    factorisation is unique) and eigenvalues log-uniform in [1/κ, 1], the two extremes always
    present, so every instance has condition number exactly κ = ``condition_number`` and
    λ_max = 1 (GD's stable learning rates are below 2). x* ~ N(0, I).

    Data: ``A`` [d, d], ``x_star`` [d].
    """

    dim: int = 10
    condition_number: float = 10.0

    name = "Quadratic"
    default_max_step = 1.0

    def __post_init__(self) -> None:
        check_int("dim", self.dim, 1)
        check_number("condition_number", self.condition_number, low=1.0, strict=False)

    @property
    def d(self) -> int:
        return self.dim

    def problem_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"A": (self.dim, self.dim), "x_star": (self.dim,)}

    def generate(self, rng: KeyedRNG) -> ProblemData:
        d = self.dim
        g = rng.normal(d, d)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        u = rng.uniform(d)
        if d >= 2:
            u[:, 0] = 0.0
            u[:, 1] = 1.0
        else:
            u[:, 0] = 1.0
        eig = torch.exp(-math.log(self.condition_number) * u)  # in [1/κ, 1]
        a = (q * eig.unsqueeze(-2)) @ q.transpose(-1, -2)
        a = 0.5 * (a + a.transpose(-1, -2))
        return {"A": a, "x_star": rng.normal(d)}

    def objective(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.value_and_grad(x, data)[0]

    def value_and_grad(
        self, x: torch.Tensor, data: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r = x - data["x_star"]
        g = torch.einsum("bij,bj->bi", data["A"], r)
        return 0.5 * (r * g).sum(-1), g

    def hessian(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return data["A"].expand(x.shape[0], -1, -1).clone()

    def optimum(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return data["x_star"]
