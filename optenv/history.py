"""The vector env's state held as rings: one step writes O(N·d) numbers, not N·H·d.

The core's state (:mod:`optenv.core`) keeps each history oldest first, so a step that builds
the next state shifts every history by one entry: N·(2H + 2)·d numbers concatenated and
copied per step, 75 MB at N = 64 on the neural-net family (d = 2 842, H = 25), where the new
entries are 2·N·d. :class:`HistoryRing` keeps the same numbers in rings instead: PAST_GRADS,
PAST_LOC_DELTAS and PAST_OBJ_VAL_DELTAS as [N, H(, d)] buffers whose slot ``order[j]`` holds
the j-th oldest entry, CUR_LOC and CUR_GRAD as [N, d]. A step writes its entries into the
oldest slot and moves the ring's start by one; the state is read in order only where a caller
needs it (:meth:`read`: the env's float32 observation straight from the rings, with its
dtype cast in the same pass). All rows step together, so one start serves the batch.

The numbers are the core's, bit for bit: the entries come from
:meth:`~optenv.core.OptimizationCore.transition`, the same arithmetic as
:meth:`~optenv.core.OptimizationCore.step`, and reading only moves them.

Two ways to find the start. ``device_indexed=False`` (eager): the start is a host int and a
read is two slice copies per history. ``device_indexed=True`` (what a CUDA graph needs: a
captured step replays fixed addresses, so a host int baked into it would never move): the
order lives in a device tensor that the step updates in place, and reads gather with it. Both
give the same numbers; the first is cheaper on the CPU.
"""

from __future__ import annotations

import torch

from optenv.core import StateLayout, Transition

__all__ = ["HistoryRing"]


class HistoryRing:
    """N runs' states in ring buffers (see the module docs); rows are envs."""

    def __init__(self, layout: StateLayout, num_envs: int, *, dtype: torch.dtype,
                 device: torch.device, device_indexed: bool = False) -> None:
        n, d, h = num_envs, layout.d, layout.history
        self.layout = layout
        self.device_indexed = device_indexed
        self.x = torch.zeros(n, d, dtype=dtype, device=device)  # CUR_LOC
        self.cur_grad = torch.zeros(n, d, dtype=dtype, device=device)  # CUR_GRAD
        self.deltas = torch.zeros(n, h, dtype=dtype, device=device)  # PAST_OBJ_VAL_DELTAS
        self.grads = torch.zeros(n, h, d, dtype=dtype, device=device)  # PAST_GRADS
        self.steps = torch.zeros(n, h, d, dtype=dtype, device=device)  # PAST_LOC_DELTAS
        #: slot of the j-th oldest entry, on the device (updated in place: graph-safe) ...
        self.order = torch.arange(h, dtype=torch.int64, device=device)
        #: ... and the slot of the oldest one on the host (the eager reads' slices)
        self.head = 0

    # ------------------------------------------------------------------ writes
    def push(self, tr: Transition) -> None:
        """Append one step's entries (every row): the old CUR_GRAD joins PAST_GRADS, the new
        relative change and step join theirs, in the oldest slot, which becomes the newest."""
        slot = self.order[:1]
        self.grads.index_copy_(1, slot, self.cur_grad.unsqueeze(1))
        self.steps.index_copy_(1, slot, tr.delta_x.unsqueeze(1))
        self.deltas.index_copy_(1, slot, tr.rel)
        self.x.copy_(tr.x)
        self.cur_grad.copy_(tr.grad)
        self.order.add_(1).remainder_(self.layout.history)
        self.head = (self.head + 1) % self.layout.history

    def load(self, state: torch.Tensor, *, idx: torch.Tensor | None = None,
             mask: torch.Tensor | None = None) -> None:
        """Set the rows ``idx`` (an index tensor) or ``mask`` ([N] bool) to the in-order states
        ``state`` ([len(idx), dX], or [N, dX] with a mask): an episode start."""
        u = self.layout.unpack(state)
        # chronological entry j goes to slot order[j]: a gather by the inverse permutation
        inverse = torch.remainder(torch.arange(self.layout.history, device=self.order.device)
                                  - self.order[:1], self.layout.history)
        fields = [(self.x, u["CUR_LOC"]), (self.cur_grad, u["CUR_GRAD"]),
                  (self.deltas, u["PAST_OBJ_VAL_DELTAS"].index_select(1, inverse)),
                  (self.grads, u["PAST_GRADS"].index_select(1, inverse)),
                  (self.steps, u["PAST_LOC_DELTAS"].index_select(1, inverse))]
        for buf, new in fields:
            if idx is not None:
                buf.index_copy_(0, idx, new)
            else:
                assert mask is not None
                buf.copy_(torch.where(mask.view(-1, *([1] * (buf.dim() - 1))), new, buf))

    # ------------------------------------------------------------------ reads
    def read(self, out: torch.Tensor, *, with_loc: bool = True) -> torch.Tensor:
        """The states in order into ``out`` [N, dX] (``with_loc=False``: the observation, the
        state without CUR_LOC, [N, obs_dim]), cast to ``out``'s dtype in the same pass."""
        lay = self.layout
        slices = lay.state_slices if with_loc else lay.observation_slices
        n, h, d = out.shape[0], lay.history, lay.d
        if with_loc:
            out[:, slices["CUR_LOC"]].copy_(self.x)
        out[:, slices["CUR_GRAD"]].copy_(self.cur_grad)
        for name, ring in (("PAST_OBJ_VAL_DELTAS", self.deltas), ("PAST_GRADS", self.grads),
                           ("PAST_LOC_DELTAS", self.steps)):
            view = out[:, slices[name]]
            if ring.dim() == 3:
                view = view.view(n, h, d)
            self._in_order(ring, view)
        return out

    def _in_order(self, ring: torch.Tensor, out: torch.Tensor) -> None:
        """``out`` [N, H, ...] ← ``ring`` with its slots in chronological order."""
        if self.device_indexed:
            out.copy_(ring.index_select(1, self.order))
            return
        k = ring.shape[1] - self.head
        out[:, :k].copy_(ring[:, self.head:])
        out[:, k:].copy_(ring[:, :self.head])

    def grad_norm(self) -> torch.Tensor:
        """‖∇f‖ at each row's current iterate, [N]."""
        return self.cur_grad.norm(dim=-1)
