"""Coordinate-group GPS (Li & Malik 2017, §3): per-coordinate local models, group-shared.

The flat agent (:mod:`gps.agent`) plans in the whole state, so its LQR costs O(dX³) with
dX ≈ 2Hd and its policy is tied to d. Li & Malik's second paper makes GPS scale by imposing the
structure of a coordinatewise optimiser on every local model:

* **State.** Coordinate j's LQR state z_j is the 2016 state of a one-variable problem: its
  iterate value x_j, the shared objective changes and its own past gradients, current gradient
  and past steps (the last ``lqr_history`` of each: ``StateLayout(1, h)``, dX = 3h + 2). It is
  coordinate j's feature row, truncated, plus x_j: the controllers may see x, the policy does
  not (it reads the full row, :meth:`~optenv.core.StateLayout.coordinatewise`). dU = 1.
* **Controllers.** u_j ~ N(K z_j + k, S) per condition, time step and coordinate: one
  :class:`~gps.controller.LinearGaussianController` of batch P = M·d (condition-major), solved
  by ONE call of :func:`gps.lqr.kl_constrained_lqr` on the P small problems, each with its own
  eta. Each coordinate's KL bound is ``kl_step · step_mult[m]`` per step (so a condition's total
  KL is d times the flat agent's for the same ``kl_step``).
* **Dynamics** per (condition, group, time step), shared by the group's coordinates: the flat
  agent's :func:`gps.model.fit_dynamics` in the d = 1 state, fed the group's N·|g| coordinate
  trajectories as if they were samples (pooled: far more samples per fit than the flat
  setting's N), with ONE GMM prior per group, over all conditions' transitions of the group's
  coordinates (warm-started per group), fitted on at most ``gmm_max_samples`` of each
  condition's pooled coordinate trajectories (evenly spaced; the reference code's GMM prior
  likewise keeps at most 20 trajectories). Why the cap: EM over every pooled transition grows
  with d and was 634 of the 768 s of one iteration at d = 1000 (10 conditions, 5 samples).
  The initial-state distribution is per coordinate (x_j differs).
* **Cost** of coordinate j: the exact local quadratic of f along x_j at the sampled mean of the
  next iterate, f/d + g_j (y_j − ȳ_j) + ½ H_jj (y_j − ȳ_j)², with H_jj the family's Hessian
  diagonal for d <= ``hessian_exact_max`` and above it a Hutchinson estimate
  E[v ⊙ Hv] (Rademacher v, ``hessian_probes`` of them, Hv by central differences of ∇f: two
  gradient calls per probe, whatever d). ``cost_hessian="psd"`` clips H_jj at 0.

What the block-diagonal approximation drops: (1) cross-coordinate curvature, the off-diagonal
H_ij: each coordinate plans as if the others stayed where they are, which overestimates how far
a coordinate may move when coordinates are strongly coupled; (2) the coupling through the
shared objective features: the objective changes in every row depend on all coordinates' steps,
but each coordinate's dynamics explain them from its own (x_j, g_j, u_j) only, so what the other
coordinates do is in the fitted noise; (3) within a group, one linear model for all
coordinates: their differences live in the per-coordinate states, not in the dynamics.

BADMM and MDGPS are the flat agent's (:class:`gps.agent.GPSAgent`, whose hooks this class
overrides): one Bregman weight ν and one dual λ per (condition, group, time step), expanded to
the group's coordinates for the LQR and updated from the group-mean KL and agreement gap. The
policy is a :class:`~optenv.policy.CoordinatewisePolicy` (MLP), trained by the flat agent's
precision-weighted regression (:func:`gps.policy_fit.train_policy`) on (row_j, kind_j) → u_j
pairs pooled over conditions, samples, steps and coordinates; its linearisation per coordinate
is its Jacobian with respect to the row, at the sampled mean row, mapped onto the LQR state's
columns (zero on x_j; the row's older history, outside the truncated LQR state, is held at its
mean and folded into k), with the policy's per-kind variance as covariance.

Feature sets (``config.features``): the LQR state is defined on the 2016 state only (its
dynamics are known shifts of the histories), so the samples keep each coordinate's full 2016
row, and the policy reads the rows of the configured set computed from it at each iteration t
(:meth:`CoordinatewiseGPSAgent.policy_rows`). That is exact because every named set is
elementwise: coordinate j's row is the set's row of the one-variable state that is j's 2016
row. Li & Malik 2017's policy read Ψ (``li-malik-2017-psi``); the linearisation then goes
through the feature map by autograd (Ψ is a nonlinear function of the row).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gps.agent import GPSAgent, SampleBatch
from gps.config import GPSConfig
from gps.controller import LinearGaussianController, LQRStateMap
from gps.dynamics import LinearGaussianDynamics
from gps.gmm import GMM
from gps.model import (
    QuadraticCost,
    data_by_iteration,
    expected_cost,
    fit_dynamics,
    quadratic_in_state,
)
from gps.policy_fit import train_policy
from optenv.core import StateLayout
from optenv.distributed import Shard, World
from optenv.families.base import ObjectiveFamily
from optenv.features import check_features
from optenv.policy import CoordinatewisePolicy, save_coordinatewise_policy

__all__ = ["CoordinatewiseGPSAgent", "coordinate_states", "hessian_diagonal",
           "policy_state_columns"]


def coordinate_states(layout: StateLayout, state: Tensor, h: int) -> Tensor:
    """Per-coordinate LQR states [..., d, 3h+2] of full states [..., dX]: for each coordinate j
    the one-variable 2016 state (``StateLayout(1, h)``'s order) x_j, the last h objective
    changes, its last h gradients, its current gradient, its last h steps."""
    u = layout.unpack(state)
    lead, d = state.shape[:-1], layout.d
    return torch.cat([
        u["CUR_LOC"][..., None],
        u["PAST_OBJ_VAL_DELTAS"][..., -h:].unsqueeze(-2).expand(*lead, d, h),
        u["PAST_GRADS"][..., -h:, :].transpose(-1, -2),
        u["CUR_GRAD"][..., None],
        u["PAST_LOC_DELTAS"][..., -h:, :].transpose(-1, -2),
    ], dim=-1)


def policy_state_columns(history: int, h: int) -> tuple[Tensor, Tensor]:
    """(z columns, row columns): where each entry of the truncated LQR state z_j (history h)
    sits in coordinate j's full 2016 row (history H); x_j (z column 0) is in no row."""
    H = history
    z_cols = torch.arange(1, 3 * h + 2)
    row_cols = torch.cat([torch.arange(H - h, H), torch.arange(2 * H - h, 2 * H),
                          torch.tensor([2 * H]), torch.arange(3 * H + 1 - h, 3 * H + 1)])
    return z_cols, row_cols


def hessian_diagonal(family: ObjectiveFamily, y: Tensor, data: Mapping[str, Tensor], *,
                     exact_max: int = 64, probes: int = 8, seed: int = 0,
                     eps: float = 1e-4, shard: Shard | None = None) -> Tensor:
    """diag ∇²f at points y [B,d]: exact (the family's Hessian) for d <= ``exact_max``; else
    Hutchinson's E[v ⊙ Hv] over ``probes`` Rademacher vectors v (a generator seeded with
    ``seed``: deterministic, no shared RNG stream), Hv = (∇f(y+εv) − ∇f(y−εv)) / 2ε with
    ε = ``eps``·max(1, |y|∞) per point. Why Hutchinson: the exact Hessian is d² per point
    (at d = 1000 and M·T = 3600 points, 29 GB) and a finite-difference diagonal needs 2d
    gradients; the estimate needs 2·probes whatever d, and is exact for a diagonal Hessian.
    ``shard``: the points are this rank's share of a batch split across processes (equal
    blocks per condition); the probes are drawn for the whole batch and this rank's kept."""
    B, d = y.shape
    if d <= exact_max:
        return torch.diagonal(family.hessian(y, data), dim1=-2, dim2=-1).detach()
    gen = torch.Generator().manual_seed(seed)
    scale = eps * y.abs().amax(-1, keepdim=True).clamp_min(1.0)
    est = torch.zeros_like(y)
    rows = B if shard is None else B // shard.count * shard.total
    for _ in range(probes):
        v = torch.randint(0, 2, (rows, d), generator=gen)
        v = ((v if shard is None else shard.take(v)) * 2 - 1).to(y)
        _f1, g1 = family.value_and_grad(y + scale * v, data)
        _f2, g2 = family.value_and_grad(y - scale * v, data)
        est += v * (g1 - g2).detach() / (2 * scale)
    return est / probes


class _RowRegressor(nn.Module):
    """A :class:`CoordinatewisePolicy` seen by :func:`gps.policy_fit.train_policy` as a flat
    regressor: inputs [R, k+1] = (row, kind index), outputs [R, 1]. Shares its parameters."""

    def __init__(self, policy: CoordinatewisePolicy) -> None:
        super().__init__()
        self.policy = policy

    @property
    def mean_net(self) -> nn.Sequential:
        return self.policy.mean_net

    @property
    def log_std(self) -> nn.Parameter:
        return self.policy.log_std

    def forward(self, x: Tensor) -> Tensor:
        k = self.policy.width
        mean, _ = self.policy(x[:, None, :k], x[:, k:].round().long())
        return mean


class CoordinatewiseGPSAgent(GPSAgent):
    """GPS with per-coordinate, group-shared local models (module docstring), training a
    :class:`~optenv.policy.CoordinatewisePolicy`. Arguments as :class:`gps.agent.GPSAgent`.

    Tensors of the LQR's problems are condition-major: problem p = m·d + j.
    """

    def __init__(self, family: ObjectiveFamily, config: GPSConfig, *, history: int = 25,
                 max_step: float = 1.0, device: str | torch.device = "cpu",
                 world: World | None = None) -> None:
        self.groups = tuple(family.coordinate_groups())
        self.features = check_features(config.features)
        if history < self.features.min_history:
            raise ValueError(f"history: got {history} for features {self.features.name!r}, "
                             f"allowed: >= {self.features.min_history}")
        self.row_layout = StateLayout(1, history)  # coordinate j's 2016 row as a d = 1 state
        self.width = self.features.width(history)
        super().__init__(family, config, history=history, max_step=max_step, device=device,
                         world=world)
        M, T, d, G = self.n_conditions, config.horizon, family.d, len(self.groups)
        self.h = history if config.lqr_history is None else config.lqr_history
        self.smap = LQRStateMap(StateLayout(1, history), self.h)  # the d = 1 LQR state
        self.n_problems, self.dU = M * d, 1
        dt, dev = self.dtype, self.device
        self.group_of = torch.empty(d, dtype=torch.int64)
        for gi, g in enumerate(self.groups):
            self.group_of[g.index] = gi
        self.group_of = self.group_of.to(dev)
        sizes = torch.bincount(self.group_of, minlength=G).to(dt)
        # [G, d]: the group mean of per-coordinate values (the adjoint of the expansion)
        self.group_mean = (nn.functional.one_hot(self.group_of, G).T.to(dt) / sizes[:, None])
        self.kinds = self.policy.kind_index(self.groups).to(dev)  # [d]
        self.eta = torch.ones(M * d, dtype=dt, device=dev)
        self.lam_k = torch.zeros(M, G, T, 1, dtype=dt, device=dev)
        self.nu = torch.full((M, G, T), config.init_pol_wt, dtype=dt, device=dev)
        self.gmm_groups: list[GMM | None] = [None] * G

    # ----------------------------------------------------------------------------- hooks
    def _make_policy(self) -> CoordinatewisePolicy:
        return CoordinatewisePolicy(self.width, self.features.name, self.cfg.policy_hidden,
                                    init_std=math.sqrt(self.cfg.init_var))

    def _per_problem(self, x: Tensor) -> Tensor:
        return x.repeat_interleave(self.family.d, 0)

    def _conditions_of(self, mask: Tensor) -> Tensor:
        return mask.reshape(-1, self.family.d).any(1)

    def _expand(self, dual: Tensor) -> Tensor:
        M, d = self.n_conditions, self.family.d
        return dual[:, self.group_of].reshape(M * d, *dual.shape[2:])

    def _reduce(self, x: Tensor) -> Tensor:
        M, d = self.n_conditions, self.family.d
        return torch.einsum("gd,md...->mg...", self.group_mean, x.reshape(M, d, *x.shape[1:]))

    def _problem_kinds(self) -> Tensor:
        return self.kinds.repeat(self.n_conditions)  # [P]

    def policy_rows(self, rows: Tensor) -> Tensor:
        """The policy's feature rows [..., T, width] of sampled 2016 rows [..., T, 3H+1], the
        last-but-one axis being the iteration t = 0..T-1 (differentiable)."""
        T = rows.shape[-2]
        t = torch.arange(T, device=rows.device)
        return self.features.rows(self.row_layout, rows, t)[..., 0, :]

    def _policy_means(self, batch: SampleBatch) -> Tensor:
        P, N, T, _k = batch.obs.shape
        k = self.width
        kinds = self._problem_kinds()[:, None].expand(P, N * T).reshape(-1, 1)
        rows = self.policy_rows(batch.obs).reshape(-1, 1, k)
        with torch.no_grad():
            out = torch.cat([self.policy(rows[i:i + 65536], kinds[i:i + 65536])[0]
                             for i in range(0, rows.shape[0], 65536)])
        return out.to(self.dtype).reshape(P, N, T, 1)

    def _action_variance(self) -> Tensor:
        return self.policy.variance(self._problem_kinds()).detach().to(self.dtype)[:, None, None]

    def _act(self, state: Tensor, t: int) -> Tensor:
        lay = self.core.layout
        rows = self.features.rows(lay, lay.observation(state), t)
        return self.policy(rows.to(torch.float32), self.kinds)[0].to(self.dtype)

    def _controller_shape(self) -> tuple[int, int, int, int]:
        return (self.n_problems, self.cfg.horizon, 1, self.smap.dim)

    def save_policy(self, path: str, extra: dict[str, Any]) -> None:
        """Write the policy (:func:`optenv.policy.save_coordinatewise_policy`); ``extra`` gets
        the feature set and the training family's groups."""
        save_coordinatewise_policy(path, self.policy, extra={
            **extra, "features": self.features.name,
            "groups": [[g.name, g.size, g.kind] for g in self.groups]})

    def _sample_row_width(self) -> int:
        """Each run stores a 2016 row (3H + 1) per coordinate per iteration."""
        return self.family.d * self.row_layout.obs_dim

    def _estimate(self, model: Mapping[str, Any], ctrl: LinearGaussianController) -> Tensor:
        """Expected cost [M]: the sum of the condition's coordinates' expected costs."""
        per = expected_cost(model["cost"], model["dyn"], ctrl.K, ctrl.k, ctrl.covar)
        return per.reshape(self.n_conditions, -1).sum(1)

    # ----------------------------------------------------------------------------- sampling
    # GPSAgent.sample runs the REAL optimisation: at every step all d coordinates of a run act
    # at once through their own controllers on the shared core; these two hooks extract the
    # per-coordinate trajectories (Z [P,N,T,dX], U [P,N,T,1], obs: full rows, float32,
    # [P,N,T,k]) and assemble the runs' steps.
    def _sample_inputs(self, state: Tensor) -> tuple[Tensor, Tensor]:
        lay = self.core.layout
        rows = lay.coordinatewise(lay.observation(state), observation=True)
        return (self._by_problem(coordinate_states(lay, state, self.h)),
                self._by_problem(rows.to(torch.float32)))

    def _by_problem(self, x: Tensor) -> Tensor:
        """[M·N, d, ...] (runs) → [P, N, ...] (problems)."""
        M, N, d = self.n_conditions, self.cfg.samples, self.family.d
        x = x.reshape(M, N, d, *x.shape[2:]).transpose(1, 2)
        return x.reshape(M * d, N, *x.shape[3:])

    def _joint_step(self, u: Tensor) -> Tensor:
        M, N, d = self.n_conditions, self.cfg.samples, self.family.d
        return u.reshape(M, d, N).transpose(1, 2).reshape(M * N, d)

    # ----------------------------------------------------------------------------- models
    def _fit_models(self, batch: SampleBatch, times: dict[str, float]
                    ) -> tuple[LinearGaussianDynamics, QuadraticCost, Tensor]:
        """Dynamics per (condition, group) from the group's pooled coordinate trajectories,
        expanded to the group's coordinates; the per-coordinate cost. Returns also the fits'
        relative residual [M] (mean over groups)."""
        import time

        cfg = self.cfg
        t0 = time.perf_counter()
        dyn, residual = self.fit_group_dynamics(batch.Z, batch.U)
        t0 = self._tick(times, "dynamics", t0)
        cost = self.coordinate_cost(batch.Z, batch.U, hessian=cfg.cost_hessian)
        self._tick(times, "cost", t0)
        return dyn, cost, residual

    def fit_group_dynamics(self, Z: Tensor, U: Tensor) -> tuple[LinearGaussianDynamics, Tensor]:
        """Z [P,N,T,dX], U [P,N,T,1] → per-problem dynamics (shared within each group of each
        condition) and the residual [M]. Each group's GMM prior warm-starts from its last fit."""
        cfg = self.cfg
        M, d = self.n_conditions, self.family.d
        _P, N, T, dX = Z.shape
        Zc, Uc = Z.reshape(M, d, N, T, dX), U.reshape(M, d, N, T, 1)
        fits, residuals = [], []
        for gi, g in enumerate(self.groups):
            idx = g.index.to(Z.device)
            pooled = g.size * N
            few = torch.linspace(0, pooled - 1, min(pooled, cfg.gmm_max_samples)).round().long()
            dyn_g, res_g, self.gmm_groups[gi] = fit_dynamics(
                Zc[:, idx].reshape(M, g.size * N, T, dX), Uc[:, idx].reshape(M, g.size * N, T, 1),
                self.smap, reg=cfg.dynamics_reg, max_clusters=cfg.gmm_clusters,
                min_samples_per_cluster=cfg.gmm_min_samples, strength=cfg.prior_strength,
                gmm_iters=cfg.gmm_iters, generator=self.gen_gmm, init=self.gmm_groups[gi],
                shared_prior=True, prior_samples=few, shard=self.shard)
            fits.append(dyn_g)
            residuals.append(res_g)

        def per_problem(name: str) -> Tensor:
            stacked = torch.stack([getattr(f, name) for f in fits], 1)  # [M,G,...]
            return stacked[:, self.group_of].reshape(M * d, *stacked.shape[2:])

        x0 = Z[:, :, 0]
        var = x0.var(1, unbiased=False).clamp_min(1e-6)
        dyn = LinearGaussianDynamics(per_problem("Fm"), per_problem("fv"),
                                     per_problem("dyn_covar"), x0.mean(1), torch.diag_embed(var))
        return dyn, torch.stack(residuals, 1).mean(1)

    def coordinate_cost(self, Z: Tensor, U: Tensor, *, hessian: str = "exact") -> QuadraticCost:
        """Each coordinate's local quadratic of f along x_j (module docstring) at the sampled
        mean of the next iterate; c0 = f/d, so a condition's coordinates sum to f there."""
        M, d, T = self.n_conditions, self.family.d, Z.shape[2]
        y = (Z[..., 0] + U[..., 0]).mean(1)  # [P,T]
        flat = y.reshape(M, d, T).transpose(1, 2).reshape(M * T, d)
        rep = data_by_iteration(self.family, self.data, T)  # minibatch t + 1 at step t
        f, g = self.family.value_and_grad(flat, rep)
        Hd = hessian_diagonal(self.family, flat, rep, exact_max=self.cfg.hessian_exact_max,
                              probes=self.cfg.hessian_probes,
                              seed=self.cfg.seed * 1000003 + self.iteration_count,
                              shard=self.shard)
        if hessian == "psd":
            Hd = Hd.clamp_min(0.0)

        def per_problem(x: Tensor) -> Tensor:  # [M·T, d] -> [P, T]
            return x.detach().reshape(M, T, d).transpose(1, 2).reshape(M * d, T)

        fj = (f.detach() / d).reshape(M, T).repeat_interleave(d, 0)
        return quadratic_in_state(fj, per_problem(g)[..., None],
                                  per_problem(Hd)[..., None, None], y[..., None],
                                  self.smap.layout.state_slices["CUR_LOC"], self.smap.dim)

    # ----------------------------------------------------------------------------- policy
    def _train(self, batch: SampleBatch, target: Tensor, prec: Tensor, weight: Tensor) -> float:
        """Precision-weighted regression of the policy on (row_j, kind_j) → target_j, pooled
        over conditions, samples, steps and coordinates; per-kind variances from the mean
        precision of each kind's rows."""
        P, N, T, _k = batch.obs.shape
        k = self.width
        obs = self.policy_rows(batch.obs)
        good = ~self._per_problem(batch.bad)  # [P]
        if not self.obs_scaled:
            self._scale_observations(obs[good], 3)
        kinds = self._problem_kinds()
        inp = torch.cat([obs, kinds.to(obs)[:, None, None, None].expand(P, N, T, 1)], -1)
        w = torch.where(good[:, None], weight, torch.zeros_like(weight))
        loss = train_policy(
            _RowRegressor(self.policy), self.optimizer, inp.reshape(-1, k + 1),
            target.reshape(-1, 1), prec[:, None].expand(P, N, T, 1, 1).reshape(-1, 1, 1),
            w[:, None].expand(P, N, T).reshape(-1), steps=self.cfg.policy_steps,
            batch_size=self.cfg.policy_batch, generator=self.gen_policy, shard=self.shard)
        used = w > 0  # [P,T]
        with torch.no_grad():
            for ki in range(len(self.policy.kinds)):
                sel = used & (kinds == ki)[:, None]
                mean_prec = self._mean_across_ranks(prec[..., 0, 0][sel])
                if mean_prec is not None:
                    var = 1.0 / mean_prec.clamp_min(1e-12)
                    self.policy.log_std[ki] = 0.5 * torch.log(var).to(self.policy.log_std)
        return loss

    def _linearise(self, batch: SampleBatch, pol_mu: Tensor) -> LinearGaussianController:
        """π(u|z_j) ≈ N(K z_j + k, var_kind) per problem and step: the policy's Jacobian at the
        sampled mean row on the LQR state's columns (0 on x_j), k matching the policy's mean
        at the mean state."""
        P, _N, T, k = batch.obs.shape
        rows = batch.obs.mean(1).detach().requires_grad_(True)  # [P,T,k]: 2016 rows
        kinds = self._problem_kinds()[:, None].expand(P, T).reshape(-1, 1)
        with torch.enable_grad():
            feats = self.policy_rows(rows).reshape(P * T, 1, self.width)
            out, _ = self.policy(feats, kinds)
            (J,) = torch.autograd.grad(out.sum(), rows)
        z_cols, row_cols = policy_state_columns(self.core.layout.history, self.h)
        K = torch.zeros(P, T, 1, self.smap.dim, dtype=self.dtype, device=self.device)
        K[..., z_cols] = J.reshape(P, T, 1, k)[..., row_cols].to(self.dtype)
        zbar = batch.Z.mean(1)  # [P,T,dX]
        kk = out.detach().to(self.dtype).reshape(P, T, 1) - (K @ zbar[..., None]).squeeze(-1)
        var = self._action_variance()  # [P,1,1]
        return LinearGaussianController(K, kk, var[:, :, :, None].expand(P, T, 1, 1).clone())

    # ----------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The flat agent's state plus the per-group GMM priors."""
        state = super().state_dict()
        state["gmm_groups"] = [None if g is None else {"mu": g.mu.cpu(), "sigma": g.sigma.cpu(),
                                                        "logmass": g.logmass.cpu()}
                               for g in self.gmm_groups]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; ValueError if it does not fit this configuration."""
        groups = state.get("gmm_groups")
        if not isinstance(groups, list) or len(groups) != len(self.groups):
            raise ValueError("checkpoint: does not fit this run (no per-group GMM priors for "
                             f"{len(self.groups)} groups: not a coordinatewise GPS checkpoint)")
        super().load_state_dict(state)
        dev, dt = self.device, self.dtype
        self.gmm_groups = [None if g is None else GMM(**{n: v.to(dev, dt) for n, v in g.items()})
                           for g in groups]
