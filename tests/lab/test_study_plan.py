"""The study's declared plans (optenv.lab.study_plan): what each setting trains and where it
evaluates."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("setting", ["2016", "2017"])
def test_each_settings_plan_names_registered_envs_and_trains_gps_and_bptt_same_alike(
        setting) -> None:
    """The declared plans: every condition's env resolves, every axis is covered or said not
    to apply, and BPTT's twin of GPS reads the same policy class and features."""
    from optenv.evaluate import resolve_env
    from optenv.lab.study import _condition_env
    from optenv.lab.study_plan import AXES, plan_for

    for quick in (True, False):
        plan = plan_for(setting, quick)
        assert set(plan.axes()) | dict(plan.not_applicable).keys() == set(AXES)
        for cond in plan.conditions:
            _label, family, _defaults = resolve_env(_condition_env(cond))
            assert family.d >= 1
        learned = {m.name: dict(m.options) for m in plan.learned}
        assert learned["bptt-same"]["arch"] == "coordinatewise-mlp"
        assert learned["gps"]["policy"] == "coordinatewise"
        assert learned["bptt-same"].get("features") == learned["gps"].get("features")
        assert learned["bptt-lstm"]["arch"] == "lstm"
