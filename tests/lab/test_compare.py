"""``optenv compare``: end-to-end on a tiny problem, results files, and argument errors."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest

from baselines.optimizers import make_optimizer
from optenv.evaluate import evaluate
from optenv.lab import compare, methods
from optenv.lab.results import (
    SCHEMA,
    atomic_write,
    make_results,
    read_results,
    validate_results,
    write_results,
)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="optenv")
    sub = parser.add_subparsers(dest="command")
    compare.add_parser(sub)
    return parser.parse_args(["compare", *argv])


def _small(tmp_path: Path, *extra: str) -> argparse.Namespace:
    return _args("--env", "optenv/Quadratic-v0", "--methods", "gd,momentum,lbfgs",
                 "--n-test", "6", "--n-train", "4", "--horizon", "8", "--quiet",
                 "--out", str(tmp_path / "out"), *extra)


def test_compare_tunes_evaluates_prints_a_table_and_writes_results(tmp_path, capsys):
    assert compare.run(_small(tmp_path)) == 0
    out = capsys.readouterr().out
    for name in ("gd", "momentum", "lbfgs", "mean f@8", "MoV@8", "row beats column at"):
        assert name in out
    doc = read_results(tmp_path / "out" / "results.json")
    assert doc["schema"] == SCHEMA and doc["n_test"] == 6 and doc["horizon"] == 8
    assert doc["tuning"] == {"split": "train", "n_train": 4, "criterion": "mean"}
    gd = doc["methods"]["gd"]
    assert gd["hyperparameters"]["lr"] == gd["tuning"]["best"]["lr"]
    assert len(gd["tuning"]["table"]) == len(gd["tuning"]["grid"]["lr"])
    assert doc["methods"]["lbfgs"]["tuning"] is None  # no grid: the line search sets steps
    assert doc["methods"]["lbfgs"]["extra_evals_mean"] > 0
    for stem in ("suboptimality", "suboptimality_by_evals", "mean_f", "margin_of_victory"):
        assert (tmp_path / "out" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (tmp_path / "out" / f"{stem}.svg").read_bytes()[:1000]
    assert doc["reference"]["source"] == "closed form" and "f*: closed form" in out
    assert doc["methods"]["gd"]["suboptimality"]["mean"][0] == pytest.approx(
        doc["methods"]["gd"]["mean_f"][0])  # f* = 0 on the quadratics
    beats = doc["methods"]["lbfgs"]["beats"]
    assert set(beats) == {"gd", "momentum"} and all(0.0 <= v <= 1.0 for v in beats.values())
    assert "equal f/grad evaluation budgets" in out  # L-BFGS's line search costs extra
    gd_m = doc["methods"]["gd"]
    assert gd_m["mean_f_by_evals"] == gd_m["mean_f"]  # one evaluation per iteration
    assert set(gd_m["beats_by_evals"]) == {"momentum", "lbfgs"}
    # The table's numbers are the JSON's.
    final = np.mean(doc["methods"]["gd"]["final_f"])
    assert doc["methods"]["gd"]["mean_f"][-1] == pytest.approx(final)


def test_help_lists_every_registered_method_and_no_default_none(capsys):
    from optenv.lab.cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in [*methods.HAND_OPTIMIZERS, *(f"{p}:" for p in methods.METHOD_LOADERS)]:
        assert f" {name}" in text, name
    assert "(default: None)" not in text
    assert "--horizon HORIZON iterations per run (default: the env's" in text


def test_compare_without_tuning_uses_library_defaults(tmp_path):
    assert compare.run(_small(tmp_path, "--no-tune", "--no-plots")) == 0
    doc = read_results(tmp_path / "out" / "results.json")
    assert doc["tuning"] is None and doc["methods"]["gd"]["hyperparameters"]["lr"] == 0.1
    assert not (tmp_path / "out" / "mean_f.png").exists()


def test_split_train_evaluates_the_training_objectives_and_says_so(tmp_path, capsys):
    assert compare.run(_small(tmp_path, "--no-tune", "--no-plots", "--split", "train")) == 0
    assert "6 train objectives" in capsys.readouterr().out
    doc = read_results(tmp_path / "out" / "results.json")
    assert doc["split"] == "train"
    want = evaluate(make_optimizer("gd"), "optenv/Quadratic-v0", n_test=6, horizon=8, split="train")
    test = evaluate(make_optimizer("gd"), "optenv/Quadratic-v0", n_test=6, horizon=8)
    assert doc["methods"]["gd"]["mean_f"] == pytest.approx(want.f.mean(0).tolist())
    assert not np.allclose(want.f, test.f)  # the two splits are different objectives


def test_defaults_are_the_papers_setting():
    a = _args()
    assert (a.env, a.n_test, a.n_train, a.horizon) == ("optenv/LogisticRegression-v0", 100,
                                                        90, None)
    assert set(methods.parse_methods(a.methods)) >= {("gd", None), ("cg", None),
                                                     ("lbfgs", None), ("adam", None)}


@pytest.mark.parametrize(("argv", "match"), [
    (("--env", "optenv/Nope-v0"), "--env: got .optenv/Nope-v0."),
    (("--methods", "gd,sgdx"), "--methods: got unknown method 'sgdx'"),
    (("--methods", "gd,,adam"), "--methods: got an empty entry"),
    (("--methods", "gd,gd"), "twice"),
    (("--methods", "gps:no/such/run"), r"policy\.pt"),
    (("--methods", "zzz:dir"), "unknown prefix"),
    (("--n-test", "0"), "--n-test: got 0"),
    (("--n-train", "-1"), "--n-train"),
    (("--horizon", "0"), "--horizon"),
    (("--threads", "0"), "--threads"),
])
def test_bad_arguments_raise_value_error_naming_them(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        compare.run(_args(*argv, "--quiet", "--out", str(tmp_path)))


def test_unwritable_out_dir_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"--out: got .*not a writable directory"):
        compare.run(_args("--quiet", "--out", str(blocker / "sub")))


def test_registered_loader_prefix_is_evaluated_like_any_policy(tmp_path, monkeypatch):
    import torch

    calls = []

    def loader(path: str, context: dict) -> object:
        calls.append((path, context["env_id"]))
        return lambda obs: torch.zeros(obs.shape[0], context["family"].d)

    monkeypatch.setitem(methods.METHOD_LOADERS, "fake", loader)
    args = _args("--env", "optenv/Quadratic-v0", "--methods", "gd,fake:some/dir", "--n-test",
                 "3", "--n-train", "2", "--horizon", "4", "--quiet", "--no-plots",
                 "--out", str(tmp_path))
    assert compare.run(args) == 0
    assert calls == [("some/dir", "optenv/Quadratic-v0")]
    doc = read_results(tmp_path / "results.json")
    fake = doc["methods"]["fake:some/dir"]
    assert fake["kind"] == "callable" and fake["label"] == "fake (dir)"
    assert fake["path"] == str(Path("some/dir").resolve())


def test_a_second_run_into_the_same_folder_reuses_f_star_and_says_so(tmp_path, capsys):
    argv = ("--env", "optenv/LogisticRegression-v0", "--methods", "gd,lbfgs", "--n-test", "3",
            "--horizon", "3", "--no-tune", "--no-plots", "--quiet", "--out", str(tmp_path))
    assert compare.run(_args(*argv)) == 0
    first = read_results(tmp_path / "results.json")["reference"]
    assert first["source"] == "numerical" and not first["cached"]
    assert "f*: L-BFGS" in capsys.readouterr().out
    assert compare.run(_args(*argv)) == 0
    again = read_results(tmp_path / "results.json")["reference"]
    assert again["cached"] and again["f_reference"] == first["f_reference"]
    assert "reused from the previous results.json" in capsys.readouterr().out


def test_a_second_run_removes_the_earlier_runs_figures_it_did_not_redraw(tmp_path, capsys):
    """gd,lbfgs draws suboptimality_by_evals (line searches); gd,momentum does not: the stale
    figure goes, the new ones and files compare does not own stay."""
    argv = ("--env", "optenv/Quadratic-v0", "--n-test", "3", "--horizon", "3", "--no-tune",
            "--quiet", "--out", str(tmp_path))
    assert compare.run(_args("--methods", "gd,lbfgs", *argv)) == 0
    assert (tmp_path / "suboptimality_by_evals.svg").is_file()
    (tmp_path / "notes.png").write_bytes(b"mine")
    (tmp_path / "suboptimality_by_evals.pdf").write_bytes(b"mine")
    capsys.readouterr()
    assert compare.run(_args("--methods", "gd,momentum", *argv)) == 0
    assert "removed stale" in capsys.readouterr().out
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["margin_of_victory.png", "margin_of_victory.svg", "mean_f.png", "mean_f.svg",
                    "notes.png", "results.json", "suboptimality.png", "suboptimality.svg",
                    "suboptimality_by_evals.pdf"]
    assert compare.run(_args("--methods", "gd,momentum", "--no-plots", *argv)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.png", "results.json", "suboptimality_by_evals.pdf"]


def test_every_figure_drawn_is_one_compare_owns(tmp_path):
    from optenv.lab.figures import FIGURE_STEMS, figures

    assert compare.run(_small(tmp_path)) == 0
    assert set(figures(read_results(tmp_path / "out" / "results.json"))) <= set(FIGURE_STEMS)


# ---------------------------------------------------------------------- results files
def _doc() -> dict:
    from optenv.families import Quadratic

    fam = Quadratic(dim=3)
    evs = {m: evaluate(make_optimizer(m), fam, n_test=4, horizon=5, name=m) for m in ("gd", "adam")}
    return make_results(evs, family=fam, seed=0)


def test_results_json_is_strict_and_follows_the_schema(tmp_path):
    doc = _doc()
    doc["methods"]["gd"]["final_f"][0] = float("inf")  # a diverged run
    path = write_results(doc, tmp_path / "r.json")
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    loaded = json.loads(text)
    assert loaded["methods"]["gd"]["final_f"][0] is None
    validate_results(loaded)


def test_results_schema_violations_are_named_and_nothing_is_written(tmp_path):
    doc = _doc()
    del doc["methods"]["adam"]["mean_f"]
    with pytest.raises(ValueError, match=r"methods\['adam'\].*mean_f"):
        write_results(doc, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []
    doc = _doc()
    doc["methods"]["gd"]["final_f"] = doc["methods"]["gd"]["final_f"][:2]
    with pytest.raises(ValueError, match="final_f"):
        validate_results(doc)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")

    def boom(fh: object) -> None:
        fh.write("partial")  # type: ignore[attr-defined]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # no temporary file left behind
    atomic_write(target, lambda fh: fh.write("new"))
    assert target.read_text() == "new"


def test_results_of_different_objectives_are_refused():
    from optenv.families import Quadratic

    fam = Quadratic(dim=3)
    a = evaluate(make_optimizer("gd"), fam, n_test=4, horizon=5)
    b = evaluate(make_optimizer("gd"), fam, n_test=4, horizon=5, seed=1)
    with pytest.raises(ValueError, match="same test objectives"):
        make_results({"a": a, "b": b}, family=fam, seed=0)


def test_a_flat_optimizer_on_a_coordinatewise_env_is_one_line_error(tmp_path, capsys) -> None:
    from optenv.lab.cli import main

    run = tmp_path / "bptt"
    assert main(["train", "bptt", "--arch", "mlp", "--iterations", "1", "--batch-size", "2",
                 "--horizon", "3", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    code = main(["compare", "--methods", f"gd,bptt:{run}", "--no-tune", "--n-test", "2",
                 "--horizon", "3", "--quiet", "--no-plots", "--out", str(tmp_path / "cmp"),
                 "--env-kwargs", "observation=coordinatewise"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "acts on the flat observation" in err and "coordinatewise" in err


def test_a_flat_gps_policy_on_a_coordinatewise_env_is_refused_by_name(tmp_path) -> None:
    from gps.train import load_for_compare
    from optenv.families import LogisticRegression
    from optenv.policy import GaussianMLPPolicy, save_policy

    fam = LogisticRegression()
    run = tmp_path / "gps"
    run.mkdir()
    save_policy(str(run / "policy.pt"), GaussianMLPPolicy(229, fam.d))
    context = {"env_id": "optenv/LogisticRegression-v0", "family": fam, "history": 25,
               "max_step": 1.0, "device": "cpu", "observation": "coordinatewise",
               "features": "li-malik-2016"}
    with pytest.raises(ValueError, match=r"gps:.* acts on the flat observation"):
        load_for_compare(str(run), context)


def test_results_record_the_observation_and_features_of_an_env_kwargs_variant(tmp_path):
    from optenv.lab.cli import main

    code = main(["compare", "--methods", "gd", "--no-tune", "--n-test", "2", "--horizon", "3",
                 "--quiet", "--no-plots", "--out", str(tmp_path / "cmp"), "--env-kwargs",
                 "observation=coordinatewise,features=li-malik-2017-psi"])
    assert code == 0
    doc = read_results(tmp_path / "cmp" / "results.json")
    assert doc["observation"] == "coordinatewise" and doc["features"] == "li-malik-2017-psi"
    assert compare.run(_small(tmp_path, "--no-tune", "--no-plots")) == 0
    plain = read_results(tmp_path / "out" / "results.json")
    assert plain["observation"] == "flat" and plain["features"] == "li-malik-2016"
