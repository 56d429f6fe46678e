"""A learned optimiser as a ``torch.optim.Optimizer``: train your own model with it in one line.

::

    opt = optenv.LearnedOptimizer(model.parameters(), "gps-logreg-psi")
    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)

The optimiser is a coordinatewise policy (:class:`~optenv.policy.CoordinatewisePolicy`, trained
by GPS or BPTT) acting on the model's parameters exactly as it acts in an optenv env on the
family's x: the model's tensors, in parameter order, are the coordinates, each tensor one
coordinate group of the kind its parameter group names (``kind="weight"|"bias"|"other"``; by
default a tensor of 2 or more dimensions is a weight, a vector a bias, see
:meth:`~optenv.learned.LearnedPolicy.default_kind`).

Why a closure: the policy's rows include the relative change of the objective between steps, so
each step needs the loss at the current parameters, as ``torch.optim.LBFGS`` does; ``step()``
without one is a TypeError. The closure zeroes the gradients, computes the loss, calls
``backward()`` and returns the loss; ``step`` returns it.

What one ``step(closure)`` does (the env's transition, on all parameters at once): the
parameters with a gradient that share a history of the loss form one packed observation of the
env's layout over all their coordinates (:mod:`optenv.optim_history`; normally the whole model
is one), advanced in place by the new loss and gradients as the env's state is (histories
shifted, the relative change of f by the core's own arithmetic, new entries sanitised). Its rows
of the policy's feature set at the iteration t (:data:`optenv.features.FEATURE_SETS`) are ONE
call of the feature set, written into the input buffer of the policy, which is evaluated ONCE
over all coordinates, as plain matmuls on preallocated buffers without autograd
(:class:`optenv.policy_inference.PolicyEvaluator`); each parameter then moves by

    Δp = scale · max_step · clamp(mean / max_step, −1, 1)

which, with ``scale=1``, is the env's step (its action is ``mean / max_step`` clipped to
[−1, 1], its step ``max_step · action``): ``max_step`` is the training env's (from the policy's
metadata; 1.0 for a bare policy object) and bounds every coordinate's step as it did in
training; ``scale`` (per parameter group) multiplies the bounded step, like a learning-rate
multiplier. The history records the step actually taken (Δp), as the env's does.

Memory per parameter coordinate (in the parameter's dtype): the observation of the layout with
the history the feature set needs, 2H + 1 values (past gradients, current gradient, past
steps), plus H shared objective changes per cohort: 5 for ``li-malik-2017-psi`` (H = 2), 51
for ``li-malik-2016`` with H = 25, 265 for ``li-malik-2017`` (H = 132); and in the policy's
dtype (float32) the input row (k + 3 kinds), the action and the rows the feature set returns
(k); an LSTM cell adds 2 · cells (h and c). Adam keeps 2. A parameter without a gradient is
skipped and its history does not advance (as torch's optimisers skip it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from optenv.families.groups import GROUP_KINDS
from optenv.learned import LearnedPolicy, load_run
from optenv.optim_history import STATE_KEYS, Cohort
from optenv.policy import CoordinatewisePolicy
from optenv.policy_inference import PolicyEvaluator
from optenv.validation import check_number

__all__ = ["LearnedOptimizer", "resolve_policy"]


def resolve_policy(policy: Any) -> LearnedPolicy:
    """``policy`` as a :class:`~optenv.learned.LearnedPolicy`: the name of a pretrained
    optimiser (:func:`optenv.pretrained.names`), a run folder of ``optenv train gps|bptt`` (or
    its policy file), a :class:`~optenv.policy.CoordinatewisePolicy` or a LearnedPolicy."""
    from optenv import pretrained

    if isinstance(policy, LearnedPolicy):
        return policy
    if isinstance(policy, CoordinatewisePolicy):
        return LearnedPolicy(policy)
    if isinstance(policy, str) and policy in pretrained.names():
        return pretrained.load(policy)
    if isinstance(policy, str | os.PathLike) and os.path.exists(policy):
        return load_run(policy)
    if isinstance(policy, str | os.PathLike):
        raise ValueError(f"policy: got {str(policy)!r}, which is neither a pretrained optimiser "
                         f"({', '.join(pretrained.names()) or 'none installed'}) nor an "
                         "existing run folder; allowed: a pretrained name, a run folder of "
                         "optenv train gps|bptt, or a CoordinatewisePolicy")
    raise TypeError(f"policy: got {type(policy).__name__}, allowed: a pretrained name (str), a "
                    "run folder (str or path), a CoordinatewisePolicy or a LearnedPolicy")


class LearnedOptimizer(torch.optim.Optimizer):
    """A coordinatewise learned optimiser as a ``torch.optim.Optimizer`` (module docstring).

    Args:
        params: parameters, or parameter groups (dicts) as for any torch optimiser. A group may
            set ``kind`` (``"weight"``, ``"bias"`` or ``"other"``: the coordinate-group kind
            the policy sees for each of its tensors; default None, from each tensor's shape) and
            ``scale``.
        policy: a pretrained optimiser's name, a run folder of ``optenv train gps|bptt`` (a
            coordinatewise one), a :class:`~optenv.policy.CoordinatewisePolicy` or a
            :class:`~optenv.learned.LearnedPolicy`. It is copied: the optimiser moves its copy
            to the parameters' device and never changes the caller's.
        scale: default of each group's step multiplier (> 0; 1.0 is the env's step).

    Floating-point parameters of any shape, dtype and device (all on one device); complex
    parameters are a ValueError, sparse gradients a RuntimeError at ``step``.
    ``state_dict()`` holds every parameter's history (and LSTM state), so a restored optimiser
    takes exactly the steps the uninterrupted one takes.
    """

    def __init__(self, params: Iterable[Any], policy: Any, *, scale: float = 1.0) -> None:
        learned = resolve_policy(policy)
        self.learned = learned
        self.history = learned.row_history()  # checks the policy's feature set and width
        self.features = learned.feature_set
        self.policy: CoordinatewisePolicy = _frozen_copy(learned.policy)
        check_number("scale", scale)
        self._plan: _Plan | None = None
        super().__init__(params, {"scale": float(scale), "kind": None})

    # -------------------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch's rules), checking its parameters, ``kind`` and ``scale``."""
        if isinstance(param_group, dict) and "scale" in param_group:
            check_number("scale", param_group["scale"])
        kind = param_group.get("kind") if isinstance(param_group, dict) else None
        if kind is not None and (not isinstance(kind, str) or kind not in self.policy.kinds):
            raise ValueError(f"kind: got {kind!r}, allowed: None (from each tensor's shape) or "
                             f"a kind this policy distinguishes: {', '.join(self.policy.kinds)}"
                             f" (of {', '.join(GROUP_KINDS)})")
        super().add_param_group(param_group)
        self._plan = None
        try:
            for i, p in enumerate(self.param_groups[-1]["params"]):
                if p.is_complex() or not p.is_floating_point():
                    raise ValueError(f"params: parameter {i} of group "
                                     f"{len(self.param_groups) - 1} has dtype {p.dtype}, "
                                     "allowed: real floating-point parameters (complex ones "
                                     "have no coordinatewise steps)")
                self._kind(self.param_groups[-1], p)  # a kind the policy lacks fails here
        except ValueError:
            self.param_groups.pop()  # the optimiser is left as it was
            raise

    def _kind(self, group: dict[str, Any], p: torch.Tensor) -> int:
        kind = group["kind"] or self.learned.default_kind(p.dim())
        if kind not in self.policy.kinds:
            raise ValueError(f"kind: a parameter of shape {tuple(p.shape)} is a {kind!r}, which "
                             f"this policy does not distinguish; allowed: set the group's kind "
                             f"to one of {', '.join(self.policy.kinds)}")
        return self.policy.kinds.index(kind)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's rule; the histories are packed again at the next step (from the loaded
        state, so the steps continue exactly)."""
        super().load_state_dict(state_dict)
        self._plan = None

    # -------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One learned step of every parameter with a gradient; returns the closure's loss.

        ``closure`` re-evaluates the model: it zeroes the gradients, computes the loss, calls
        ``backward()`` and returns the loss (a scalar tensor or number)."""
        if closure is None or not callable(closure):
            raise TypeError(f"closure: got {type(closure).__name__}, allowed: a callable that "
                            "zeroes the gradients, computes the loss, calls backward() and "
                            "returns it (as for torch.optim.LBFGS): the learned optimiser "
                            "reads the change of the loss between steps")
        with torch.enable_grad():
            loss = closure()
        f_now = _loss_value(loss)
        todo = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not todo:
            return loss
        plan = self._plan_for(todo)
        rows = plan.evaluator.rows
        for cohort, (lo, hi) in zip(plan.cohorts, plan.spans, strict=True):
            cohort.advance(f_now)
            rows[lo:hi].copy_(cohort.rows(self.features))  # cast to the policy's dtype
        mean = plan.evaluator.mean(plan.cell)
        max_step = self.learned.max_step
        action = torch.div(mean, max_step, out=plan.action).clamp_(-1.0, 1.0)
        for cohort, (lo, hi), scale in zip(plan.cohorts, plan.spans, plan.scales, strict=True):
            cohort.record(action[lo:hi], max_step, scale)
            for p in cohort.params:
                self.state[p]["t"], self.state[p]["f"] = cohort.t, cohort.f
        return loss

    def _plan_for(self, todo: list[tuple[dict[str, Any], torch.Tensor]]) -> _Plan:
        """The packed histories and buffers for these parameters: last step's when the same
        parameters (and group kinds and scales) step again, else packed anew from their
        states (checks before any state changes)."""
        device = _checked(todo)  # every step: a gradient may turn sparse
        key = (device, *((id(p), group["kind"], group["scale"]) for group, p in todo))
        if self._plan is not None and self._plan.key == key:
            return self._plan
        if self.policy.log_std.device != device:
            self.policy.to(device)
        kinds = {id(p): self._kind(group, p) for group, p in todo}
        scales = {id(p): float(group["scale"]) for group, p in todo}
        stepping = {id(p) for _group, p in todo}
        for p, st in self.state.items():  # parameters left out keep a state of their own
            if id(p) not in stepping:
                for name in (*STATE_KEYS, "lstm_h", "lstm_c"):
                    if name in st:
                        st[name] = st[name].clone()
        cohorts = Cohort.group([p for _group, p in todo], self.state, self.history)
        ordered = [p for c in cohorts for p in c.params]
        evaluator = PolicyEvaluator(self.policy)
        evaluator.prepare(torch.cat([torch.full((p.numel(),), kinds[id(p)], device=device)
                                     for p in ordered]))
        spans, lo = [], 0
        for c in cohorts:
            spans.append((lo, lo + c.d))
            lo += c.d
        cell = None
        if self.policy.recurrent:
            cell = self._pack_cell(ordered, device)
        plan_scales: list[torch.Tensor | None] = []
        for c in cohorts:
            values = [scales[id(p)] for p in c.params]
            plan_scales.append(None if all(v == 1.0 for v in values) else torch.cat(
                [torch.full((p.numel(),), v, dtype=p.dtype, device=device)
                 for p, v in zip(c.params, values, strict=True)]))
        for c in cohorts:
            c.bind(self.state)
        self._plan = _Plan(key, cohorts, spans, evaluator, cell, plan_scales,
                           torch.empty(lo, dtype=evaluator.dtype, device=device))
        return self._plan

    def _pack_cell(self, ordered: list[torch.Tensor], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM's state of these parameters as two buffers [n, cells] (zeros for those
        that start now), each parameter's state pointed at its rows."""
        dtype, cells = self.policy.log_std.dtype, self.policy.hidden[0]
        n = sum(p.numel() for p in ordered)
        h = torch.zeros(n, cells, device=device, dtype=dtype)
        c = torch.zeros(n, cells, device=device, dtype=dtype)
        lo = 0
        for p in ordered:
            st, hi = self.state[p], lo + p.numel()
            if "lstm_h" in st:
                h[lo:hi].copy_(st["lstm_h"])
                c[lo:hi].copy_(st["lstm_c"])
            st["lstm_h"], st["lstm_c"] = h[lo:hi], c[lo:hi]
            lo = hi
        return h, c


@dataclass
class _Plan:
    """What a step over one set of parameters reuses: their cohorts and each one's rows in the
    policy's input (``spans``), the evaluator and its buffers, the LSTM's state, the step
    multipliers (None where all are 1) and the action buffer."""

    key: tuple[Any, ...]
    cohorts: list[Cohort]
    spans: list[tuple[int, int]]
    evaluator: PolicyEvaluator
    cell: tuple[torch.Tensor, torch.Tensor] | None
    scales: list[torch.Tensor | None]
    action: torch.Tensor


def _frozen_copy(policy: CoordinatewisePolicy) -> CoordinatewisePolicy:
    """An inference-only copy of ``policy`` (eval mode, no gradients)."""
    import copy

    out = copy.deepcopy(policy)
    return out.eval().requires_grad_(False)


def _loss_value(loss: Any) -> torch.Tensor:
    """The closure's loss as a detached 0-d tensor; TypeError if it is not one number."""
    if isinstance(loss, torch.Tensor) and loss.numel() == 1 and not loss.is_complex():
        return loss.detach().reshape(())
    if isinstance(loss, int | float) and not isinstance(loss, bool):
        return torch.tensor(float(loss), dtype=torch.float64)
    shape = f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""
    raise TypeError(f"closure: returned {type(loss).__name__}{shape}, allowed: the loss as a "
                    "real scalar tensor or a number")


def _checked(todo: list[tuple[dict[str, Any], torch.Tensor]]) -> torch.device:
    """The one device of these parameters; RuntimeError for parameters on several devices or
    a sparse gradient (checked before any state changes)."""
    for _group, p in todo:
        if p.grad is not None and p.grad.is_sparse:
            raise RuntimeError("LearnedOptimizer does not support sparse gradients: a parameter "
                               f"of shape {tuple(p.shape)} has one; allowed: dense gradients "
                               "(e.g. nn.Embedding(sparse=False))")
    devices = {p.device for _g, p in todo}
    if len(devices) != 1:
        raise RuntimeError(f"LearnedOptimizer: parameters on {sorted(map(str, devices))}, "
                           "allowed: all on one device (the policy runs one batched call)")
    return devices.pop()
