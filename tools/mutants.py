"""The hand-written mutant table of ``python -m tools.mutation_test``.

Each mutant is a realistic bug in a core module — one a reviewer could miss — given as the exact
original snippet (it must occur once in its file), the mutated snippet, and the test files (or
node ids) that should kill it. Why hand-written rather than mutmut's operator mutants: most
operator mutants of numerical code are either trivially caught or equivalent (a sign flip of a
zero, ``<`` for ``<=`` on a measure-zero tie), and running every test per mutant does not fit
two cores; a table of bugs that matter, each run against the tests that own the module, does.

Add a row whenever a bug reaches review: the table is the record of what the suite must catch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MUTANTS", "Mutant"]


@dataclass(frozen=True)
class Mutant:
    """One bug: ``original`` replaced by ``mutated`` in ``path``; ``tests`` should fail."""

    id: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]
    why: str


_CORE = ("tests/optenv/test_features_on_signed_objectives.py", "tests/optenv/test_env_spaces.py",
         "tests/optenv/test_env_divergence.py", "tests/optenv/test_core_layout.py")
_VECTOR = ("tests/optenv/test_vector_autoreset.py", "tests/optenv/test_vector_step_outputs.py",
           "tests/optenv/test_vector_reset.py", "tests/optenv/test_vector_actions.py")
_RNG = ("tests/optenv/test_rng.py", "tests/optenv/test_env_seeding.py")
_FAMILIES = ("tests/optenv/test_families.py",
             "tests/optenv/test_vector_matches_single_for_every_seed.py")
_GPS_STEPS = ("tests/gps/test_badmm_mdgps_steps.py",)
_BPTT = ("tests/baselines/test_bptt_meta_loss.py", "tests/baselines/test_bptt.py")
_OPTIMIZERS = ("tests/baselines/test_cg_and_line_search_formulas.py",
               "tests/baselines/test_optimizers.py")
_METRICS = ("tests/optenv/test_evaluate.py",)

MUTANTS: tuple[Mutant, ...] = (
    # ------------------------------------------------------------------ optenv/core.py
    Mutant("core-abs-f-prev", "optenv/core.py",
           "denom = torch.where(f_prev < 0, -mag, mag)", "denom = mag", _CORE,
           "relative change divided by |f_prev| instead of f_prev (issue 20)"),
    Mutant("core-no-delta-floor", "optenv/core.py",
           "mag = f_prev.abs().clamp_min(DELTA_EPS)", "mag = f_prev.abs()", _CORE,
           "no floor on |f_prev|: f = 0 gives an infinite change"),
    Mutant("core-history-shift", "optenv/core.py",
           "return [deltas[:, 1:], rel, grads", "return [deltas[:, :-1], rel, grads",
           _CORE, "the objective history shifts the wrong way"),
    Mutant("core-start-grad-zero", "optenv/core.py",
           "return [g.new_zeros(g.shape[0], h + h * d), g, g.new_zeros",
           "return [g.new_zeros(g.shape[0], h + h * d), torch.zeros_like(g), g.new_zeros",
           _CORE, "CUR_GRAD left zero at x(0)"),
    Mutant("core-divergence-ignores-x", "optenv/core.py",
           "return ~((f.abs() < STATE_LIMIT) & (x.abs() < STATE_LIMIT).all(-1))",
           "return ~(f.abs() < STATE_LIMIT)", _CORE,
           "a runaway iterate with a finite f is not divergence"),
    # ------------------------------------------------------------------ optenv/history.py
    Mutant("history-push-newest-slot", "optenv/history.py",
           "slot = self.order[:1]", "slot = self.order[-1:]",
           ("tests/optenv/test_history.py", *_VECTOR),
           "the vector env's rings overwrite the newest entry instead of the oldest"),
    # ------------------------------------------------------------------ optenv/vector.py
    Mutant("vector-next-step-resets-at-once", "optenv/vector.py",
           "self._resetting.copy_(self._needs_reset)",
           "self._resetting.copy_(terminated | truncated)", _VECTOR,
           "NEXT_STEP restarts an env on the step it ends (its last obs is lost)"),
    Mutant("vector-truncate-late", "optenv/vector.py",
           "truncated = (t >= self.max_episode_steps) & ~terminated",
           "truncated = (t > self.max_episode_steps) & ~terminated", _VECTOR,
           "episodes one step longer than the horizon"),
    Mutant("vector-no-divergence-penalty", "optenv/vector.py",
           "reward = torch.where(terminated, torch.full_like(res.f, -self.divergence_penalty), "
           "-res.f)", "reward = -res.f", _VECTOR,
           "a diverged env's reward is −f (non-finite) instead of the penalty"),
    Mutant("vector-same-seed-every-env", "optenv/vector.py",
           "[int(seed) + i for i in range(n)]", "[int(seed) for i in range(n)]", _VECTOR,
           "every env gets seed s instead of s + i"),
    Mutant("vector-autoreset-same-episode", "optenv/vector.py",
           "self._episodes.add_(mask.to(torch.int64))",
           "self._episodes.add_(0 * mask.to(torch.int64))", _VECTOR,
           "an autoreset replays the episode it just ended"),
    Mutant("vector-no-clip", "optenv/vector.py",
           "clipped_a = a.clamp(-1.0, 1.0)", "clipped_a = a", _VECTOR,
           "actions outside [-1, 1] are not clipped"),
    # ------------------------------------------------------------------ optenv/rng.py
    Mutant("rng-split-bit-dropped", "optenv/rng.py",
           "hi = (b & 0x7FFFFFFF) | (lane << 31)", "hi = b & 0x7FFFFFFF", _RNG,
           "train and test keys no longer in disjoint halves"),
    Mutant("rng-episode-ignored", "optenv/rng.py",
           "a = hash32(s_lo ^ hash32(e_lo + _GOLDEN * (lane + 1)))",
           "a = hash32(s_lo ^ hash32(_GOLDEN * (lane + 1)))", _RNG,
           "every episode of a seed draws the same instance"),
    Mutant("rng-one-stream", "optenv/rng.py",
           "self._stream += 1", "self._stream += 0", _RNG,
           "every draw of an instance reuses the same stream"),
    Mutant("rng-box-muller-variance", "optenv/rng.py",
           "torch.sqrt(-2.0 * torch.log(u1))", "torch.sqrt(-torch.log(u1))", _RNG,
           "normal draws with variance 1/2"),
    # ------------------------------------------------------------------ optenv/families
    Mutant("lr-bias-gradient-mean", "optenv/families/logistic_regression.py",
           "r.sum(-1, keepdim=True)", "r.mean(-1, keepdim=True)", _FAMILIES,
           "LogisticRegression's bias gradient divided by n twice"),
    Mutant("lr-position-dependent-kernels", "optenv/families/logistic_regression.py",
           "from optenv.families.batch_invariant import sigmoid, softplus",
           "from torch import sigmoid\nfrom torch.nn.functional import softplus", _FAMILIES,
           "torch's sigmoid/softplus: f depends on the batch position (one ulp)"),
    Mutant("quadratic-gradient-not-of-f", "optenv/families/quadratic.py",
           'g = torch.einsum("bij,bj->bi", data["A"], r)',
           'g = torch.einsum("bij,bj->bi", data["A"], r) + 0.01 * r', _FAMILIES,
           "Quadratic's gradient not the derivative of its f"),
    Mutant("robust-gradient-sign", "optenv/families/robust_regression.py",
           "return f, torch.cat([gw, -dr.sum(-1, keepdim=True)], dim=-1)",
           "return f, torch.cat([gw, dr.sum(-1, keepdim=True)], dim=-1)", _FAMILIES,
           "RobustRegression's bias gradient with the wrong sign"),
    Mutant("nn-bias-gradient-mean", "optenv/families/neural_net.py",
           "gb = dpre.sum(1)", "gb = dpre.mean(1)", _FAMILIES,
           "NeuralNet's hidden-bias gradient divided by n twice"),
    Mutant("nn-labels-may-all-agree", "optenv/families/neural_net.py",
           "labels[:, -1] = torch.where(same, 1.0 - labels[:, -1], labels[:, -1])",
           "labels[:, -1] = labels[:, -1]", _FAMILIES,
           "NeuralNet instances whose clusters all share one label (a trivial problem)"),
    # ------------------------------------------------------------------ gps/
    Mutant("badmm-dual-ascent-sign", "gps/agent.py",
           "self.lam_k = self.lam_k - cfg.policy_dual_rate",
           "self.lam_k = self.lam_k + cfg.policy_dual_rate", _GPS_STEPS,
           "BADMM's Lagrange-multiplier step with its sign flipped (issue 20)"),
    Mutant("badmm-nu-sign", "gps/agent.py",
           "self.nu = (self.nu + cfg.lg_step * self._reduce(pol_kl)).clamp_min(0.0)",
           "self.nu = (self.nu - cfg.lg_step * self._reduce(pol_kl)).clamp_min(0.0)", _GPS_STEPS,
           "ν shrinks as the policy disagrees more"),
    Mutant("badmm-target-times-nu", "gps/agent.py",
           "adj = adj / nu.clamp_min(1e-8)[..., None]", "adj = adj * nu[..., None]", _GPS_STEPS,
           "the reference code's 'TODO: divide': policy targets μ − Sλν"),
    Mutant("badmm-kl-to-new-controller", "gps/agent.py",
           "res = self._lqr(dyn, cost, sampler, kl_step,",
           "res = self._lqr(dyn, cost, traj, kl_step,", _GPS_STEPS,
           "BADMM's KL bound measured to the last inner controller, not the sampling one"),
    Mutant("mdgps-anchor-at-sampler", "gps/agent.py",
           "res = self._lqr(dyn, cost, pol_lin, self._per_problem(cfg.kl_step * self.step_mult))",
           "res = self._lqr(dyn, cost, sampler, self._per_problem(cfg.kl_step * self.step_mult))",
           _GPS_STEPS, "MDGPS's C-step anchored at the sampling controller, not the policy"),
    Mutant("gps-step-adjust-no-half", "gps/agent.py",
           "mult = pred / (2.0 * torch.clamp(pred - actual, min=1e-4))",
           "mult = pred / torch.clamp(pred - actual, min=1e-4)", _GPS_STEPS,
           "step-size rule without Levine & Abbeel's factor 2"),
    Mutant("lqr-kl-convergence-one-sided", "gps/lqr.py",
           "conv = ok & (con.abs() < self.tol * self.target)",
           "conv = ok & (con < self.tol * self.target)", ("tests/gps/test_lqr.py",),
           "a KL far below the bound counts as converged"),
    Mutant("gmm-unweighted-covariance", "gps/gmm.py",
           "s = (diff * w[:, :, i, None]).mT @ diff", "s = diff.mT @ diff / M",
           ("tests/gps/test_gmm.py",), "EM's M-step ignores the responsibilities"),
    Mutant("policy-fit-ignores-precision", "gps/policy_fit.py",
           "quad = (err[:, None, :] @ prec_n[r] @ err[:, :, None]).reshape(-1)",
           "quad = (err * err).sum(-1)", ("tests/gps/test_policy_fit.py",),
           "the policy's loss not weighted by the controllers' precision"),
    # ------------------------------------------------------------------ baselines/bptt.py
    Mutant("bptt-last-step-loss", "baselines/bptt.py",
           "loss = loss + f.mean()", "loss = f.mean()", _BPTT,
           "meta-loss takes the last step's f, not the sum over the unroll (issue 20)"),
    Mutant("bptt-second-order-always", "baselines/bptt.py",
           "            g = g.detach()\n", "            g = g\n", _BPTT,
           "first-order meta-gradients keep the second-order terms"),
    Mutant("bptt-preprocess-linear-branch", "baselines/bptt.py",
           "lin_part = torch.where(big, torch.sign(g), math.exp(p) * g)",
           "lin_part = torch.where(big, torch.sign(g), g)", _BPTT,
           "small gradients not scaled by e^p"),
    # (Not ``ok = bool(torch.isfinite(loss))`` → ``ok = True``: equivalent, since a non-finite
    # loss gives a non-finite gradient norm, which the next check catches.)
    Mutant("bptt-nonfinite-gradient-applied", "baselines/bptt.py",
           "ok = bool(torch.isfinite(gn))", "ok = True", _BPTT,
           "a diverged unroll's non-finite meta-gradient is applied"),
    # ------------------------------------------------------------------ baselines/optimizers.py
    Mutant("cg-fletcher-reeves", "baselines/optimizers.py",
           "beta = ((g * (g - gp)).sum(-1)", "beta = ((g * g).sum(-1)", _OPTIMIZERS,
           "CG's β as Fletcher–Reeves instead of Polak–Ribière+ (issue 20)"),
    Mutant("cg-beta-unclamped", "baselines/optimizers.py",
           ".clamp_min(1e-300)).clamp_min(0)\n", ".clamp_min(1e-300))\n", _OPTIMIZERS,
           "Polak–Ribière without the + (negative β kept)"),
    Mutant("wolfe-sufficient-decrease-sign", "baselines/optimizers.py",
           "(ft > f0 + c1 * alpha * dphi0)", "(ft > f0 - c1 * alpha * dphi0)", _OPTIMIZERS,
           "Armijo condition accepts increases"),
    Mutant("lbfgs-no-scaling", "baselines/optimizers.py",
           "gamma = torch.where(rho[:, -1] > 0,", "gamma = torch.where(rho[:, -1] > 1e300,",
           _OPTIMIZERS, "L-BFGS without the initial Hessian scaling γ"),
    Mutant("adam-no-bias-correction", "baselines/optimizers.py",
           "denom = v.sqrt() / bc2.sqrt() + h[\"eps\"]", "denom = v.sqrt() + h[\"eps\"]",
           _OPTIMIZERS, "Adam without the second moment's bias correction"),
    Mutant("momentum-dampened", "baselines/optimizers.py",
           "buf = self._state[\"buf\"] * mu + g\n",
           "buf = self._state[\"buf\"] * mu + (1 - mu) * g\n", _OPTIMIZERS,
           "momentum buffer dampened (not torch's SGD)"),
    # ------------------------------------------------------------------ optenv/metrics.py
    Mutant("metrics-margin-sign", "optenv/metrics.py",
           "out[name] = best_other - stack[i]", "out[name] = stack[i] - best_other", _METRICS,
           "margin of victory with its sign flipped"),
    Mutant("metrics-margin-best-is-max", "optenv/metrics.py",
           "best_other = np.nanmin(others, axis=0)", "best_other = np.nanmax(others, axis=0)",
           _METRICS, "margin against the worst other method, not the best"),
    Mutant("metrics-ci-ddof", "optenv/metrics.py",
           "var = (dev * dev).sum(0) / np.maximum(n - 1, 1)",
           "var = (dev * dev).sum(0) / np.maximum(n, 1)", _METRICS,
           "sample variance without Bessel's correction"),
    Mutant("metrics-budget-off-by-one", "optenv/metrics.py",
           "idx = (e[:, :, None] <= budgets).sum(1) - 1",
           "idx = (e[:, :, None] < budgets).sum(1) - 1", _METRICS,
           "f at a budget one evaluation short"),
    Mutant("metrics-win-ties", "optenv/metrics.py",
           "out[a][b] = float(np.mean(mean > 0))", "out[a][b] = float(np.mean(mean >= 0))",
           _METRICS, "a tie counts as a win"),
    Mutant("metrics-diverged-by-nonfinite-only", "optenv/metrics.py",
           "return float(np.mean(~(a[:, -1] <= a[:, 0]) | ~np.isfinite(a[:, -1])))",
           "return float(np.mean(~np.isfinite(a[:, -1])))", _METRICS,
           "a run that ends above its start is not counted as diverged"),
)
