"""The objective-family interface: batches of problem instances, f, ∇f and the Hessian.

A family is a distribution over objective functions (e.g. "logistic regression on 100 points
drawn from two random Gaussians"). Every method works on a batch of B instances at once:
``data`` is a dict of tensors whose first dimension is B, and ``x`` has shape [B, d]. All
arithmetic is plain torch, so it runs on any device, in float32 or float64, and is
differentiable end to end (BPTT back-propagates through ``value_and_grad``).

Subclasses implement ``generate`` (draw instance data from a :class:`~optenv.rng.KeyedRNG`)
and ``objective``; they should override ``value_and_grad`` with a closed form where one exists
(faster than autograd, and still differentiable). ``hessian`` defaults to ``torch.func``.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from optenv.families.groups import CoordinateGroup, groups_from_sizes
from optenv.rng import KeyedRNG, instance_keys

__all__ = ["DRAW_OVERHEAD", "ObjectiveFamily", "ProblemData", "index_problem",
           "problem_to_numpy"]

ProblemData = dict[str, torch.Tensor]
#: Peak elements of a draw per element of the data it returns: 10.4 measured on Quadratic
#: (dim 3000) and RobustRegression (dim 100 000), as the growth of the peak resident memory.
DRAW_OVERHEAD = 11


def index_problem(data: Mapping[str, torch.Tensor], index: Any) -> ProblemData:
    """The instances ``index`` selects (a slice, an index tensor or a boolean mask)."""
    return {k: v[index] for k, v in data.items()}


def problem_to_numpy(data: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Detached numpy copies of a problem's tensors."""
    return {k: v.detach().cpu().numpy() for k, v in data.items()}


class ObjectiveFamily(ABC):
    """A batched distribution over objectives ``f(x; data)`` with ``x`` in R^d.

    Class attributes a subclass sets:
        name: the family's registry name (``optenv/<name>-v0`` for built-ins).
        default_max_step: largest per-coordinate step an env action of ±1 maps to.

    Subclasses are dataclasses, so their constructor arguments are their configuration:
    ``config()`` returns them (JSON-serialisable), and unknown or out-of-range arguments raise
    ``ValueError`` naming the argument and what is allowed.
    """

    name: ClassVar[str] = ""
    default_max_step: ClassVar[float] = 1.0

    # ------------------------------------------------------------------ to implement
    @property
    @abstractmethod
    def d(self) -> int:
        """d, the number of optimisation variables (the length of x)."""

    @abstractmethod
    def generate(self, rng: KeyedRNG) -> ProblemData:
        """Instance data for ``rng.batch_size`` instances, each tensor with leading dim B."""

    @abstractmethod
    def objective(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """f(x) for x [B, d]; returns [B]."""

    # ------------------------------------------------------------------ overridable defaults
    def initial_point(self, rng: KeyedRNG) -> torch.Tensor:
        """x(0) for each instance, [B, d]; standard normal by default (Li & Malik: random)."""
        return rng.normal(self.d)

    def value_and_grad(
        self, x: torch.Tensor, data: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(f [B], ∇f [B, d]). Default: ``torch.func.grad`` of the batched objective.

        Instances are independent, so the gradient of the sum is the per-instance gradient.
        The result stays differentiable with respect to anything ``x`` depends on.
        """

        def total(xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.objective(xx, data)
            return f.sum(), f

        grad, (_, f) = torch.func.grad_and_value(total, has_aux=True)(x)
        return f, grad

    def hessian(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """∇²f(x), [B, d, d], by ``torch.func`` (meant for small d: GPS's local quadratic cost)."""

        def single(xi: torch.Tensor, di: dict[str, torch.Tensor]) -> torch.Tensor:
            one = {k: v.unsqueeze(0) for k, v in di.items()}
            return self.objective(xi.unsqueeze(0), one)[0]

        return torch.func.vmap(torch.func.hessian(single))(x, dict(data))

    def hessian_vector_product(self, x: torch.Tensor, data: Mapping[str, torch.Tensor],
                               v: torch.Tensor) -> torch.Tensor:
        """∇²f(x)·v, [B, d], for any d: forward-mode differentiation of ``value_and_grad``
        along v (one pass; the exact Hessian needs d of them and B·d² memory)."""
        return torch.func.jvp(lambda xx: self.value_and_grad(xx, data)[1], (x,), (v,))[1]

    # ------------------------------------------------------------------ noisy objectives
    def rewind(self, data: Mapping[str, torch.Tensor]) -> None:
        """Put the instances of ``data`` at iteration 0, in place: the core calls it when runs
        start. A family whose f is a minibatch estimate keeps its minibatch counter in
        ``data`` (see :class:`~optenv.families.MLPClassifier`); for the others, f does not
        depend on the iteration and this does nothing."""
        return

    def advance(self, data: Mapping[str, torch.Tensor]) -> None:
        """Move the instances of ``data`` to the next iteration, in place: the core calls it
        before it evaluates each new iterate (nothing for families whose f is exact)."""
        return

    def full_batch(self) -> ObjectiveFamily:
        """The same objectives with exact f, without minibatch noise: ``self`` for a family
        whose f is exact (the default). Reference optima (``optenv compare``'s f*) are computed
        on it, since the full loss is what evaluation reports for a minibatch family."""
        return self

    def has_full_objective(self) -> bool:
        """Whether :meth:`full_objective` returns a value (f is a minibatch estimate of it):
        what the envs ask before they set aside room for ``info["f_full"]``."""
        return False

    def full_objective(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]
                       ) -> torch.Tensor | None:
        """The objective without minibatch noise, [B] (the full training loss), for a family
        whose f is a minibatch estimate of it; None (the default) where f is exact.
        Evaluation reports it in place of f (``info["f_full"]`` in the envs)."""
        return None

    def coordinate_groups(self) -> tuple[CoordinateGroup, ...]:
        """The named groups of coordinates, a partition of ``range(d)`` in order (one per
        weight matrix / bias vector for networks; one group ``"x"`` unless a family says
        otherwise). See :mod:`optenv.families.groups`."""
        return groups_from_sizes([("x", self.d, "other")])

    def optimum(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The known minimiser [B, d] where the family has one in closed form, else None."""
        return None

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        seeds: torch.Tensor | Sequence[int] | int | None = None,
        *,
        n: int | None = None,
        generator: torch.Generator | None = None,
        episodes: torch.Tensor | Sequence[int] | int = 0,
        split: str = "train",
        keys: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> tuple[ProblemData, torch.Tensor]:
        """Draw a batch of problem instances and their starting points: ``(data, x0)``.

        Give exactly one of: ``seeds`` (one int per instance, or one int for a single
        instance), ``n`` together with a seeded ``torch.Generator`` (it draws n seeds), or
        precomputed ``keys`` from :func:`optenv.rng.instance_keys`. Instance ``i`` depends only
        on ``(seeds[i], episodes[i], split)``: ``sample([s])`` inside a batch or alone is the
        same instance an env gets from ``reset(seed=s)``.
        """
        given = sum(v is not None for v in (seeds, n, keys))
        if given != 1:
            raise ValueError("sample: give exactly one of seeds, n (with generator) or keys; "
                             f"got {given}")
        if n is not None:
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"n: got {n!r}, allowed: an int >= 1")
            if generator is None:
                raise ValueError("generator: got None with n, allowed: a seeded torch.Generator")
            seeds = torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)
        if keys is None:
            seeds_t = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1)
            if bool((seeds_t < 0).any()):
                raise ValueError(f"seeds: got negative values {seeds_t.tolist()[:5]}, "
                                 "allowed: integers in [0, 2**63)")
            keys = instance_keys(seeds_t, episodes, split)
        return self.sample_keys(keys.to(device), dtype=dtype)

    def sample_keys(
        self, keys: torch.Tensor, dtype: torch.dtype = torch.float64
    ) -> tuple[ProblemData, torch.Tensor]:
        """``(data, x0)`` for the instances with these keys, on the keys' device."""
        rng = KeyedRNG(keys, dtype=dtype)
        data = self.generate(rng)
        x0 = self.initial_point(rng)
        return data, x0

    # ------------------------------------------------------------------ checks and config
    def problem_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-instance shape of every data field (used to validate user-given problems, and to
        estimate an env's memory before it allocates any). By default one instance is drawn
        to find out; the built-in families state their shapes instead, so that a size too
        large for memory is refused before anything is drawn."""
        shapes = self.__dict__.get("_problem_shapes")
        if shapes is None:
            data, _ = self.sample([0])
            shapes = {k: tuple(v.shape[1:]) for k, v in data.items()}
            self.__dict__["_problem_shapes"] = shapes
        return shapes

    def draw_numel(self) -> int:
        """Elements a draw of one instance holds at its peak: an estimate for the envs' memory
        check (:mod:`optenv.memory`), which must not allocate to find out. By default
        ``DRAW_OVERHEAD`` times the data's elements (the random words a draw makes its data
        from, and their conversions); a family whose draw makes more (a matrix per point, say)
        adds it."""
        return DRAW_OVERHEAD * sum(math.prod(s) for s in self.problem_shapes().values())

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable (checkpoints, spec JSON, results)."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
