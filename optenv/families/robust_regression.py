"""Robust linear regression with the Geman–McClure loss (Li & Malik 2016): non-convex."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from optenv.families.base import ObjectiveFamily, ProblemData
from optenv.families.groups import CoordinateGroup, groups_from_sizes
from optenv.rng import KeyedRNG
from optenv.validation import check_int, check_number


@dataclass(repr=False)
class RobustRegression(ObjectiveFamily):
    """f(w, b) = (1/n) Σᵢ rᵢ² / (c² + rᵢ²), rᵢ = yᵢ − wᵀxᵢ − b; x = [w (``dim``), b], d = dim + 1.

    Each instance: ``n_clusters`` clusters of ``points_per_cluster`` points; cluster k has a
    random mean μₖ ~ N(0, I) and identity covariance, its own random projection vector
    vₖ ~ N(0, I) and bias βₖ ~ N(0, 1), and yᵢ = vₖᵀxᵢ + βₖ + ``noise_std``·ε, ε ~ N(0, 1). One
    linear model cannot fit all clusters, so the bounded loss makes the landscape non-convex
    with several local minima — the case where hand-designed optimisers stall.

    Data: ``X`` [n, dim], ``y`` [n], n = n_clusters · points_per_cluster.
    """

    dim: int = 3
    n_clusters: int = 4
    points_per_cluster: int = 25
    c: float = 1.0
    noise_std: float = 1.0

    name = "RobustRegression"
    default_max_step = 1.0

    def __post_init__(self) -> None:
        check_int("dim", self.dim, 1)
        check_int("n_clusters", self.n_clusters, 1)
        check_int("points_per_cluster", self.points_per_cluster, 1)
        check_number("c", self.c)
        check_number("noise_std", self.noise_std, strict=False)

    @property
    def d(self) -> int:
        return self.dim + 1

    def problem_shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.n_clusters * self.points_per_cluster
        return {"X": (n, self.dim), "y": (n,)}

    def generate(self, rng: KeyedRNG) -> ProblemData:
        k, m = self.n_clusters, self.points_per_cluster
        means = rng.normal(k, self.dim)
        proj = rng.normal(k, self.dim)
        bias = rng.normal(k)
        z = rng.normal(k, m, self.dim)
        noise = rng.normal(k, m)
        x = means.unsqueeze(2) + z
        y = torch.einsum("bkmj,bkj->bkm", x, proj) + bias.unsqueeze(-1) + self.noise_std * noise
        return {"X": x.reshape(rng.batch_size, k * m, self.dim), "y": y.reshape(-1, k * m)}

    def _residuals(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w, b = x[:, : self.dim], x[:, self.dim]
        return data["y"] - torch.einsum("bnj,bj->bn", data["X"], w) - b.unsqueeze(-1)

    def objective(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        r2 = self._residuals(x, data) ** 2
        return (r2 / (self.c**2 + r2)).mean(-1)

    def value_and_grad(
        self, x: torch.Tensor, data: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r = self._residuals(x, data)
        c2 = self.c**2
        den = c2 + r * r
        f = (r * r / den).mean(-1)
        dr = 2.0 * c2 * r / (den * den) / r.shape[-1]  # ∂f/∂r
        gw = -torch.einsum("bnj,bn->bj", data["X"], dr)
        return f, torch.cat([gw, -dr.sum(-1, keepdim=True)], dim=-1)

    def coordinate_groups(self) -> tuple[CoordinateGroup, ...]:
        """``w`` (the weights, kind weight) and ``b`` (the bias)."""
        return groups_from_sizes([("w", self.dim, "weight"), ("b", 1, "bias")])
