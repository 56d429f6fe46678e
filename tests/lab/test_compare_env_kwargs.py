"""``optenv compare --env-kwargs``: family and env arguments for variants of an id (a larger
model, another observation), their parsing, and the one-line errors of bad ones.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import pytest
import torch

from baselines.optimizers import make_optimizer
from optenv.evaluate import evaluate
from optenv.lab import compare, methods
from optenv.lab.cli import main
from optenv.lab.results import read_results

ENV = "optenv/LogisticRegression-v0"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="optenv")
    compare.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["compare", *argv])


def test_values_are_read_as_int_float_bool_or_str():
    got = compare.parse_env_kwargs("dim=20, lam=1e-3,flag=TRUE,off=false,n=-3,"
                                   "observation=coordinatewise,features=li-malik-2017")
    assert got == {"dim": 20, "lam": 1e-3, "flag": True, "off": False, "n": -3,
                   "observation": "coordinatewise", "features": "li-malik-2017"}
    assert [type(got[k]) for k in ("dim", "lam", "flag", "n", "features")] == [
        int, float, bool, int, str]
    assert compare.parse_env_kwargs(None) == {}


def test_dim_20_evaluates_on_the_larger_model_and_says_so(tmp_path, capsys):
    argv = ("--env", ENV, "--env-kwargs", "dim=20", "--methods", "gd", "--n-test", "4",
            "--horizon", "5", "--no-tune", "--no-plots", "--quiet", "--out", str(tmp_path))
    assert compare.run(_args(*argv)) == 0
    assert "optenv/LogisticRegression-v0 with dim=20: 4 test objectives" in (
        capsys.readouterr().out)
    doc = read_results(tmp_path / "results.json")
    assert doc["family"]["config"]["dim"] == 20
    want = evaluate(make_optimizer("gd"), gym.make(ENV, dim=20), n_test=4, horizon=5)
    assert doc["methods"]["gd"]["mean_f"] == pytest.approx(want.f.mean(0).tolist(), rel=1e-12)
    default = evaluate(make_optimizer("gd"), ENV, n_test=4, horizon=5)
    assert not np.allclose(want.f, default.f)


def test_loaded_policies_get_the_variants_rows_and_context(tmp_path, monkeypatch):
    seen = []

    def loader(path: str, context: dict) -> object:
        seen.append((context["observation"], context["features"], context["history"],
                     context["family"].d))
        return lambda obs: seen.append(tuple(obs.shape)) or torch.zeros(obs.shape[:2])

    monkeypatch.setitem(methods.METHOD_LOADERS, "rows", loader)
    argv = ("--env", ENV, "--env-kwargs", "dim=7,observation=coordinatewise,"
            "features=li-malik-2017-psi,history=3", "--methods", "rows:x", "--n-test", "2",
            "--horizon", "1", "--no-plots", "--quiet", "--out", str(tmp_path))
    assert compare.run(_args(*argv)) == 0
    assert seen == [("coordinatewise", "li-malik-2017-psi", 3, 8), (2, 8, 3)]


@pytest.mark.parametrize(("value", "match"), [
    ("foo=1", r"--env-kwargs: got unknown key\(s\) 'foo' for optenv/LogisticRegression-v0, "
              r"allowed: dim, n_points, lam, observation, features, history, max_step"),
    ("dim", r"--env-kwargs: got 'dim' in 'dim', allowed: KEY=VALUE pairs"),
    ("dim=", r"--env-kwargs: got 'dim=' in 'dim=', allowed: KEY=VALUE pairs"),
    ("dim=3,dim=4", r"--env-kwargs: got 'dim' twice"),
    ("dim=0", r"--env-kwargs: dim: got 0, allowed: an int >= 1"),
    ("observation=grid", r"--env-kwargs: observation: got 'grid'"),
    ("features=li-malik-2017", r"--env-kwargs: features: got 'li-malik-2017' with "
                               r"observation='flat'"),
    ("split=train", r"--env-kwargs: got unknown key\(s\) 'split'"),
])
def test_bad_env_kwargs_raise_one_value_error_naming_the_flag(tmp_path, value, match):
    with pytest.raises(ValueError, match=match):
        compare.run(_args("--env-kwargs", value, "--quiet", "--out", str(tmp_path)))


def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    assert main(["compare", "--env-kwargs", "dim=2,colour=red", "--quiet",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("optenv: error: --env-kwargs: got unknown key(s) 'colour'")
