"""A tiny study plan for the tests: tiny horizons, few conditions, objectives and iterations,
so that a whole study (training, tuning, evaluation, report) runs in seconds."""

from __future__ import annotations

from optenv.lab.study_plan import Condition, StudyPlan, plan_for

ENV = "optenv/LogisticRegression-v0"
#: GPS options small enough for one iteration in about a second (as tests/gps use).
GPS_TINY = (("conditions", 3), ("samples", 3), ("lqr_history", 2), ("inner_iterations", 2),
            ("policy_steps", 5), ("policy_batch", 16), ("gmm_iters", 5), ("gmm_clusters", 3),
            ("lqr_max_iter", 10), ("momentum_lr_grid", (0.1, 1.0)), ("momentum_grid", (0.5, 0.9)),
            ("iterations", 1))


def tiny_plan() -> StudyPlan:
    """The 2016 quick plan's methods and axes at toy sizes: T = 4, 6 test objectives, three
    conditions (same task, 10T, dim 20 at 2T), four hand-designed methods."""
    return plan_for("2016", True).replace(
        horizon=4, gps=GPS_TINY, bptt=(("iterations", 2), ("batch_size", 4)),
        hand=("gd", "adam", "cg", "lbfgs-fixed"), n_train=4, n_test=6,
        conditions=(Condition("same", "same", ENV, horizon_x=1),
                    Condition("horizon-10x", "horizon", ENV),
                    Condition("dim-20", "architecture", ENV, (("dim", 20),), horizon_x=2)))


def small_plan() -> StudyPlan:
    """The tiny plan cut further for the studies run under torchrun (each rank a fresh
    process): GPS and one BPTT method, two hand-designed methods, the same-task and dim-20
    conditions."""
    plan = tiny_plan()
    return plan.replace(learned=plan.learned[:2], hand=("gd", "cg"),
                        conditions=(plan.conditions[0], plan.conditions[2]))
