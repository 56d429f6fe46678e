"""The feature histories of :class:`optenv.optim.LearnedOptimizer`, packed: one observation
buffer for many parameters, advanced in place.

Why packed: the policy's rows are elementwise in the coordinates (every feature set is: a
coordinate's row reads its own gradients and steps and the shared objective changes), so the
parameters that share a history of the loss (the same iteration t, the same past objective
changes) can be ONE observation of the env's flat layout (:class:`~optenv.core.StateLayout`)
over all their coordinates, d = their total size. The rows of all of them are then one call of
the feature set, and the transition is a handful of in-place copies of that buffer, whatever
the number of parameters: no per-parameter tensor operation in a step but the gradient copy
and the parameter update, each one ``torch._foreach_*`` call.

A :class:`Cohort` is such a set of parameters. Normally all of a model's parameters are one
cohort. A parameter that had no gradient at some steps (frozen for a while, or added later) has
its own history and ends up in a cohort of its own; :meth:`Cohort.group` forms them.

Per parameter, ``optimizer.state[p]`` holds views into its cohort's buffer, so that
``state_dict`` / ``load_state_dict`` work as for any torch optimiser:

* ``"t"``: the iteration of the last step, ``"f"``: the loss there (0-d tensor);
* ``"obj_deltas"`` [H]: the relative changes of the loss at the last H steps (shared by the
  cohort, oldest first, zeros before the first);
* ``"grads"`` [H + 1, numel]: the gradients of the last H + 1 steps (oldest first);
* ``"steps"`` [H, numel]: the steps taken at the last H steps (oldest first; the newest is the
  step of the last ``step()``, so the env's observation at the next step is this state
  advanced by the next loss and gradient).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from optenv.core import STATE_LIMIT, StateLayout, advance_observation

__all__ = ["STATE_KEYS", "Cohort"]

#: The tensor entries of a parameter's state (besides "t" and "f").
STATE_KEYS = ("obj_deltas", "grads", "steps")


def _sanitise_(t: torch.Tensor) -> torch.Tensor:
    """The state's rule for new entries, in place: NaN → 0, ±inf → ±STATE_LIMIT, clamped."""
    return torch.nan_to_num_(t, nan=0.0, posinf=STATE_LIMIT, neginf=-STATE_LIMIT).clamp_(
        -STATE_LIMIT, STATE_LIMIT)


class Cohort:
    """Parameters sharing one history of the loss, as one flat observation [1, obs_dim].

    ``t`` is None before the first step (the next :meth:`advance` builds the observation at
    x(0), as :func:`optenv.core.first_observation` does)."""

    def __init__(self, params: Sequence[torch.Tensor], history: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.params = list(params)
        sizes = [p.numel() for p in self.params]
        self.d = sum(sizes)
        self.layout = StateLayout(self.d, history)
        self.obs = torch.zeros(1, self.layout.obs_dim, dtype=dtype, device=device)
        self.t: int | None = None
        self.f: torch.Tensor | None = None
        self.row_buffer: torch.Tensor | None = None
        h, d = history, self.d
        sl = self.layout.observation_slices
        self.deltas = self.obs[0, sl["PAST_OBJ_VAL_DELTAS"]]
        # PAST_GRADS then CUR_GRAD are adjacent: one [H + 1, d] block, as are the steps
        self.grads = self.obs[0, sl["PAST_GRADS"].start:sl["CUR_GRAD"].stop].view(h + 1, d)
        self.steps = self.obs[0, sl["PAST_LOC_DELTAS"]].view(h, d)
        starts = [0]
        for n in sizes:
            starts.append(starts[-1] + n)
        self.spans = list(itertools.pairwise(starts))
        self.grad_views = [self.grads[h, a:b].view(p.shape)
                           for p, (a, b) in zip(self.params, self.spans, strict=True)]
        self.step_views = [self.steps[h - 1, a:b].view(p.shape)
                           for p, (a, b) in zip(self.params, self.spans, strict=True)]

    # --------------------------------------------------------------------- forming
    @classmethod
    def group(cls, params: Sequence[torch.Tensor], states: Mapping[torch.Tensor, Any],
              history: int) -> list[Cohort]:
        """The cohorts of ``params`` (in their order of first appearance): those with the same
        dtype and the same history of the loss (t, f, objective changes) share one; those
        without a state yet form one per dtype. Each cohort's buffer is filled from the
        parameters' states (so a loaded ``state_dict`` continues exactly)."""
        by_key: dict[Any, list[torch.Tensor]] = {}
        for p in params:
            st = states.get(p, {})
            if "grads" in st:
                key = (p.dtype, int(st["t"]), float(st["f"]),
                       tuple(st["obj_deltas"].tolist()))
            else:
                key = (p.dtype, None)
            by_key.setdefault(key, []).append(p)
        cohorts = []
        for key, members in by_key.items():
            cohort = cls(members, history, key[0], members[0].device)
            if key[1] is not None:
                cohort.load([states[p] for p in members])
            cohorts.append(cohort)
        return cohorts

    def load(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Fill the buffer from the members' states (ValueError for a state of another
        layout)."""
        h = self.layout.history
        first = states[0]
        for p, st, (a, b) in zip(self.params, states, self.spans, strict=True):
            shapes = {"obj_deltas": (h,), "grads": (h + 1, b - a), "steps": (h, b - a)}
            for key, shape in shapes.items():
                if key not in st or tuple(st[key].shape) != shape:
                    got = tuple(st[key].shape) if key in st else "missing"
                    raise ValueError(f"state_dict: the state of a parameter of shape "
                                     f"{tuple(p.shape)} has {key} {got}, allowed: {shape} "
                                     f"(a state of this LearnedOptimizer, history {h})")
            self.grads[:, a:b].copy_(st["grads"])
            self.steps[:, a:b].copy_(st["steps"])
        self.deltas.copy_(first["obj_deltas"])
        self.t = int(first["t"])
        self.f = torch.as_tensor(first["f"]).to(device=self.obs.device,
                                                dtype=self.obs.dtype).reshape(1)

    def bind(self, states: Any) -> None:
        """Point each member's state at its part of the buffer (views; see the module)."""
        for p, (a, b) in zip(self.params, self.spans, strict=True):
            st = states[p]
            st["obj_deltas"], st["grads"], st["steps"] = (
                self.deltas, self.grads[:, a:b], self.steps[:, a:b])
            st["t"], st["f"] = self.t, self.f

    # --------------------------------------------------------------------- one step
    def advance(self, f_now: torch.Tensor) -> None:
        """The env's transition to the current iterate: objective changes and gradients
        shifted, the new relative change of f and the members' gradients written (the step
        that led here was written by :meth:`record`)."""
        f = f_now.to(device=self.obs.device, dtype=self.obs.dtype).reshape(1)
        h = self.layout.history
        if self.t is None:
            self.t = 0
        else:
            self.t += 1
            # the shared changes advance by the core's own arithmetic (a one-coordinate state)
            one = StateLayout(1, h)
            small = torch.cat([self.deltas, self.obs.new_zeros(2 * h + 1)]).unsqueeze(0)
            zero = self.obs.new_zeros(1, 1)
            self.deltas.copy_(advance_observation(one, small, self.f, f, zero, zero)[0, :h])
            for i in range(h):  # one row at a time: copy_ refuses overlapping memory
                self.grads[i].copy_(self.grads[i + 1])
        torch._foreach_copy_(self.grad_views, [p.grad for p in self.params])  # type: ignore[misc]
        _sanitise_(self.grads[h])
        self.f = f

    def rows(self, features: Any) -> torch.Tensor:
        """The members' rows [d, k] of the feature set at the current iteration; a set that
        computes in place (Ψ) writes them into a buffer kept between steps (column by column:
        [k, d] transposed, so that each column is contiguous)."""
        if not features.rows_into:  # a set that allocates anyway: no second copy
            return features.rows(self.layout, self.obs, self.t)[0]
        k = features.width(self.layout.history)
        if self.row_buffer is None or self.row_buffer.shape[0] != k:
            self.row_buffer = self.obs.new_empty(k, self.d)
        return features.rows(self.layout, self.obs, self.t,
                             out=self.row_buffer.t().unsqueeze(0))[0]

    def record(self, action: torch.Tensor, max_step: float, scale: torch.Tensor | None
               ) -> None:
        """Take the step ``scale · max_step · action`` (``action`` [d], clipped, in the
        policy's dtype): written as the newest step of the history (sanitised there) and added
        to the members, as the env's step does (cast to the parameters' dtype, then times
        max_step)."""
        h = self.layout.history
        for i in range(h - 1):
            self.steps[i].copy_(self.steps[i + 1])
        new = self.steps[h - 1]
        new.copy_(action)
        new.mul_(max_step)
        if scale is not None:
            new.mul_(scale)
        torch._foreach_add_(self.params, self.step_views)
        _sanitise_(new)
