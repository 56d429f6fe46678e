"""L2-regularised logistic regression on two random Gaussian classes (Li & Malik 2016)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from optenv.families.base import ObjectiveFamily, ProblemData
from optenv.families.batch_invariant import sigmoid, softplus
from optenv.families.groups import CoordinateGroup, groups_from_sizes
from optenv.rng import KeyedRNG
from optenv.validation import check_int, check_number


@dataclass(repr=False)
class LogisticRegression(ObjectiveFamily):
    """Mean cross-entropy of a linear classifier plus (λ/2)‖w‖²; x = [w (``dim``), b], d = dim + 1.

    Each instance: ``n_points`` points, the first half drawn from N(μ₀, Σ₀) with label 0, the
    rest from N(μ₁, Σ₁) with label 1; μ ~ N(0, I), Σ = LLᵀ with L's entries N(0, 1/dim), all
    random per instance (Li & Malik: "two multivariate Gaussians with random means and
    covariances"). Convex; the regulariser keeps the optimum finite when the classes separate.

    Data: ``X`` [n_points, dim], ``y`` [n_points] (0./1.).
    """

    dim: int = 3
    n_points: int = 100
    lam: float = 5e-4

    name = "LogisticRegression"
    default_max_step = 1.0

    def __post_init__(self) -> None:
        check_int("dim", self.dim, 1)
        check_int("n_points", self.n_points, 2)
        check_number("lam", self.lam, strict=False)

    @property
    def d(self) -> int:
        return self.dim + 1

    def problem_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"X": (self.n_points, self.dim), "y": (self.n_points,)}

    def draw_numel(self) -> int:
        # the draw gathers each point's class Cholesky factor: n_points dim x dim matrices
        return super().draw_numel() + self.n_points * self.dim * self.dim

    def generate(self, rng: KeyedRNG) -> ProblemData:
        n0 = self.n_points // 2
        means = rng.normal(2, self.dim)
        chol = rng.normal(2, self.dim, self.dim) / math.sqrt(self.dim)
        z = rng.normal(self.n_points, self.dim)
        cls = torch.zeros(self.n_points, dtype=torch.long, device=z.device)
        cls[n0:] = 1
        x = means[:, cls] + torch.einsum("bnij,bnj->bni", chol[:, cls], z)
        y = cls.to(z.dtype).expand(rng.batch_size, -1).clone()
        return {"X": x, "y": y}

    def split_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w [B, dim], b [B]) from x [B, d]."""
        return x[:, : self.dim], x[:, self.dim]

    def objective(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w, b = self.split_params(x)
        z = torch.einsum("bnj,bj->bn", data["X"], w) + b.unsqueeze(-1)
        ce = (softplus(z) - data["y"] * z).mean(-1)
        return ce + 0.5 * self.lam * (w * w).sum(-1)

    def value_and_grad(
        self, x: torch.Tensor, data: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = self.split_params(x)
        X, y = data["X"], data["y"]
        z = torch.einsum("bnj,bj->bn", X, w) + b.unsqueeze(-1)
        f = (softplus(z) - y * z).mean(-1) + 0.5 * self.lam * (w * w).sum(-1)
        r = (sigmoid(z) - y) / z.shape[-1]
        gw = torch.einsum("bnj,bn->bj", X, r) + self.lam * w
        return f, torch.cat([gw, r.sum(-1, keepdim=True)], dim=-1)

    def coordinate_groups(self) -> tuple[CoordinateGroup, ...]:
        """``w`` (the weights, kind weight) and ``b`` (the bias)."""
        return groups_from_sizes([("w", self.dim, "weight"), ("b", 1, "bias")])

    @property
    def input_dim(self) -> int:
        """Dimension of the data points (rendering draws the data when it is 2)."""
        return self.dim

    def decision_values(self, x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The classifier's logit (class 1 when > 0) at points [B, m, dim]; returns [B, m]."""
        w, b = self.split_params(x)
        return torch.einsum("bmj,bj->bm", points, w) + b.unsqueeze(-1)
