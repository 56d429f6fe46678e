"""The local quadratic cost that GPS's LQR minimises, one per condition and time step.

A module of its own, below both of its users: :mod:`gps.model` builds it
(:func:`gps.model.expand_cost`) and evaluates controllers with the LQR's forward pass, and
:func:`gps.lqr.kl_constrained_lqr` takes it as an argument. Declared in either of them, the two
would import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["QuadraticCost"]


@dataclass
class QuadraticCost:
    """cost_t(z, u) ≈ 1/2 [z;u]^T Cm_t [z;u] + cv_t^T [z;u] + c0_t; Cm [M,T,n,n], cv [M,T,n],
    c0 [M,T] (n = dX + dU). The LQR reads Cm and cv; c0 only shifts the expected cost
    (:func:`gps.model.expected_cost`)."""

    Cm: Tensor
    cv: Tensor
    c0: Tensor
