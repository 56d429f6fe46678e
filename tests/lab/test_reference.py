"""``optenv.lab.reference``: the reference optimum f* of a comparison's objectives — closed
form, numerical (checked against scipy), multi-start on a non-convex user family, and reuse of a
stored reference only for the same objectives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from optenv.families import FunctionFamily, LogisticRegression, Quadratic
from optenv.lab.reference import ReferenceSettings, reference_optimum
from optenv.lab.results import jsonable

FAST = ReferenceSettings(starts=8, explore_iterations=15, max_iterations=30, chunk=15)


def test_a_family_with_a_known_minimiser_gets_f_star_in_closed_form():
    ref = reference_optimum(Quadratic(dim=4), n_test=3, seed=5)
    assert ref["source"] == "closed form" and ref["starts"] == 0
    np.testing.assert_allclose(ref["f_reference"], 0.0, atol=1e-30)
    assert (ref["f_x0"] > 0).all() and not ref["cached"]


def test_logistic_regression_reference_matches_scipy_to_1e_10():
    fam = LogisticRegression()
    ref = reference_optimum(fam, n_test=3, seed=2)
    assert ref["source"] == "numerical" and ref["convex"] and ref["starts"] == 1
    data, x0 = fam.sample(torch.arange(2, 5), split="test")
    for i in range(3):
        one = {k: v[i:i + 1] for k, v in data.items()}

        def fg(x, one=one):
            f, g = fam.value_and_grad(torch.tensor(x).unsqueeze(0), one)
            return f.item(), g[0].numpy()

        res = minimize(fg, x0[i].numpy(), jac=True, method="L-BFGS-B",
                       options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10_000})
        assert ref["f_reference"][i] == pytest.approx(res.fun, abs=1e-10)
        assert ref["f_reference"][i] <= res.fun + 1e-12
    assert ref["max_grad"].max() < 1e-6


def _double_well() -> FunctionFamily:
    """(x² − 1)² + 0.3x: a local minimum near x = +1 and the global one near x = −1."""
    return FunctionFamily(lambda x, data: (x[:, 0] ** 2 - 1) ** 2 + 0.3 * x[:, 0], d=1,
                          name="DoubleWell")


def test_a_user_family_gets_the_best_of_several_starts():
    grid = np.linspace(-2, 2, 400_001)
    global_min = float(((grid**2 - 1) ** 2 + 0.3 * grid).min())
    fam = _double_well()
    ref = reference_optimum(fam, n_test=6, settings=FAST)
    assert not ref["convex"] and ref["starts"] == 8
    np.testing.assert_allclose(ref["f_reference"], global_min, atol=1e-9)
    _, x0 = fam.sample(torch.arange(6), split="test")
    in_local_basin = (x0[:, 0] > 0.1).numpy()
    assert in_local_basin.any()  # these objectives needed another start
    one = reference_optimum(fam, n_test=6, settings=ReferenceSettings(
        starts=1, explore_iterations=15, max_iterations=30, chunk=15))
    assert (one["f_reference"][in_local_basin] > global_min + 0.5).all()


def test_a_stored_reference_is_reused_only_for_the_same_objectives_and_settings():
    fam, fast = LogisticRegression(), ReferenceSettings(explore_iterations=5, max_iterations=5)
    ref = reference_optimum(fam, n_test=4, seed=1, settings=fast)
    previous = {"reference": jsonable(ref)}  # as results.json holds it
    again = reference_optimum(fam, n_test=4, seed=1, previous=previous, settings=fast)
    assert again["cached"] and again["f_reference"] == previous["reference"]["f_reference"]
    for changed in ({"seed": 2}, {"n_test": 3}, {"split": "train"},
                    {"settings": ReferenceSettings(explore_iterations=5, max_iterations=6)},
                    {"family": LogisticRegression(dim=4)}):
        args = {"family": fam, "n_test": 4, "seed": 1, "settings": fast, **changed}
        family = args.pop("family")
        assert not reference_optimum(family, previous=previous, **args)["cached"], changed
    tampered = {"reference": {**previous["reference"],
                              "f_x0": [v + 1e-6 for v in previous["reference"]["f_x0"]]}}
    assert not reference_optimum(fam, n_test=4, seed=1, previous=tampered,
                                 settings=fast)["cached"]
    for junk in (None, "text", {"reference": 3}, {"reference": {"key": 1}}):
        assert not reference_optimum(fam, n_test=4, seed=1, previous=junk,
                                     settings=fast)["cached"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"starts": 0}, "starts: got 0"),
    ({"explore_iterations": 50, "max_iterations": 40}, "max_iterations: got 40"),
    ({"rtol": -1.0}, "rtol: got -1.0"),
    ({"max_evals": 0}, "max_evals: got 0"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReferenceSettings(**kwargs)


def test_a_minibatch_family_is_referenced_on_its_full_loss():
    """Evaluation reports a minibatch family's full TRAIN loss, so its f* is the minimum of
    that loss: the reference of batch_size=64 is the full-batch family's, and it lies below
    the full loss at x(0)."""
    from optenv.families import MLPClassifier

    fast = ReferenceSettings(starts=2, explore_iterations=5, max_iterations=5)
    noisy, exact = MLPClassifier(hidden=(4,), inputs=8), MLPClassifier(hidden=(4,), inputs=8,
                                                                      batch_size=None)
    assert exact.full_batch() is exact and LogisticRegression().full_batch() is not None
    a = reference_optimum(noisy, n_test=2, settings=fast)
    b = reference_optimum(exact, n_test=2, settings=fast)
    np.testing.assert_array_equal(a["f_reference"], b["f_reference"])
    data, x0 = noisy.sample([0, 1], split="test")
    np.testing.assert_allclose(a["f_x0"], noisy.full_objective(x0, data).numpy(), rtol=1e-12)
    assert (a["f_reference"] < a["f_x0"]).all()
