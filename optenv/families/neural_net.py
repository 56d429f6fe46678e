"""A tiny ReLU network classifier on four random Gaussian clusters (Li & Malik 2016)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from optenv.families.base import ObjectiveFamily, ProblemData
from optenv.families.groups import CoordinateGroup, groups_from_sizes
from optenv.rng import KeyedRNG
from optenv.validation import check_int, check_number


@dataclass(repr=False)
class NeuralNet(ObjectiveFamily):
    """Softmax cross-entropy of an ``inputs``-``hidden``-2 ReLU net plus (λ/2)(‖W‖² + ‖U‖²).

    x packs, in order: W [hidden, inputs], b [hidden], U [2, hidden], c [2] (row-major); the
    default 2-2-2 net has d = 12. Each instance: ``n_clusters`` Gaussian clusters of
    ``points_per_cluster`` points, random means N(0, I) and covariances LLᵀ (L's entries
    N(0, 1/inputs)); each cluster gets a random 0/1 label, never all the same (if the draw makes
    them equal, the last cluster's label is flipped). Non-convex.

    Data: ``X`` [n, inputs], ``y`` [n] (0./1.).
    """

    inputs: int = 2
    hidden: int = 2
    n_clusters: int = 4
    points_per_cluster: int = 25
    lam: float = 5e-4

    name = "NeuralNet"
    default_max_step = 1.0

    def __post_init__(self) -> None:
        check_int("inputs", self.inputs, 1)
        check_int("hidden", self.hidden, 1)
        check_int("n_clusters", self.n_clusters, 2)
        check_int("points_per_cluster", self.points_per_cluster, 1)
        check_number("lam", self.lam, strict=False)

    @property
    def d(self) -> int:
        h, i = self.hidden, self.inputs
        return h * i + h + 2 * h + 2

    def coordinate_groups(self) -> tuple[CoordinateGroup, ...]:
        """``W`` and ``U`` (the two weight matrices), ``b`` and ``c`` (their biases), in x's
        order."""
        h, i = self.hidden, self.inputs
        return groups_from_sizes([("W", h * i, "weight"), ("b", h, "bias"),
                                  ("U", 2 * h, "weight"), ("c", 2, "bias")])

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(W [B,h,i], b [B,h], U [B,2,h], c [B,2]) as views of x [B, d], in the order of
        :meth:`coordinate_groups` (plain offsets here: this runs at every evaluation)."""
        h, i, bsz = self.hidden, self.inputs, x.shape[0]
        w_end, b_end, u_end = h * i, h * i + h, h * i + 3 * h
        return (
            x[:, :w_end].reshape(bsz, h, i),
            x[:, w_end:b_end],
            x[:, b_end:u_end].reshape(bsz, 2, h),
            x[:, u_end:],
        )

    def problem_shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.n_clusters * self.points_per_cluster
        return {"X": (n, self.inputs), "y": (n,)}

    def generate(self, rng: KeyedRNG) -> ProblemData:
        k, m, i = self.n_clusters, self.points_per_cluster, self.inputs
        means = rng.normal(k, i)
        chol = rng.normal(k, i, i) / math.sqrt(i)
        z = rng.normal(k, m, i)
        labels = rng.bernoulli(0.5, k).to(means.dtype)
        same = (labels == labels[:, :1]).all(-1)
        labels[:, -1] = torch.where(same, 1.0 - labels[:, -1], labels[:, -1])
        x = means.unsqueeze(2) + torch.einsum("bkij,bkmj->bkmi", chol, z)
        y = labels.unsqueeze(-1).expand(-1, k, m)
        return {"X": x.reshape(rng.batch_size, k * m, i), "y": y.reshape(-1, k * m).clone()}

    @property
    def input_dim(self) -> int:
        """Dimension of the data points (rendering draws the data when it is 2)."""
        return self.inputs

    def decision_values(self, x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """logit₁ − logit₀ of the net at points [B, m, inputs] (class 1 when > 0); [B, m]."""
        W, b, U, c = self.unpack(x)
        hid = torch.relu(torch.einsum("bmi,bhi->bmh", points, W) + b.unsqueeze(1))
        logits = torch.einsum("bmh,bkh->bmk", hid, U) + c.unsqueeze(1)
        return logits[..., 1] - logits[..., 0]

    def _forward(
        self, x: torch.Tensor, data: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        W, b, U, c = self.unpack(x)
        pre = torch.einsum("bni,bhi->bnh", data["X"], W) + b.unsqueeze(1)
        hid = torch.relu(pre)
        logits = torch.einsum("bnh,bkh->bnk", hid, U) + c.unsqueeze(1)
        y = data["y"]
        onehot = torch.stack([1.0 - y, y], dim=-1)
        logp = torch.log_softmax(logits, dim=-1)
        reg = 0.5 * self.lam * ((W * W).sum((1, 2)) + (U * U).sum((1, 2)))
        f = -(onehot * logp).sum(-1).mean(-1) + reg
        return f, W, U, pre, hid, logp, onehot

    def objective(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._forward(x, data)[0]

    def value_and_grad(
        self, x: torch.Tensor, data: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        f, W, U, pre, hid, logp, onehot = self._forward(x, data)
        n = pre.shape[1]
        dlogits = (torch.exp(logp) - onehot) / n  # [B, n, 2]
        gU = torch.einsum("bnk,bnh->bkh", dlogits, hid) + self.lam * U
        gc = dlogits.sum(1)
        dpre = torch.einsum("bnk,bkh->bnh", dlogits, U) * (pre > 0).to(pre.dtype)
        gW = torch.einsum("bnh,bni->bhi", dpre, data["X"]) + self.lam * W
        gb = dpre.sum(1)
        bsz = x.shape[0]
        g = torch.cat([gW.reshape(bsz, -1), gb, gU.reshape(bsz, -1), gc], dim=-1)
        return f, g
