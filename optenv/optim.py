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

What one ``step(closure)`` does, per parameter p with a gradient (the env's transition, with the
core's own functions): the first step builds p's observation at x(0)
(:func:`optenv.core.first_observation`); a later one advances it with the loss, the gradient
and the step taken last time (:func:`optenv.core.advance_observation`: histories shifted, the
relative change of f guarded, new entries sanitised). The rows of the policy's feature set at
p's iteration t come from that observation (:data:`optenv.features.FEATURE_SETS`); the rows of
all parameters go through the policy in ONE batched call; p moves by

    Δp = scale · max_step · clamp(mean / max_step, −1, 1)

which, with ``scale=1``, is the env's step (its action is ``mean / max_step`` clipped to
[−1, 1], its step ``max_step · action``): ``max_step`` is the training env's (from the policy's
metadata; 1.0 for a bare policy object) and bounds every coordinate's step as it did in
training; ``scale`` (per parameter group) multiplies the bounded step, like a learning-rate
multiplier. The history records the step actually taken (Δp), as the env's does.

Memory per parameter coordinate (in the parameter's dtype): the observation of the layout with
the history the feature set needs, (2H + 1) + 1 values (past gradients, current gradient,
past steps, and the step to record at the next call), plus H shared objective changes per
tensor: 6 for ``li-malik-2017-psi`` (H = 2), 52 for ``li-malik-2016`` with H = 25, 266 for
``li-malik-2017`` (H = 132); an LSTM cell adds 2 · cells (h and c, in the policy's float32).
Adam keeps 2. A parameter without a gradient is skipped and its history does not advance (as
torch's optimisers skip it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

from optenv.core import StateLayout, advance_observation, first_observation
from optenv.families.groups import GROUP_KINDS
from optenv.learned import LearnedPolicy, load_run
from optenv.policy import CoordinatewisePolicy
from optenv.validation import check_number

__all__ = ["CPU_BLOCK", "LearnedOptimizer", "resolve_policy"]

#: Rows per policy call on the CPU. One call on 10^6 rows of a 50-unit MLP took 1.64 s, blocks
#: of 16384 rows 0.36 s, of 4096 0.38 s, of 65536 0.52 s (one thread, this repository's 2-core
#: build machine under load): the [rows, hidden] activations of a block stay in cache.
CPU_BLOCK = 16384


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
        device = _checked(todo)  # before any state changes
        if self.policy.log_std.device != device:
            self.policy.to(device)
        kinds = [torch.full((p.numel(),), self._kind(group, p), device=device)
                 for group, p in todo]
        rows = [self._advance(p, f_now) for _group, p in todo]
        cell = self._cell(todo) if self.policy.recurrent else None
        mean, cell = self._evaluate(torch.cat(rows), torch.cat(kinds), cell)
        start = 0
        for group, p in todo:
            n = p.numel()
            self._move(p, mean[0, start:start + n], group["scale"])
            if cell is not None:
                self.state[p]["lstm_h"] = cell[0][start:start + n]
                self.state[p]["lstm_c"] = cell[1][start:start + n]
            start += n
        return loss

    def _evaluate(self, rows: torch.Tensor, kinds: torch.Tensor,
                  cell: tuple[torch.Tensor, torch.Tensor] | None
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The policy on every coordinate's row [n, k]: one call on an accelerator; on the CPU
        in blocks of :data:`CPU_BLOCK` rows, so that the hidden activations stay in cache (the
        rows are independent: the same numbers as one call up to the GEMM's rounding, which
        depends on the block's shape)."""
        n = rows.shape[0]
        if rows.device.type != "cpu" or n <= CPU_BLOCK:
            return self.policy(rows.unsqueeze(0), kinds, cell)
        means, hs, cs = [], [], []
        for lo in range(0, n, CPU_BLOCK):
            part = slice(lo, lo + CPU_BLOCK)
            m, c = self.policy(rows[part].unsqueeze(0), kinds[part],
                               None if cell is None else (cell[0][part], cell[1][part]))
            means.append(m)
            if c is not None:
                hs.append(c[0])
                cs.append(c[1])
        return torch.cat(means, dim=1), (torch.cat(hs), torch.cat(cs)) if hs else None

    def _advance(self, p: torch.Tensor, f_now: torch.Tensor) -> torch.Tensor:
        """p's observation brought to the current iterate (the env's transition); returns its
        rows [numel, k] in the policy's dtype."""
        st = self.state[p]
        layout = StateLayout(p.numel(), self.history)
        g = p.grad.detach().reshape(1, -1).to(p.dtype)  # type: ignore[union-attr]
        f = f_now.to(device=p.device, dtype=p.dtype).reshape(1)
        if "observation" not in st:
            st["t"] = 0
            st["observation"] = first_observation(layout, g)
        else:
            st["t"] += 1
            st["observation"] = advance_observation(layout, st["observation"], st["f"], f, g,
                                                    st["last_step"].reshape(1, -1))
        st["f"] = f
        rows = self.features.rows(layout, st["observation"], st["t"])
        return rows[0].to(self.policy.log_std.dtype)

    def _move(self, p: torch.Tensor, mean: torch.Tensor, scale: float) -> None:
        """Δp = scale · max_step · clamp(mean / max_step, −1, 1) (the env's step when scale is
        1: its action, clipped, in the policy's dtype, then cast and times max_step)."""
        max_step = self.learned.max_step
        action = (mean / max_step).clamp(-1.0, 1.0)
        delta = max_step * action.to(p.dtype)
        if scale != 1.0:
            delta = scale * delta
        p.add_(delta.view_as(p))
        self.state[p]["last_step"] = delta

    def _cell(self, todo: list[tuple[dict[str, Any], torch.Tensor]]
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The LSTM's state for these parameters (None when all start now; zeros for those
        that do), in the policy's dtype (load_state_dict casts state to the parameter's)."""
        if not any("lstm_h" in self.state[p] for _group, p in todo):
            return None
        dtype, cells = self.policy.log_std.dtype, self.policy.hidden[0]
        hs, cs = [], []
        for _group, p in todo:
            st = self.state[p]
            z = torch.zeros(p.numel(), cells, device=p.device, dtype=dtype)
            hs.append(st.get("lstm_h", z).to(dtype))
            cs.append(st.get("lstm_c", z).to(dtype))
        return torch.cat(hs), torch.cat(cs)


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
