"""The Guided Policy Search agent: BADMM (Li & Malik's variant) and mirror-descent GPS.

One GPS iteration, every per-condition computation batched over the M conditions:

1. **Sample** N trajectories per condition from its linear-Gaussian controller, all M·N runs in
   one batched rollout on :class:`optenv.core.OptimizationCore` (the env's own arithmetic).
2. **Fit dynamics** (:func:`gps.model.fit_dynamics`, GMM/NIW prior) and **expand the cost**
   (:func:`gps.model.expand_cost`: f's exact gradient and Hessian at the sampled means; the
   quick preset clips the Hessian's negative eigenvalues to 0).
3. **Adapt the step size** per condition from predicted vs actual improvement (Levine & Abbeel
   2014, as the reference code's ``_stepadjust``): ``mult = pred / (2 max(1e-4, pred − actual))``
   clipped to [0.1, 5], ``step_mult`` kept in [min_step_mult, max_step_mult], and the LQR's KL
   bound is ``kl_step · step_mult``.
4. **BADMM** (Levine et al. 2016; Li & Malik used 4 inner iterations, policy_dual_rate 0.2): per
   inner iteration, train the policy on the controllers' dual-adjusted actions, linearise it,
   take the dual steps (λ on the mean actions: ``λ_t −= rate · ν_t · P_t · mean(u_traj − u_pol)``;
   on the last inner iteration the per-step KL weights ``ν_t ← max(ν_t + lg_step · KL_t, 0)``),
   and re-solve the KL-constrained LQR with the KL-to-policy and Lagrange terms, KL measured to
   the controller that produced the samples.
   **MDGPS** (Montgomery & Levine 2016): linearise the policy, solve the LQR with the policy's
   linearisation as the KL anchor (C-step), train the policy on the new controllers (S-step).

Numerical failures (diverged samples, non-finite fits, LQR statuses) are reported per condition
in the iteration's ``failures``; such a condition keeps its previous controller and is left out of
the policy's training data for that iteration, and the run goes on.

All randomness comes from three ``torch.Generator`` s (sampling, GMM initialisation, policy
minibatches) whose states are in :meth:`GPSAgent.state_dict`, so a resumed run repeats the
uninterrupted one exactly on the same machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gps.config import ALGORITHMS, GPSConfig  # GPSConfig is declared there; re-exported
from gps.controller import (
    HeavyBall,
    LinearGaussianController,
    LQRStateMap,
    momentum_controller,
)
from gps.dynamics import LinearGaussianDynamics
from gps.gmm import GMM
from gps.lqr import LagrangeTerm, LQRResult, LQRStatus, PolicyTerm, kl_constrained_lqr
from gps.model import QuadraticCost, expand_cost, expected_cost, fit_dynamics
from gps.policy_fit import linearise_policy, policy_means, train_policy
from optenv.core import OptimizationCore
from optenv.distributed import Shard, World, all_gather_objects, sum_across
from optenv.families.base import ObjectiveFamily
from optenv.policy import GaussianMLPPolicy, save_policy
from optenv.tuning import search_grid
from optenv.validation import parse_device

__all__ = ["ALGORITHMS", "GPSAgent", "GPSConfig", "SampleBatch", "replace_bad_samples"]

#: Samples whose |state| exceeds this are treated as diverged (the GMM and fits need sane data).
SAMPLE_LIMIT = 1e8


@dataclass
class SampleBatch:
    """One iteration's samples: Z [M,N,T,dX] LQR states, U [M,N,T,dU] actions, obs [M,N,T,obs_dim]
    full observations (policy inputs), F [M,N,T] objective after each step, bad [M] conditions
    with a diverged sample (their data are replaced by finite copies)."""

    Z: Tensor
    U: Tensor
    obs: Tensor
    F: Tensor
    bad: Tensor


class GPSAgent:
    """A GPS run on M training conditions of a family.

    Args:
        family: the objective family (any :class:`~optenv.families.base.ObjectiveFamily`).
        config: the hyper-parameters.
        history: the env's history H (the policy's observation is the env's).
        max_step: the env's max_step (the policy's mean is clipped to ±max_step when its cost on
            the conditions is measured, as the env does).
        device: where everything runs.
        world: the processes this run is split across (:mod:`optenv.distributed`; default one).
            Each rank holds the conditions ``rank, rank + size, ...`` (its :attr:`shard`):
            sampling, model fits, LQR, duals and step sizes are per condition and stay on
            their rank; the policy trains on every rank's samples (:func:`train_policy` with
            the shard), the report and the checkpoint (:meth:`full_state_dict`) gather. Every
            random draw is made for the whole batch and each rank keeps its rows, so the
            generators stay in step and a split run computes what one process would, to
            rounding.

    Call :meth:`initialise` (grid-searches the momentum controller) or
    :meth:`load_state_dict`, then :meth:`iteration` repeatedly.
    """

    def __init__(self, family: ObjectiveFamily, config: GPSConfig, *, history: int = 25,
                 max_step: float = 1.0, device: str | torch.device = "cpu",
                 world: World | None = None) -> None:
        self.family, self.cfg = family, config
        self.shard = Shard(world or World(), config.conditions)
        if config.conditions < self.shard.world.size:
            raise ValueError(f"--conditions: got {config.conditions} for a run across "
                             f"{self.shard.world.size} processes, allowed: at least one "
                             f"condition per process (>= {self.shard.world.size})")
        self.device = parse_device(device)
        self.dtype = torch.float64
        self.core = OptimizationCore(family, history)
        lqr_h = history if config.lqr_history is None else config.lqr_history
        self.smap = LQRStateMap(self.core.layout, lqr_h)
        self.max_step = float(max_step)
        #: this rank's conditions (all of them in one process)
        self.n_conditions = M = self.shard.count
        T, d = config.horizon, family.d
        seeds = self.shard.take(torch.arange(config.seed, config.seed + config.conditions,
                                             dtype=torch.int64))
        self.data, self.x0 = family.sample(seeds, split="train", dtype=self.dtype,
                                           device=self.device)
        self.gen_sample = torch.Generator().manual_seed(config.seed * 3 + 1)
        self.gen_gmm = torch.Generator().manual_seed(config.seed * 3 + 2)
        self.gen_policy = torch.Generator().manual_seed(config.seed * 3 + 3)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        self.policy = self._make_policy().to(self.device)
        torch.random.set_rng_state(torch_state)
        self.policy.eval()
        # capturable on CUDA: the policy's Adam steps then run as CUDA graphs (train_policy)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.policy_lr,
                                          weight_decay=config.policy_weight_decay,
                                          capturable=self.device.type == "cuda")
        self.iteration_count = 0
        #: the LQR's batch (this rank's): one problem per condition here, per (condition,
        #: coordinate) in gps.coordinatewise
        self.n_problems = M
        self.dU = d  # the controllers' action size: the whole step here, 1 per coordinate there
        self.obs_scaled = False
        self.ctrl: LinearGaussianController | None = None
        dt, dev = self.dtype, self.device
        self.eta = torch.ones(M, dtype=dt, device=dev)
        self.step_mult = torch.ones(M, dtype=dt, device=dev)
        self.lam_k = torch.zeros(M, T, d, dtype=dt, device=dev)
        self.nu = torch.full((M, T), config.init_pol_wt, dtype=dt, device=dev)
        self.prev: dict[str, Any] | None = None
        self._lqr_evaluations = 0  # this iteration's backward+forward passes, for the report
        self.init_info: dict[str, Any] = {}
        # the GMM priors' last mixtures: each fit warm-starts from the previous one
        self.gmm_dyn: GMM | None = None
        self.gmm_pol: GMM | None = None

    # ----------------------------------------------------------------------------- hooks
    # What the coordinatewise agent (gps.coordinatewise) changes: the policy class, and how the
    # per-condition quantities (step sizes, failures) and the duals (nu, lambda) map to the LQR's
    # problems. Here there is one problem per condition and the maps are identities.
    def _make_policy(self) -> Any:
        """The global policy (built under the run's seed)."""
        return GaussianMLPPolicy(self.core.layout.obs_dim, self.family.d, self.cfg.policy_hidden,
                                 init_std=math.sqrt(self.cfg.init_var))

    def _per_problem(self, x: Tensor) -> Tensor:
        """A per-condition tensor [M, ...] for each LQR problem."""
        return x

    def _conditions_of(self, mask: Tensor) -> Tensor:
        """[M] bool: the conditions any of whose problems is set in ``mask`` [P]."""
        return mask

    def _expand(self, dual: Tensor) -> Tensor:
        """A dual variable (nu [M,T] or lambda [M,T,dU]) for each LQR problem."""
        return dual

    def _reduce(self, x: Tensor) -> Tensor:
        """Per-problem values [P,T,...] in the duals' shape (the adjoint of :meth:`_expand`)."""
        return x

    def _policy_means(self, batch: SampleBatch) -> Tensor:
        """The policy's mean actions at the samples, [P,N,T,dU]."""
        return policy_means(self.policy, batch.obs.to(torch.float32)).to(self.dtype)

    def _action_variance(self) -> Tensor:
        """The policy's action variance, broadcastable to [P,T,dU]."""
        return self.policy.variance.detach().to(self.dtype)

    def _act(self, state: Tensor, t: int) -> Tensor:
        """The policy's mean step [B,d] at full states [B,dX] of iteration ``t``."""
        obs = self.core.layout.observation(state).to(torch.float32)
        return self.policy(obs).to(self.dtype)

    def _controller_shape(self) -> tuple[int, int, int, int]:
        """K's shape (P, T, dU, dX), checked when a checkpoint is loaded."""
        return (self.n_conditions, self.cfg.horizon, self.family.d, self.smap.dim)

    def save_policy(self, path: str, extra: dict[str, Any]) -> None:
        """Write the policy (:func:`optenv.policy.save_policy`) with ``extra`` metadata."""
        save_policy(path, self.policy, extra=extra)

    def _sample_row_width(self) -> int:
        """Float32 numbers a sample stores per run and iteration for the policy (its input)."""
        return self.core.layout.obs_dim

    def memory_bytes(self) -> int:
        """Bytes this rank's iteration holds at least, from shapes alone (nothing allocated).

        Counted: the samples (LQR states and actions of every problem, the policy inputs and
        the list of per-iteration pieces they are stacked from: twice), and the per-problem,
        per-iteration matrices of the models and the controller — the dynamics F [dX, dX+dU]
        and its covariance, the cost's [dX+dU]² Hessian, the gains K and the action
        covariances. The GMM's and the LQR's scratch is not counted, so the true peak is
        higher: a configuration refused by this lower bound cannot run.
        """
        P, N, T = self.n_problems, self.cfg.samples, self.cfg.horizon
        dX, dU, f64 = self.smap.dim, self.dU, 8
        runs = self.n_conditions * N
        samples = 2 * T * (P * N * (dX + dU) * f64 + runs * self._sample_row_width() * 4)
        per_step = dX * (dX + dU) + dX * dX + (dX + dU) ** 2 + dU * dX + 2 * dU * dU
        return samples + P * T * per_step * f64

    def check_memory(self) -> None:
        """ValueError naming the flags to lower when :meth:`memory_bytes` cannot fit in the
        device's free memory (before a run folder is touched; a run that would be killed by
        the out-of-memory killer half an hour in is refused at once)."""
        from optenv.memory import check_fits

        cfg = self.cfg
        check_fits(self.memory_bytes(), self.device,
                   f"GPS on d = {self.family.d} with --conditions {cfg.conditions}, --samples "
                   f"{cfg.samples}, --horizon {cfg.horizon}, an LQR state of {self.smap.dim} "
                   f"(--lqr-history) and {self.n_problems} LQR problems on this process",
                   smaller="--conditions, --samples, --horizon or --lqr-history")

    # ----------------------------------------------------------------------------- setup
    def initialise(self) -> dict[str, Any]:
        """Initial controllers: the best momentum (lr, momentum) on the training conditions."""
        cfg = self.cfg
        t0 = time.perf_counter()
        res = search_grid(lambda h: HeavyBall(h["lr"], h["momentum"]),
                          {"lr": cfg.momentum_lr_grid, "momentum": cfg.momentum_grid},
                          self.family, method="momentum", defaults={"lr": 0.1, "momentum": 0.9},
                          n_train=cfg.conditions, horizon=cfg.horizon, seed=cfg.seed,
                          history=self.core.layout.history, device=self.device)
        lr, mom = float(res.best["lr"]), float(res.best["momentum"])
        self.ctrl = momentum_controller(self.smap, self.n_problems, cfg.horizon, lr, mom,
                                        cfg.init_var, dtype=self.dtype, device=self.device)
        self.init_info = {"momentum_lr": lr, "momentum": mom, "momentum_score": res.score,
                          "seconds": time.perf_counter() - t0}
        return self.init_info

    # ----------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, ctrl: LinearGaussianController) -> SampleBatch:
        """N noisy runs per condition of ``ctrl``, all M·N in one batched rollout; the runs'
        LQR states, actions and observations come from :meth:`_sample_inputs` and
        :meth:`_joint_step` (per condition here, per coordinate in gps.coordinatewise)."""
        M, N, T = self.n_conditions, self.cfg.samples, self.cfg.horizon
        P = self.n_problems
        data = {k: v.repeat_interleave(N, 0) for k, v in self.data.items()}
        x0 = self.x0.repeat_interleave(N, 0)
        step = self.core.start(data, x0)
        state, f = step.state, step.f
        diverged = step.diverged.clone()
        # drawn for every rank's problems, this rank's kept (the draws of one process)
        noise = torch.randn(T, P // M * self.shard.total, N, self.dU, generator=self.gen_sample,
                            dtype=self.dtype)
        noise = self.shard.take(noise, dim=1).to(self.device)
        chol = ctrl.chol
        Zs, Us, Os, Fs = [], [], [], []
        for t in range(T):
            z, obs = self._sample_inputs(state)
            u = ctrl.act(z, t, noise[t], chol)
            Zs.append(z)
            Us.append(u)
            Os.append(obs)
            step = self.core.step(data, state, f, self._joint_step(u))
            state, f = step.state, step.f
            diverged |= step.diverged
            Fs.append(f.reshape(M, N))
        Z, U, obs = torch.stack(Zs, 2), torch.stack(Us, 2), torch.stack(Os, 2)
        F = torch.stack(Fs, 2)
        bad_s = diverged.reshape(M, N) | ~torch.isfinite(F).all(-1)
        for X in (Z, U, obs):
            bad_s |= ~(X.abs() < SAMPLE_LIMIT).reshape(M, P // M, N, -1).all(-1).all(1)
        bad = bad_s.any(1)
        if bool(bad.any()):
            replace_bad_samples(bad_s, [(X, P // M) for X in (Z, U, obs)] + [(F, 1)])
        return SampleBatch(Z, U, obs, F, bad)

    def _sample_inputs(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """The LQR states [P,N,dX] and policy observations [P,N,...] of the runs' full states
        [M·N, dX_full] (sample-major within a condition)."""
        M, N = self.n_conditions, self.cfg.samples
        return (self.smap(state).reshape(M, N, -1),
                self.core.layout.observation(state).reshape(M, N, -1))

    def _joint_step(self, u: Tensor) -> Tensor:
        """The controllers' actions [P,N,dU] as the runs' steps [M·N, d]."""
        return u.reshape(self.n_conditions * self.cfg.samples, self.family.d)

    @torch.no_grad()
    def policy_cost(self, data: Mapping[str, Tensor] | None = None,
                    x0: Tensor | None = None, horizon: int | None = None) -> Tensor:
        """Mean f over iterations 1..T of the policy's mean (clipped to ±max_step, as in the
        env) on the training conditions (or on ``data``, ``x0``): [M], +inf where it diverged."""
        data = self.data if data is None else data
        x0 = self.x0 if x0 is None else x0
        T = self.cfg.horizon if horizon is None else horizon
        step = self.core.start(data, x0)
        state, f = step.state, step.f
        alive = ~step.diverged
        total = torch.zeros_like(f)
        for t in range(T):
            u = self._act(state, t).clamp(-self.max_step, self.max_step)
            u = torch.where(alive[:, None], u, torch.zeros_like(u))
            step = self.core.step(data, state, f, u)
            alive &= ~step.diverged
            state, f = step.state, step.f
            total = total + torch.where(alive, f, torch.zeros_like(f))
        return torch.where(alive, total / T, torch.full_like(total, math.inf))

    # ----------------------------------------------------------------------------- pieces
    def _lqr(self, dyn: LinearGaussianDynamics, cost: QuadraticCost,
             prev: LinearGaussianController, kl_step: Tensor, *,
             policy: PolicyTerm | None = None, lagrange: LagrangeTerm | None = None
             ) -> LQRResult:
        """The KL-constrained LQR, warm-started from last solve's eta; counts its passes."""
        res = kl_constrained_lqr(dyn, cost, prev, kl_step, eta0=self.eta.clamp(1e-8, 1e16),
                                 policy=policy, lagrange=lagrange,
                                 max_iter=self.cfg.lqr_max_iter)
        self._lqr_evaluations += res.n_evaluations
        return res

    def _train(self, batch: SampleBatch, target: Tensor, prec: Tensor, weight: Tensor) -> float:
        """Train the policy on per-sample targets [M,N,T,dU], precisions [M,T,dU,dU] and
        weights [M,T] (bad conditions get weight 0)."""
        M, N, T, dU = target.shape
        if not self.obs_scaled:
            self._scale_observations(batch.obs[~batch.bad], 3)
        w = torch.where(batch.bad[:, None], torch.zeros_like(weight), weight)
        return train_policy(
            self.policy, self.optimizer, batch.obs.reshape(-1, batch.obs.shape[-1]),
            target.reshape(-1, dU),
            prec[:, None].expand(M, N, T, dU, dU).reshape(-1, dU, dU),
            w[:, None].expand(M, N, T).reshape(-1),
            steps=self.cfg.policy_steps, batch_size=self.cfg.policy_batch,
            generator=self.gen_policy, shard=self.shard)

    def _mean_across_ranks(self, x: Tensor) -> Tensor | None:
        """The mean of every rank's values ``x`` [n] together; None where there are none."""
        world = self.shard.world
        if not world.distributed:
            return x.mean() if x.numel() else None
        n = sum_across(torch.tensor(float(x.numel()), dtype=x.dtype, device=x.device), world)
        return sum_across(x.sum(), world) / n if bool(n > 0) else None

    def _scale_observations(self, rows: Tensor, dims: int) -> None:
        """Set the policy's input scale to 1 / the root mean square of the good samples'
        observations ``rows`` (the first ``dims`` dimensions are samples; every rank's
        together), once per run."""
        world = self.shard.world
        if not world.distributed:
            rms = rows.pow(2).mean(tuple(range(dims))).sqrt() if rows.numel() else \
                torch.ones(rows.shape[-1], dtype=self.dtype)
        else:
            n = sum_across(torch.tensor(rows.shape[:dims].numel(), dtype=rows.dtype,
                                        device=rows.device), world)
            sq = sum_across(rows.pow(2).sum(tuple(range(dims))), world)
            rms = (sq / n).sqrt() if bool(n > 0) else torch.ones(rows.shape[-1],
                                                                  dtype=self.dtype)
        self.policy.obs_scale.copy_((1.0 / rms.clamp_min(1e-3)).to(self.policy.obs_scale))
        self.obs_scaled = True

    def _linearise(self, batch: SampleBatch, pol_mu: Tensor) -> LinearGaussianController:
        """The policy's linear-Gaussian fit at the samples (its GMM warm-started)."""
        cfg = self.cfg
        pol_var = self.policy.variance.detach().to(self.dtype)
        lin, self.gmm_pol = linearise_policy(
            batch.Z, pol_mu, pol_var, max_clusters=cfg.gmm_clusters,
            min_samples_per_cluster=cfg.gmm_min_samples, strength=cfg.prior_strength,
            gmm_iters=cfg.gmm_iters, generator=self.gen_gmm, init=self.gmm_pol, shard=self.shard)
        return lin

    def _policy_kl(self, traj: LinearGaussianController, batch: SampleBatch,
                   pol_mu: Tensor) -> Tensor:
        """Per-step KL(traj || policy) at the samples, averaged over samples: [M,T]."""
        dU = pol_mu.shape[-1]
        diff = pol_mu - traj.mean(batch.Z)  # [M,N,T,dU]
        var = self._action_variance()  # [dU], or [P,1,dU]: per problem
        tr = (torch.diagonal(traj.covar, dim1=-2, dim2=-1) / var).sum(-1)  # [M,T]
        logdet_pol = torch.log(var).sum(-1)
        logdet_traj = torch.logdet(traj.covar)
        quad = (diff.pow(2) / var.reshape(*var.shape[:-2], 1, *var.shape[-2:])).sum(-1).mean(1)
        return 0.5 * (tr - dU + logdet_pol - logdet_traj + quad)

    def _estimate(self, model: Mapping[str, Any], ctrl: LinearGaussianController) -> Tensor:
        """Expected cost [M] of ``ctrl`` under ``model``."""
        return expected_cost(model["cost"], model["dyn"], ctrl.K, ctrl.k, ctrl.covar)

    def _step_adjust(self, cur: Mapping[str, Any], anchor_now: LinearGaussianController
                     ) -> None:
        """Levine & Abbeel's step-size rule from predicted vs actual improvement (per
        condition). ``prev`` holds the expected costs, under last iteration's model, of the
        controller (BADMM) or policy linearisation (MDGPS) it started from and of the controller
        it produced; ``anchor_now`` is this iteration's counterpart of that start (the sampling
        controller for BADMM, the new policy linearisation for MDGPS)."""
        prev = self.prev
        assert prev is not None
        prev_laplace, pred_laplace = prev["anchor_cost"], prev["result_cost"]
        actual_laplace = self._estimate(cur, anchor_now)
        pred = prev_laplace - pred_laplace
        actual = prev_laplace - actual_laplace
        mult = pred / (2.0 * torch.clamp(pred - actual, min=1e-4))
        mult = mult.nan_to_num(0.1).clamp(0.1, 5.0)
        new = (mult * self.step_mult).clamp(self.cfg.min_step_mult, self.cfg.max_step_mult)
        ok = torch.isfinite(pred) & torch.isfinite(actual)
        self.step_mult = torch.where(ok, new, self.step_mult)

    # ----------------------------------------------------------------------------- iteration
    def iteration(self) -> dict[str, Any]:
        """Run one GPS iteration; returns its report row.

        Steps, each timed into its ``t_*`` column: sample the current controllers; fit the
        local models; update controllers and policy (BADMM or MDGPS); keep the previous
        controller wherever something failed; measure the policy and report.
        """
        if self.ctrl is None:
            raise RuntimeError("GPSAgent.initialise() or load_state_dict() must come first")
        t_start = time.perf_counter()
        # the order of these keys is the order of the t_* columns in log.csv
        times = dict.fromkeys(("sampling", "dynamics", "cost", "lqr", "policy", "linearise"), 0.0)
        self._lqr_evaluations = 0
        t0 = time.perf_counter()
        batch = self.sample(self.ctrl)
        self._tick(times, "sampling", t0)
        dyn, cost, residual = self._fit_models(batch, times)
        cur = {"dyn": dyn, "cost": cost}
        bad = batch.bad.clone()
        bad |= ~torch.isfinite(dyn.Fm).reshape(bad.shape[0], -1).all(1)
        bad |= ~torch.isfinite(cost.Cm).reshape(bad.shape[0], -1).all(1)
        statuses: list[Tensor] = []
        new, res, pol_kl, anchor = self._update(batch, cur, statuses, times)
        bad = self._accept(new, anchor, cur, bad)
        return self._report(batch, res, pol_kl, residual, bad, statuses, times, t_start)

    def _fit_models(self, batch: SampleBatch, times: dict[str, float]
                    ) -> tuple[LinearGaussianDynamics, QuadraticCost, Tensor]:
        """This iteration's local models from its samples: the dynamics (GMM prior
        warm-started from the last fit) with their relative residual [M], and the cost."""
        cfg = self.cfg
        t0 = time.perf_counter()
        dyn, residual, self.gmm_dyn = fit_dynamics(
            batch.Z, batch.U, self.smap, reg=cfg.dynamics_reg, max_clusters=cfg.gmm_clusters,
            min_samples_per_cluster=cfg.gmm_min_samples, strength=cfg.prior_strength,
            gmm_iters=cfg.gmm_iters, generator=self.gen_gmm, init=self.gmm_dyn, shard=self.shard)
        t0 = self._tick(times, "dynamics", t0)
        cost = expand_cost(self.family, self.data, batch.Z, batch.U, self.smap,
                           hessian=cfg.cost_hessian)
        self._tick(times, "cost", t0)
        return dyn, cost, residual

    def _update(self, batch: SampleBatch, cur: dict[str, Any], statuses: list[Tensor],
                times: dict[str, float]
                ) -> tuple[LinearGaussianController, LQRResult, Tensor,
                           LinearGaussianController]:
        """The algorithm's step: new controllers, the last LQR result, the per-step KL to the
        policy, and the anchor whose expected cost the next step-size update compares (the
        sampling controllers for BADMM, the policy's linearisation for MDGPS). The LQR
        statuses are appended to ``statuses``."""
        dyn, cost = cur["dyn"], cur["cost"]
        sampler = self.ctrl
        assert sampler is not None
        if self.cfg.algorithm == "badmm":
            if self.prev is not None:
                self._step_adjust(cur, sampler)
            new, res, pol_kl, t_extra = self._badmm(batch, dyn, cost, statuses)
            anchor = sampler
        else:
            new, res, pol_kl, anchor, t_extra = self._mdgps(batch, dyn, cost, statuses, cur)
        for k, v in t_extra.items():
            times[k] += v
        return new, res, pol_kl, anchor

    def _accept(self, new: LinearGaussianController, anchor: LinearGaussianController,
                cur: dict[str, Any], bad: Tensor) -> Tensor:
        """Adopt the new controllers, except where a condition had a problem (``bad``, or a
        non-finite new controller: it keeps the sampling one); remember what the next
        step-size update needs; count the iteration. Returns the updated ``bad`` [M]."""
        sampler = self.ctrl
        assert sampler is not None
        bad = bad | ~torch.isfinite(new.K).reshape(bad.shape[0], -1).all(1)
        new = new.where(self._per_problem(bad), sampler)
        # what the next step-size update needs from this iteration's model: two costs [M]
        # (keeping the model itself would hold GBs at the authors' sizes, in every checkpoint)
        self.prev = {"anchor_cost": self._estimate(cur, anchor),
                     "result_cost": self._estimate(cur, new)}
        self.ctrl = new
        self.iteration_count += 1
        return bad

    def _report(self, batch: SampleBatch, res: LQRResult, pol_kl: Tensor, residual: Tensor,
                bad: Tensor, statuses: list[Tensor], times: dict[str, float], t_start: float
                ) -> dict[str, Any]:
        """The iteration's row: the policy's cost on the training conditions (timed as
        "policy"), the samples' cost, the LQR's and the models' diagnostics, the failures."""
        t0 = time.perf_counter()
        pcost = self.policy_cost()
        self._tick(times, "policy", t0)
        # every rank's conditions, in the batch's order (across processes: gathered)
        g = self._gathered(F=batch.F, sample_bad=batch.bad, pcost=pcost, kl=res.kl,
                           pol_kl=pol_kl, eta=res.eta, step_mult=self.step_mult, nu=self.nu,
                           residual=residual, converged=res.converged, bad=bad,
                           **{f"status{i}": st for i, st in enumerate(statuses)})
        failures = self._failures(g["sample_bad"], [g[f"status{i}"]
                                                    for i in range(len(statuses))], g["bad"])
        finite_pc = g["pcost"][torch.isfinite(g["pcost"])]
        return {
            "iteration": self.iteration_count,
            "sampled_cost": float(g["F"][~g["sample_bad"]].mean())
            if bool((~g["sample_bad"]).any()) else math.nan,
            "policy_cost": float(finite_pc.mean()) if finite_pc.numel() else math.nan,
            "policy_diverged": int((~torch.isfinite(g["pcost"])).sum()),
            "kl": float((g["kl"] / self.cfg.horizon).mean()),
            "policy_kl": float(g["pol_kl"].mean()),
            "eta": float(g["eta"].log().mean().exp()),
            "step_mult": float(g["step_mult"].mean()),
            "nu": float(g["nu"].mean()),
            "dyn_residual": float(g["residual"].mean()),
            "lqr_converged": float(g["converged"].double().mean()),
            # the batched LQR's passes: the slowest rank's
            "lqr_evaluations": max(all_gather_objects(self._lqr_evaluations, self.shard.world)),
            "bad_conditions": int(g["bad"].sum()),
            "wall_s": time.perf_counter() - t_start,
            **{f"t_{k}": v for k, v in times.items()},
            "failures": failures,
        }

    def _gathered(self, **tensors: Tensor) -> dict[str, Tensor]:
        """Per-condition tensors (batched over this rank's conditions or problems) with every
        rank's rows, in the batch's order; the tensors themselves in one process."""
        return {k: self.shard.gather(v) for k, v in tensors.items()}

    def _failures(self, sample_bad: Tensor, statuses: list[Tensor], bad: Tensor) -> str:
        """'kind: conditions; ...' for every numerical problem of this iteration."""
        parts = []
        if bool(sample_bad.any()):
            parts.append(f"diverged samples: {sample_bad.nonzero().flatten().tolist()}")
        serious = (LQRStatus.MAX_ITER_KL_ABOVE, LQRStatus.PD_FAILURE, LQRStatus.NONFINITE_INPUT,
                   LQRStatus.BAD_PREV_COVAR, LQRStatus.BAD_POLICY_COVAR)
        for code in serious:
            conds = sorted({int(i) for s in statuses
                            for i in self._conditions_of(s == int(code)).nonzero()
                            .flatten().tolist()})
            if conds:
                parts.append(f"LQR {code.name}: {conds}")
        other = bad & ~sample_bad
        if bool(other.any()):
            parts.append(f"kept previous controller: {other.nonzero().flatten().tolist()}")
        return "; ".join(parts)

    def _badmm(self, batch: SampleBatch, dyn: LinearGaussianDynamics, cost: QuadraticCost,
               statuses: list[Tensor]) -> tuple[LinearGaussianController, Any, Tensor,
                                                dict[str, float]]:
        cfg = self.cfg
        sampler = self.ctrl
        assert sampler is not None
        traj = sampler
        kl_step = self._per_problem(cfg.kl_step * self.step_mult)
        times = {"lqr": 0.0, "policy": 0.0, "linearise": 0.0}
        res = None
        pol_kl = torch.zeros_like(self._expand(self.nu))
        for inner in range(cfg.inner_iterations):
            t0 = time.perf_counter()
            started = self.iteration_count > 0 or inner > 0
            if started:
                prec = traj.inv_covar
                # policy step's minimiser for λ^T E_pi[u] + ν KL(pi || p): μ_p − S λ / ν. (The
                # reference code multiplies by ν instead, marked "TODO: divide" there; that makes
                # the dual step's effect grow as ν², and it diverged in our runs.)
                nu = self._expand(self.nu)
                adj = (traj.covar @ self._expand(self.lam_k)[..., None]).squeeze(-1)
                adj = adj / nu.clamp_min(1e-8)[..., None]
                target = traj.mean(batch.Z) - adj[:, None]
                self._train(batch, target, prec, nu)
            t0 = self._tick(times, "policy", t0)
            pol_mu = self._policy_means(batch)
            pol_lin = self._linearise(batch, pol_mu)
            pol_kl = self._policy_kl(traj, batch, pol_mu)
            if started:
                gap = (traj.mean(batch.Z) - pol_mu).mean(1)  # [M,T,dU]
                step = (traj.inv_covar @ gap[..., None]).squeeze(-1)
                step = self._reduce(step)
                self.lam_k = self.lam_k - cfg.policy_dual_rate * self.nu[..., None] * step
                if inner == cfg.inner_iterations - 1:
                    self.nu = (self.nu + cfg.lg_step * self._reduce(pol_kl)).clamp_min(0.0)
            t0 = self._tick(times, "linearise", t0)
            res = self._lqr(dyn, cost, sampler, kl_step,
                            policy=PolicyTerm(pol_lin, self._expand(self.nu)),
                            lagrange=LagrangeTerm(k=self._expand(self.lam_k)))
            statuses.append(res.status)
            self.eta = res.eta
            traj = LinearGaussianController(res.K, res.k, res.pol_covar)
            self._tick(times, "lqr", t0)
        return traj, res, pol_kl, times

    def _mdgps(self, batch: SampleBatch, dyn: LinearGaussianDynamics, cost: QuadraticCost,
               statuses: list[Tensor], cur: dict[str, Any]
               ) -> tuple[LinearGaussianController, Any, Tensor, LinearGaussianController,
                          dict[str, float]]:
        cfg = self.cfg
        sampler = self.ctrl
        assert sampler is not None
        times = {"lqr": 0.0, "policy": 0.0, "linearise": 0.0}
        ones = torch.ones_like(self._expand(self.nu))
        t0 = time.perf_counter()
        if self.iteration_count == 0:  # catch the policy up with the initial controllers
            self._train(batch, sampler.mean(batch.Z), sampler.inv_covar, ones)
        t0 = self._tick(times, "policy", t0)
        pol_mu = self._policy_means(batch)
        pol_lin = self._linearise(batch, pol_mu)
        t0 = self._tick(times, "linearise", t0)
        if self.prev is not None:
            self._step_adjust(cur, pol_lin)
        res = self._lqr(dyn, cost, pol_lin, self._per_problem(cfg.kl_step * self.step_mult))
        statuses.append(res.status)
        self.eta = res.eta
        traj = LinearGaussianController(res.K, res.k, res.pol_covar)
        t0 = self._tick(times, "lqr", t0)
        self._train(batch, traj.mean(batch.Z), traj.inv_covar, ones)
        pol_mu = self._policy_means(batch)
        pol_kl = self._policy_kl(traj, batch, pol_mu)
        self._tick(times, "policy", t0)
        return traj, res, pol_kl, pol_lin, times

    @staticmethod
    def _tick(times: dict[str, float], key: str, t0: float) -> float:
        now = time.perf_counter()
        times[key] += now - t0
        return now

    # ----------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (CPU tensors, RNG states included)."""
        assert self.ctrl is not None
        prev = None if self.prev is None else {k: v.cpu() for k, v in self.prev.items()}
        return {
            "iteration": self.iteration_count,
            "obs_scaled": self.obs_scaled,
            "ctrl": self.ctrl.state_dict(),
            "eta": self.eta.cpu(), "step_mult": self.step_mult.cpu(),
            "lam_k": self.lam_k.cpu(), "nu": self.nu.cpu(),
            "prev": prev,
            "policy": {k: v.cpu() for k, v in self.policy.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": {"sample": self.gen_sample.get_state(), "gmm": self.gen_gmm.get_state(),
                    "policy": self.gen_policy.get_state()},
            "init_info": dict(self.init_info),
            "gmm": {k: None if g is None else {"mu": g.mu.cpu(), "sigma": g.sigma.cpu(),
                                               "logmass": g.logmass.cpu()}
                    for k, g in (("dyn", self.gmm_dyn), ("pol", self.gmm_pol))},
        }

    def full_state_dict(self) -> dict[str, Any]:
        """:meth:`state_dict` with every rank's conditions, in the batch's order, on every rank
        (a collective across processes; :meth:`state_dict` itself in one process): the same
        layout as one process's, which is what a run's checkpoint holds. The rest of the state
        (policy, Adam, generators, GMM warm starts shared by all conditions) is the same on
        every rank."""
        return _map_conditions(self.state_dict(), self.shard.gather)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` or :meth:`full_state_dict` (this rank keeps its
        conditions: a checkpoint resumes on any number of processes); ValueError if it does
        not fit this configuration."""
        dev, dt = self.device, self.dtype
        try:
            try:
                state = _map_conditions(state, self.shard.take)
            except ValueError as err:  # not batched over this run's conditions
                raise ValueError(f"checkpoint: does not fit this run ({err})") from err
            ctrl = LinearGaussianController.from_state_dict(state["ctrl"], dev, dt)
            M, T, dU, dX = ctrl.K.shape
            want = self._controller_shape()
            if (M, T, dU, dX) != want:
                raise ValueError(f"controllers have shape {(M, T, dU, dX)}, this run needs "
                                 f"{want}")
            self.policy.load_state_dict(state["policy"])
            self.optimizer.load_state_dict(state["optimizer"])
            _optimizer_to_device(self.optimizer, self.device)
            self.ctrl = ctrl
            self.iteration_count = int(state["iteration"])
            self.obs_scaled = bool(state["obs_scaled"])
            self.eta = state["eta"].to(dev, dt)
            self.step_mult = state["step_mult"].to(dev, dt)
            self.lam_k = state["lam_k"].to(dev, dt)
            self.nu = state["nu"].to(dev, dt)
            self.prev = _load_prev(state["prev"], self._estimate, dev, dt)
            self.gen_sample.set_state(state["rng"]["sample"])
            self.gen_gmm.set_state(state["rng"]["gmm"])
            self.gen_policy.set_state(state["rng"]["policy"])
            self.init_info = dict(state.get("init_info", {}))
            gmms = state.get("gmm") or {}  # absent in checkpoints from before warm starts
            self.gmm_dyn, self.gmm_pol = (
                None if gmms.get(k) is None else GMM(**{n: v.to(dev, dt)
                                                         for n, v in gmms[k].items()})
                for k in ("dyn", "pol"))
        except (KeyError, TypeError, RuntimeError, AttributeError) as err:
            raise ValueError(f"checkpoint: does not fit this run ({err!r})") from err


#: The entries of :meth:`GPSAgent.state_dict` batched over the conditions (or their problems):
#: the ones a run across processes gathers into its checkpoint and shards again on loading.
PER_CONDITION = ("ctrl", "eta", "step_mult", "lam_k", "nu", "prev", "gmm")


def _map_conditions(state: Mapping[str, Any], fn: Callable[[Tensor], Tensor]
                    ) -> dict[str, Any]:
    """``state`` with ``fn`` applied to every tensor of its :data:`PER_CONDITION` entries."""

    def walk(value: Any) -> Any:
        if isinstance(value, Tensor):
            return fn(value)
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        return value

    return {k: walk(v) if k in PER_CONDITION else v for k, v in state.items()}


def replace_bad_samples(bad_s: Tensor, tensors: list[tuple[Tensor, int]]) -> None:
    """In place: each bad sample (``bad_s`` [M,N]) of each tensor, given with its number c of
    problems per condition (layout [M·c, N, ...]), becomes its condition's first good sample,
    or zeros where a condition has none (the fits and the GMM need finite data)."""
    M, N = bad_s.shape
    good_first = torch.argmax((~bad_s).to(torch.int64), dim=1)  # [M]
    any_good = (~bad_s).any(1)
    for X, c in tensors:
        V = X.view(M, c, N, *X.shape[2:])
        src = V[torch.arange(M, device=X.device), :, good_first]  # [M,c,...]
        src = torch.where(any_good.reshape(M, *([1] * (src.dim() - 1))), src,
                          torch.zeros_like(src))
        mask = bad_s.reshape(M, 1, N, *([1] * (V.dim() - 3)))
        V.copy_(torch.where(mask, src[:, :, None].expand_as(V), V))


def _optimizer_to_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make a loaded Adam capturable exactly on CUDA, wherever its checkpoint was written: its
    step counters live on the parameters' device when capturable and on the CPU otherwise."""
    capturable = device.type == "cuda"
    for group in optimizer.param_groups:
        group["capturable"] = capturable
    for st in optimizer.state.values():
        if "step" in st:
            st["step"] = st["step"].to(device if capturable else "cpu", torch.float32)


def _load_prev(prev: Mapping[str, Any] | None,
               estimate: Callable[[Mapping[str, Any], LinearGaussianController], Tensor],
               dev: torch.device, dt: torch.dtype) -> dict[str, Tensor] | None:
    """A checkpoint's ``prev``: the two expected costs, or (checkpoints written before
    2026-11-27) last iteration's model and controllers, from which they are computed."""
    if prev is None:
        return None
    if "dyn" not in prev:
        return {k: prev[k].to(dev, dt) for k in ("anchor_cost", "result_cost")}
    model = {"dyn": LinearGaussianDynamics(**{k: v.to(dev, dt) for k, v in prev["dyn"].items()}),
             "cost": QuadraticCost(**{k: v.to(dev, dt) for k, v in prev["cost"].items()})}
    return {f"{k}_cost": estimate(model, LinearGaussianController.from_state_dict(prev[k], dev, dt))
            for k in ("anchor", "result")}
