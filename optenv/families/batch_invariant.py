"""Sigmoid and softplus whose value at an element does not depend on the batch around it.

Why: the vector env promises that env i computes exactly what the single env computes, bit for
bit. On the CPU, ``torch.sigmoid`` and ``torch.nn.functional.softplus`` run a SIMD body over
the flattened tensor and a scalar loop over its last ``numel mod (2 · lanes)`` elements, and the
two paths round differently (by one unit in the last place, for a few inputs in a hundred).
Which path an element takes depends on its position in the flattened batch, so instance i of a
batch of N and the same instance alone could get different f and ∇f (measured: LogisticRegression
in the vector env differed from the single env for 7 of 60 seeds before this module).

``torch.exp`` and ``torch.log1p`` run through ATen's vectorised math library on every element,
tail included (a partial vector load), and +, −, ×, ÷, ``abs`` and ``where`` are exactly
rounded, so compositions of them give each element the same bits wherever it sits in the
batch. The formulas are the numerically stable ones (no overflow for any finite input, finite
first and second derivatives, which BPTT and the Hessian of GPS's cost need).
"""

from __future__ import annotations

import torch

__all__ = ["sigmoid", "softplus"]

#: Above this, softplus(z) = z to double precision (torch's own softplus threshold).
SOFTPLUS_THRESHOLD = 20.0


def sigmoid(z: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(−z)), as exp(z) / (1 + exp(z)) on the negative side (no overflow).

    exp(−|z|) is written as exp(where(z >= 0, −z, z)), not through ``abs``: autograd gives |z|
    a zero slope at 0, which would make σ'(0) = 0 instead of 1/4."""
    e = torch.exp(torch.where(z >= 0, -z, z))
    return torch.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softplus(z: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(z)); z itself above :data:`SOFTPLUS_THRESHOLD`, as torch's softplus does."""
    return torch.where(z > SOFTPLUS_THRESHOLD, z,
                       torch.log1p(torch.exp(z.clamp_max(SOFTPLUS_THRESHOLD))))
