"""A :class:`~optenv.policy.CoordinatewisePolicy` evaluated on millions of rows without autograd
and without allocating: preallocated buffers, plain ``addmm`` calls, in-place activations.

Why: :class:`optenv.optim.LearnedOptimizer` evaluates the policy once per step on every
coordinate of a model (10^6 rows and more). Through ``nn.Module`` calls each layer allocates its
output; on the CPU a fresh multi-megabyte tensor costs page faults (a ReLU of a [16384, 50]
block measured 3.4 ms out of place and 0.04 ms in place on this repository's build machine), so
the module path spent more time allocating than computing. Here the input [n, k + kinds] is one
buffer the caller writes its rows into (the one-hot kind columns are written once per layout),
and the network runs over blocks of :data:`CPU_BLOCK` rows on the CPU (the hidden activations
of a block stay in cache), in one call per layer on an accelerator.

The arithmetic is the module's, op for op (``nn.Linear`` is ``addmm(bias, x, W.t())``; the LSTM
cell is torch's CPU ``lstm_cell``: ``linear_hh(h) + linear_ih(x)``, then the gates' sigmoid and
tanh, ``c' = f·c + i·g``, ``h' = o·tanh(c')``), so on a block of the same shape it gives the
module's numbers bit for bit: that is what lets the optimiser's steps equal the env's
(``tests/optenv/test_optim_env_equivalence.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from optenv.policy import CoordinatewisePolicy

__all__ = ["CPU_BLOCK", "PolicyEvaluator"]

#: Rows per block on the CPU. Measured (one thread, the 2-core build machine, psi-mlp of 50
#: hidden units, 10^6 rows): see docs/performance.md's optimiser rows.
CPU_BLOCK = 8192


class PolicyEvaluator:
    """The mean step of ``policy`` for n coordinates, on buffers kept between calls.

    Use: :meth:`prepare` with each coordinate's kind (once per layout of the coordinates),
    write the rows into :attr:`rows` (the policy's dtype; they are scaled by its ``obs_scale``
    here), call :meth:`mean`. An LSTM's state (h, c) [n, cells] is the caller's and is updated
    in place.
    """

    def __init__(self, policy: CoordinatewisePolicy) -> None:
        self.policy = policy
        self.width = policy.width
        if policy.recurrent:
            self.layers: list[nn.Linear] = []
        else:
            self.layers = [m for m in policy.mean_net if isinstance(m, nn.Linear)]
        self.n = -1
        self.inp = torch.empty(0)

    @property
    def dtype(self) -> torch.dtype:
        return self.policy.log_std.dtype

    def prepare(self, kinds: torch.Tensor) -> None:
        """Allocate the buffers for ``kinds`` [n] (indices into the policy's kinds) and write
        the one-hot kind columns of the input."""
        p, n = self.policy, int(kinds.numel())
        device, dtype = p.log_std.device, self.dtype
        self.n = n
        self.inp = torch.zeros(n, self.width + len(p.kinds), device=device, dtype=dtype)
        self.inp[:, self.width:].scatter_(1, kinds.to(device).reshape(-1, 1), 1.0)
        self.out = torch.empty(n, 1, device=device, dtype=dtype)
        rows = n if device.type != "cpu" else min(n, CPU_BLOCK)
        if p.recurrent:
            cells = p.hidden[0]
            self.hidden = [torch.empty(rows, 4 * cells, device=device, dtype=dtype),
                           torch.empty(rows, 4 * cells, device=device, dtype=dtype),
                           torch.empty(rows, cells, device=device, dtype=dtype)]
        else:
            self.hidden = [torch.empty(rows, layer.out_features, device=device, dtype=dtype)
                           for layer in self.layers[:-1]]
        self.block = rows

    @property
    def rows(self) -> torch.Tensor:
        """[n, k]: where the caller writes each coordinate's row."""
        return self.inp[:, :self.width]

    @torch.no_grad()
    def mean(self, state: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The policy's mean step [n] for the rows written (a view of a buffer, overwritten by
        the next call); an LSTM's ``state`` (h, c) is advanced in place."""
        rows = self.rows
        rows.mul_(self.policy.obs_scale.to(self.dtype))
        for lo in range(0, self.n, self.block):
            hi = min(lo + self.block, self.n)
            if self.policy.recurrent:
                assert state is not None
                self._lstm_block(lo, hi, state[0][lo:hi], state[1][lo:hi])
            else:
                self._mlp_block(lo, hi)
        return self.out[:, 0]

    def _mlp_block(self, lo: int, hi: int) -> None:
        x = self.inp[lo:hi]
        for layer, buf in zip(self.layers[:-1], self.hidden, strict=True):
            h = buf[:hi - lo]
            torch.addmm(layer.bias, x, layer.weight.t(), out=h)
            h.clamp_min_(0.0)  # ReLU, in place
            x = h
        last = self.layers[-1]
        torch.addmm(last.bias, x, last.weight.t(), out=self.out[lo:hi])

    def _lstm_block(self, lo: int, hi: int, h: torch.Tensor, c: torch.Tensor) -> None:
        cell: nn.LSTMCell = self.policy.lstm
        m = hi - lo
        gates, ih, tmp = (b[:m] for b in self.hidden)
        torch.addmm(cell.bias_hh, h, cell.weight_hh.t(), out=gates)
        torch.addmm(cell.bias_ih, self.inp[lo:hi], cell.weight_ih.t(), out=ih)
        gates.add_(ih)
        i, f, g, o = gates.chunk(4, 1)
        i.sigmoid_()
        f.sigmoid_()
        g.tanh_()
        o.sigmoid_()
        torch.mul(i, g, out=tmp)
        c.mul_(f).add_(tmp)  # c' = f·c + i·g (f·c = c·f exactly)
        torch.tanh(c, out=tmp)
        torch.mul(o, tmp, out=h)
        readout = self.policy.readout
        torch.addmm(readout.bias, h, readout.weight.t(), out=self.out[lo:hi])
