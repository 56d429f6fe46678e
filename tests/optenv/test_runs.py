"""optenv.runs.RunDir: safe checkpoints, folders without one, the lock, resume records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from optenv.checkpoint import save_tagged
from optenv.runs import CHECKPOINT_FORMAT, LEGACY_CHECKPOINT_FORMAT, RunDir

CONFIG = {"trainer": "test", "lr": 0.1, "iterations": 3}
RESUMABLE = ("iterations",)


def _run(out, **kw) -> RunDir:
    return RunDir(out, {**CONFIG, **kw.pop("config", {})}, resumable_keys=RESUMABLE, **kw)


def _saved_run(out) -> dict:
    """A run folder with a checkpoint of two log rows; returns its state."""
    state = {"net": {"w": torch.arange(6.0)}, "rng": torch.get_rng_state(), "iteration": 1}
    with _run(out) as run:
        run.save(state, [{"iteration": 0, "loss": 1.5}, {"iteration": 1, "loss": float("nan")}])
    return state


def test_a_checkpoint_round_trips_with_tensor_rng_states_and_a_json_log(tmp_path) -> None:
    out = tmp_path / "run"
    state = _saved_run(out)
    raw = torch.load(out / "checkpoint.pt", weights_only=True)  # plain data, no pickle
    assert raw["format"] == CHECKPOINT_FORMAT and isinstance(raw["log_json"], str)
    with _run(out, resume=True) as run:
        assert run.resuming
        got, log = run.load()
    torch.testing.assert_close(got["net"]["w"], state["net"]["w"], rtol=0, atol=0)
    assert torch.equal(got["rng"], state["rng"]) and got["iteration"] == 1
    assert log[0] == {"iteration": 0, "loss": 1.5} and np.isnan(log[1]["loss"])


def test_a_crafted_checkpoint_is_refused_without_being_unpickled(tmp_path, armed) -> None:
    out = tmp_path / "run"
    _saved_run(out)
    marker, bomb = armed
    torch.save({"format": CHECKPOINT_FORMAT, "state": {"net": bomb},
                "log_json": "[]"}, out / "checkpoint.pt")
    config = (out / "config.json").read_bytes()
    with pytest.raises(ValueError, match=r"--resume: .*only unpickling could rebuild"):
        _run(out, resume=True, config={"iterations": 5})
    assert not marker.exists()
    assert (out / "config.json").read_bytes() == config


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_refused_and_config_json_is_left_as_it_was(tmp_path,
                                                                          damage) -> None:
    out = tmp_path / "run"
    state = _saved_run(out)
    raw = bytearray((out / "checkpoint.pt").read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) - 200]
    else:
        at = bytes(raw).find(state["net"]["w"].numpy().tobytes())
        raw[at + 13] ^= 0x01
    (out / "checkpoint.pt").write_bytes(bytes(raw))
    config = (out / "config.json").read_bytes()
    match = "fails its checksum" if damage == "flip" else "cannot read an optenv checkpoint"
    with pytest.raises(ValueError, match=f"--resume: .*{match}.*restore an intact copy"):
        _run(out, resume=True, config={"iterations": 5})  # a resumable change: would rewrite
    assert (out / "config.json").read_bytes() == config


def test_a_changed_iteration_count_on_resume_is_recorded_in_config_json(tmp_path) -> None:
    out = tmp_path / "run"
    _saved_run(out)
    with _run(out, resume=True, config={"iterations": 5}):
        pass
    with _run(out, resume=True, config={"iterations": 8}):
        pass
    saved = json.loads((out / "config.json").read_text())
    assert saved["iterations"] == 8
    assert saved["resumed"] == [{"log_rows": 2, "changed": {"iterations": [3, 5]}},
                                {"log_rows": 2, "changed": {"iterations": [5, 8]}}]
    with pytest.raises(ValueError, match=r"lr: saved 0\.1, now 0\.2"):
        _run(out, resume=True, config={"lr": 0.2, "iterations": 8})


def test_a_folder_without_a_checkpoint_resumes_as_a_fresh_start_or_is_reused(tmp_path,
                                                                            capsys) -> None:
    """A run killed (or failed) before its first checkpoint leaves config.json alone: a dead
    end before ('no checkpoint to resume', 'already holds a run')."""
    out = tmp_path / "run"
    with _run(out):
        pass  # set up, then gone before the first checkpoint
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    prepared = []
    with _run(out, resume=True, prepare=prepared.append) as run:
        assert not run.resuming and run.load() == ({}, [])
    assert prepared == [None]
    assert "starting it from the beginning" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"lr: saved 0\.1, now 0\.5"):
        _run(out, resume=True, config={"lr": 0.5})  # still the saved configuration
    with _run(out, config={"lr": 0.5}) as run:  # or a new run takes the folder over
        assert not run.resuming
    assert json.loads((out / "config.json").read_text())["lr"] == 0.5
    _saved_run(tmp_path / "done")
    with pytest.raises(ValueError, match="already holds a run"):
        _run(tmp_path / "done")
    with pytest.raises(ValueError, match="holds no run to resume"):
        _run(tmp_path / "nothing", resume=True)


def test_two_runs_in_one_folder_the_second_is_refused_and_changes_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    _saved_run(out)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with _run(out, resume=True), pytest.raises(ValueError, match="in use by another optenv run"):
        _run(out, resume=True, config={"iterations": 9})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    with _run(out, resume=True):  # released: the next one goes on
        pass


def test_prepare_refusing_the_state_changes_nothing_and_releases_the_lock(tmp_path) -> None:
    out = tmp_path / "run"
    _saved_run(out)
    files = {p.name: p.read_bytes() for p in out.iterdir()}

    def refuse(state):
        raise ValueError("checkpoint: does not fit this run")

    with pytest.raises(ValueError, match="does not fit"):
        _run(out, resume=True, config={"iterations": 9}, prepare=refuse)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    with _run(out, resume=True):
        pass


def test_checkpoints_of_optenv_0_1_resume_when_plain_and_are_refused_with_a_way_on_if_not(
        tmp_path) -> None:
    out = tmp_path / "run"
    _saved_run(out)
    log = [{"iteration": 0, "loss": 2.0}]
    torch.save({"format": LEGACY_CHECKPOINT_FORMAT, "config": CONFIG,
                "state": {"iteration": 0, "w": torch.ones(2)}, "log": log},
               out / "checkpoint.pt")
    with _run(out, resume=True) as run:
        state, got = run.load()
    assert state["iteration"] == 0 and got == log
    torch.save({"format": LEGACY_CHECKPOINT_FORMAT, "config": CONFIG, "log": log,
                "state": {"replay_buffer": {"arrays": {"obs": np.zeros(3)}}}},
               out / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"optenv 0\.1.*resume it with the optenv that "
                                         r"wrote it, or start a new run"):
        _run(out, resume=True)
    save_tagged(out / "checkpoint.pt", "something/else", {"state": {}})
    with pytest.raises(ValueError, match="is not an optenv checkpoint"):
        _run(out, resume=True)
