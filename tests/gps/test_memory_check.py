"""GPS's memory pre-flight: a configuration whose samples and per-problem models cannot fit is
refused before a run folder exists (it used to run until the out-of-memory killer ended it,
e.g. coordinatewise GPS on MLPClassifier-v0 at the default 90 conditions)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gymnasium as gym
import pytest

import optenv  # registers the ids
import optenv.memory
from gps.agent import GPSAgent
from gps.coordinatewise import CoordinatewiseGPSAgent
from gps.train import make_config
from optenv.lab.cli import main

ENV = "optenv/LogisticRegression-v0"


def _family(env_id: str):
    return gym.make(env_id).unwrapped.family


def test_memory_bytes_counts_samples_and_per_problem_models_by_hand() -> None:
    cfg = dataclasses.replace(make_config(quick=True), conditions=3, samples=2, horizon=5,
                              lqr_history=2)
    agent = GPSAgent(_family(ENV), cfg, history=4)
    P, N, T, dX, dU = 3, 2, 5, agent.smap.dim, 4
    obs = agent.core.layout.obs_dim
    samples = 2 * T * (P * N * (dX + dU) * 8 + P * N * obs * 4)
    models = P * T * (dX * (dX + dU) + dX * dX + (dX + dU) ** 2 + dU * dX + 2 * dU * dU) * 8
    assert agent.memory_bytes() == samples + models


def test_coordinatewise_memory_grows_with_d_conditions_and_samples() -> None:
    fam = _family("optenv/MLPClassifier-v0")
    base = dataclasses.replace(make_config(quick=True), policy="coordinatewise", conditions=2,
                               samples=2, horizon=4)
    small = CoordinatewiseGPSAgent(fam, base, history=3).memory_bytes()
    more_conditions = CoordinatewiseGPSAgent(
        fam, dataclasses.replace(base, conditions=4), history=3).memory_bytes()
    more_samples = CoordinatewiseGPSAgent(
        fam, dataclasses.replace(base, samples=4), history=3).memory_bytes()
    assert more_conditions == 2 * small
    assert small < more_samples < 2 * small  # the models do not grow with the samples
    # the default 90 conditions on the neural-net family: far beyond a workstation
    quick = dataclasses.replace(make_config(quick=True), policy="coordinatewise")
    assert CoordinatewiseGPSAgent(fam, quick, history=25).memory_bytes() > 64 * 2**30


def test_a_run_too_large_for_the_free_memory_is_exit_2_before_its_folder_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optenv.memory, "available_bytes", lambda device: 10_000)
    out = tmp_path / "run"
    argv = ["train", "gps", "--env", ENV, "--out", str(out), "--conditions", "2", "--samples",
            "3", "--horizon", "4", "--lqr-history", "2", "--iterations", "1", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("optenv: error: ") and err.count("\n") == 1, err
    for word in ("--conditions 2", "--samples 3", "--horizon 4", "--lqr-history", "free"):
        assert word in err, (word, err)
    assert "num_envs" not in err
    assert not out.exists() or not any(out.iterdir())


def test_resuming_with_another_configuration_says_so_before_the_memory_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    tiny = ["--conditions", "2", "--samples", "3", "--horizon", "4", "--lqr-history", "2",
            "--inner-iterations", "2", "--policy-steps", "5", "--policy-batch", "16", "--quiet"]
    assert main(["train", "gps", "--env", ENV, "--out", str(out), "--iterations", "1", *tiny]) == 0
    capsys.readouterr()
    monkeypatch.setattr(optenv.memory, "available_bytes", lambda device: 10_000)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["train", "gps", "--env", "optenv/Quadratic-v0", "--out", str(out), "--resume",
                 "--iterations", "2", *tiny]) == 2
    err = capsys.readouterr().err
    assert "memory" not in err and "--resume" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

