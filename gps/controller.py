"""Time-varying linear-Gaussian controllers, the LQR state, and the momentum initial controller.

GPS keeps one controller ``u_t ~ N(K_t z_t + k_t, S_t)`` per training condition. Everything here
is batched over conditions (leading dim M).

The LQR state ``z``: by default the full optenv state (CUR_LOC, H objective deltas, H past
gradients, the current gradient, H past steps; dX = 2d + H + 2Hd), as Li & Malik. Optionally a
*truncated* state with the same block layout and a shorter history ``lqr_history`` < H: the last
``lqr_history`` entries of every history block. Why offer it: the LQR costs O(dX^3) per step and
condition and dX = 233 for the 2016 logistic regression at H = 25, which is minutes per iteration
on two CPU cores; with ``lqr_history = 3`` dX = 35 and the whole loop runs in seconds. The policy
always sees the full observation (so it runs in the env as registered); only the local
controllers, the dynamics they plan with, and the policy's linearisation live in the shorter
state. ``lqr_history = H`` (the default) is exactly the authors' setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from optenv.core import StateLayout

__all__ = ["HeavyBall", "LQRStateMap", "LinearGaussianController", "momentum_controller"]


class LQRStateMap:
    """Which coordinates of the full state form the LQR state (same block order, history h).

    Args:
        layout: the full state's layout (d, H).
        lqr_history: h, 1 <= h <= H.
    """

    def __init__(self, layout: StateLayout, lqr_history: int) -> None:
        if not isinstance(lqr_history, int) or not 1 <= lqr_history <= layout.history:
            raise ValueError(f"lqr_history: got {lqr_history!r}, allowed: an int in "
                             f"[1, {layout.history}] (the env's history)")
        self.full = layout
        self.layout = StateLayout(layout.d, lqr_history)
        d, H, h = layout.d, layout.history, lqr_history
        sl = layout.state_slices
        parts = [
            torch.arange(sl["CUR_LOC"].start, sl["CUR_LOC"].stop),
            torch.arange(sl["PAST_OBJ_VAL_DELTAS"].stop - h, sl["PAST_OBJ_VAL_DELTAS"].stop),
            torch.arange(sl["PAST_GRADS"].stop - h * d, sl["PAST_GRADS"].stop),
            torch.arange(sl["CUR_GRAD"].start, sl["CUR_GRAD"].stop),
            torch.arange(sl["PAST_LOC_DELTAS"].stop - h * d, sl["PAST_LOC_DELTAS"].stop),
        ]
        self.index = torch.cat(parts)
        self.identity = h == H
        assert self.index.numel() == self.layout.state_dim

    @property
    def dim(self) -> int:
        """dX of the LQR state."""
        return self.layout.state_dim

    def __call__(self, state: Tensor) -> Tensor:
        """The LQR state of full states [..., dX_full] -> [..., dX]."""
        if self.identity:
            return state
        return state[..., self.index.to(state.device)]

    def core_index(self) -> Tensor:
        """Indices (in the LQR state) of s = [CUR_LOC (d), CUR_GRAD (d), newest objective delta]:
        the only coordinates whose transition is not a known shift (see gps.model)."""
        sl = self.layout.state_slices
        return torch.cat([
            torch.arange(sl["CUR_LOC"].start, sl["CUR_LOC"].stop),
            torch.arange(sl["CUR_GRAD"].start, sl["CUR_GRAD"].stop),
            torch.tensor([sl["PAST_OBJ_VAL_DELTAS"].stop - 1]),
        ])


@dataclass
class LinearGaussianController:
    """u_t ~ N(K_t z_t + k_t, covar_t) for M conditions: K [M,T,dU,dX], k [M,T,dU],
    covar [M,T,dU,dU]. ``inv_covar`` and ``chol`` are derived (precision for the policy's
    precision-weighted loss, Cholesky factor for sampling)."""

    K: Tensor
    k: Tensor
    covar: Tensor

    @property
    def chol(self) -> Tensor:
        return torch.linalg.cholesky(self.covar)

    @property
    def inv_covar(self) -> Tensor:
        return torch.cholesky_inverse(self.chol)

    def mean(self, z: Tensor) -> Tensor:
        """Mean actions at LQR states z [M,N,T,dX] -> [M,N,T,dU]."""
        return torch.einsum("mtux,mntx->mntu", self.K, z) + self.k[:, None]

    def act(self, z: Tensor, t: int, noise: Tensor, chol: Tensor | None = None) -> Tensor:
        """Actions at step t for states z [M,N,dX] with standard-normal noise [M,N,dU]
        (``chol``: :attr:`chol`, precomputed by callers that act at every step)."""
        chol = self.chol if chol is None else chol
        mean = torch.einsum("mux,mnx->mnu", self.K[:, t], z) + self.k[:, t, None]
        return mean + torch.einsum("muv,mnv->mnu", chol[:, t], noise)

    def where(self, keep: Tensor, other: LinearGaussianController) -> LinearGaussianController:
        """Per condition: this controller where ``keep`` [M] is False, ``other`` where True."""
        return LinearGaussianController(
            torch.where(keep[:, None, None, None], other.K, self.K),
            torch.where(keep[:, None, None], other.k, self.k),
            torch.where(keep[:, None, None, None], other.covar, self.covar))

    def state_dict(self) -> dict[str, Tensor]:
        return {"K": self.K.cpu(), "k": self.k.cpu(), "covar": self.covar.cpu()}

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], device: torch.device | str,
                        dtype: torch.dtype) -> LinearGaussianController:
        return cls(*(sd[k].to(device=device, dtype=dtype) for k in ("K", "k", "covar")))


def momentum_controller(smap: LQRStateMap, M: int, T: int, lr: float, momentum: float,
                        variance: float = 0.01, *, dtype: torch.dtype = torch.float64,
                        device: torch.device | str = "cpu") -> LinearGaussianController:
    """Heavy-ball momentum as a time-varying linear-Gaussian controller (Li & Malik's init).

    Δx_t = −lr·g_t + momentum·Δx_{t−1}: g_t is CUR_GRAD and Δx_{t−1} the newest PAST_LOC_DELTAS
    entry (zero at the start, as torch's momentum buffer), so K is exact and k = 0; the
    covariance is ``variance``·I (0.01, the authors').
    """
    lay = smap.layout
    d, dX = lay.d, lay.state_dim
    sl = lay.state_slices
    K = torch.zeros(dX, dtype=dtype, device=device).repeat(d, 1)
    eye = torch.eye(d, dtype=dtype, device=device)
    K[:, sl["CUR_GRAD"]] = -lr * eye
    K[:, sl["PAST_LOC_DELTAS"].stop - d:sl["PAST_LOC_DELTAS"].stop] = momentum * eye
    K = K.expand(M, T, d, dX).clone()
    k = torch.zeros(M, T, d, dtype=dtype, device=device)
    covar = (variance * eye).expand(M, T, d, d).clone()
    return LinearGaussianController(K, k, covar)


class HeavyBall:
    """Heavy-ball momentum as a batched direct optimiser, to tune the initial controller.

    ``torch.optim.SGD(lr, momentum)``'s update (b = μb + g, Δx = −lr·b, rows with a non-finite f
    or ∇f step zero) with ``lr`` and ``momentum`` numbers or per-row [B] tensors, so
    :func:`optenv.tuning.search_grid` scores a whole (lr, momentum) grid in one batch. It is the
    rule :func:`momentum_controller` encodes; GPS tunes it here rather than through the
    baselines package, which GPS does not depend on.
    """

    def __init__(self, lr: float | Tensor, momentum: float | Tensor) -> None:
        self.lr, self.momentum = lr, momentum
        self.buf: Tensor | None = None

    def reset(self) -> None:
        self.buf = None

    def propose(self, x: Tensor, f: Tensor, g: Tensor, oracle: object = None) -> Tensor:
        ok = (torch.isfinite(f) & torch.isfinite(g).all(-1)).unsqueeze(-1)
        g = torch.where(ok, g, torch.zeros_like(g))
        if self.buf is None or self.buf.shape != g.shape:
            self.buf = torch.zeros_like(g)
        lr, mu = (v.to(g).reshape(-1, 1) if isinstance(v, Tensor) else v
                  for v in (self.lr, self.momentum))
        self.buf = self.buf * mu + g
        return torch.where(ok, -lr * self.buf, torch.zeros_like(g))
