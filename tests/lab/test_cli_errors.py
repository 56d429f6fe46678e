"""The command line's user errors about devices, run folders and their files: one line on
stderr, exit status 2, no traceback, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from optenv.lab.cli import main

ENV = "optenv/LogisticRegression-v0"
#: A device this machine does not have (CUDA on a CPU-only torch, else one GPU too many).
MISSING_DEVICE = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
GPS_TINY = ["--conditions", "2", "--samples", "3", "--horizon", "4", "--lqr-history", "2",
            "--inner-iterations", "2", "--policy-steps", "5", "--policy-batch", "16",
            "--iterations", "1", "--quiet"]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """Run the CLI; it must exit 2 with one line on stderr that holds every word."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("optenv: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.mark.parametrize("device", [MISSING_DEVICE, "meta"])
@pytest.mark.parametrize("command", [
    ["compare", "--methods", "gd", "--n-test", "2", "--horizon", "3", "--no-tune"],
    ["train", "gps", "--env", ENV, *GPS_TINY],
    ["train", "bptt", "--env", ENV, "--iterations", "1", "--quiet"],
    ["train", "sac", "--env", ENV, "--steps", "10", "--quiet"],
], ids=["compare", "gps", "bptt", "sac"])
def test_a_device_this_machine_lacks_is_exit_2(tmp_path, capsys, command, device) -> None:
    out = tmp_path / "out"
    _fails([*command, "--out", str(out), "--device", device], capsys, "--device", device)
    if command[0] == "train":  # (compare makes its --out folder before it checks --device)
        assert not out.exists()


def test_a_non_numeric_hyperparameter_is_exit_2_naming_it(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    _fails(["train", "ppo", "--env", ENV, "--out", str(out), "--steps", "10",
            "--hyperparams", "n_steps=abc"], capsys, "n_steps", "'abc'", "an integer")
    _fails(["train", "ppo", "--env", ENV, "--out", str(out), "--steps", "10",
            "--hyperparams", "n_steps=1", "batch_size=1"], capsys, "hyperparams", "PPO")
    assert not out.exists()


@pytest.mark.parametrize(("text", "words"), [
    ("[1, 2]", ("holds a JSON list", "allowed: a JSON object")),
    ("{bad", ("is not valid JSON",)),
])
def test_a_bptt_folder_whose_config_json_is_not_an_object_is_exit_2(tmp_path, capsys, text,
                                                                    words) -> None:
    folder = tmp_path / "bptt"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    _fails(["compare", "--methods", f"bptt:{folder}", "--n-test", "2", "--horizon", "3",
            "--out", str(tmp_path / "cmp"), "--quiet"], capsys, "--methods",
           str(folder / "config.json"), *words)
    ppo = tmp_path / "ppo"
    ppo.mkdir()
    (ppo / "model.zip").write_bytes(b"")
    (ppo / "config.json").write_text(text)
    _fails(["compare", "--methods", f"ppo:{ppo}", "--n-test", "2", "--horizon", "3",
            "--out", str(tmp_path / "cmp"), "--quiet"], capsys, str(ppo / "config.json"),
           *words)


@pytest.fixture
def gps_run(tmp_path: Path) -> Path:
    """A run folder as far as these checks look: they all come before its checkpoint is read
    (a real run would cost a GPS iteration and its plot, ~10 s on a busy 2-core machine)."""
    out = tmp_path / "gps"
    out.mkdir()
    (out / "config.json").write_text('{"trainer": "gps"}')
    (out / "checkpoint.pt").write_bytes(b"a checkpoint")
    return out


def test_gps_resume_without_or_with_a_malformed_config_json_is_exit_2(gps_run, tmp_path,
                                                                       capsys) -> None:
    out = gps_run
    config = out / "config.json"
    checkpoint = (out / "checkpoint.pt").read_bytes()
    resume = ["train", "gps", "--env", ENV, "--out", str(out), *GPS_TINY, "--resume"]
    config.unlink()
    _fails(resume, capsys, "--resume", "no config.json")
    config.write_text("{bad")
    _fails(resume, capsys, "--resume", str(config), "is not valid JSON")
    config.write_text("[]")
    _fails(resume, capsys, "--resume", str(config), "holds a JSON list")
    assert (out / "checkpoint.pt").read_bytes() == checkpoint
    for trainer in (["train", "bptt", "--iterations", "1", "--quiet"],
                    ["train", "ppo", "--env", ENV, "--steps", "10", "--quiet"]):
        other = tmp_path / trainer[1]
        other.mkdir()
        (other / "config.json").write_text("{bad")
        _fails([*trainer, "--out", str(other), "--resume"], capsys, str(other / "config.json"))


def test_a_second_run_in_a_folder_in_use_is_exit_2(gps_run, capsys) -> None:
    from optenv.locks import FolderLock

    files = {p.name: p.read_bytes() for p in gps_run.iterdir()}
    with FolderLock(gps_run):  # another run holds the folder
        _fails(["train", "gps", "--env", ENV, "--out", str(gps_run), *GPS_TINY, "--resume",
                "--iterations", "2"], capsys, "in use by another optenv run")
    assert {p.name: p.read_bytes() for p in gps_run.iterdir()} == files


@pytest.mark.parametrize(("prefix", "artifact", "config"), [
    ("gps", "policy.pt", None),
    ("bptt", "optimizer.pt", {"history": 25, "arch": "mlp"}),
])
def test_a_crafted_policy_file_is_exit_2_and_never_unpickled(tmp_path, capsys, armed, prefix,
                                                             artifact, config) -> None:
    marker, bomb = armed
    folder = tmp_path / prefix
    folder.mkdir()
    torch.save({"format": "optenv.policy/1", "config": {}, "state_dict": bomb, "extra": {}},
               folder / artifact)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    _fails(["compare", "--methods", f"{prefix}:{folder}", "--n-test", "2", "--horizon", "3",
            "--out", str(tmp_path / "cmp"), "--quiet"], capsys, "only unpickling")
    assert not marker.exists()


def test_a_learned_method_folder_missing_or_of_another_trainer_names_methods(tmp_path,
                                                                              capsys) -> None:
    missing, other = tmp_path / "missing", tmp_path / "gps"
    other.mkdir()
    (other / "config.json").write_text('{"trainer": "gps"}')
    (other / "policy.pt").write_bytes(b"")
    for spec in (f"gps:{missing}", f"ppo:{other}"):
        _fails(["compare", "--methods", spec, "--n-test", "2", "--horizon", "3",
                "--out", str(tmp_path / "cmp"), "--quiet"], capsys, f"--methods: {spec}: ")


def test_an_error_under_a_progress_bar_starts_its_own_line(tmp_path, capsys) -> None:
    assert main(["compare", "--methods", f"gps:{tmp_path / 'missing'}", "--n-test", "2",
                 "--horizon", "3", "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "compare:" in err and err.count("\n") == 1  # the bar was drawn, then erased
    assert err.rsplit("\r", 1)[-1].startswith("optenv: error: --methods: gps:"), err


@pytest.mark.parametrize(("command", "resumable"), [
    (["train", "gps", "--env", ENV, *GPS_TINY], True), (["compare", "--quiet"], False)])
def test_an_interrupt_is_exit_130_in_one_line_saying_how_to_resume(
        tmp_path, capsys, monkeypatch, command, resumable) -> None:
    import gps.train
    import optenv.lab.compare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gps.train, "train", interrupted)
    monkeypatch.setattr(optenv.lab.compare, "_tune_and_evaluate", interrupted)
    assert main([*command, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("optenv: interrupted") and err.count("\n") == 1, err
    assert ("--resume" in err) == resumable, err


def test_a_training_run_refuses_a_folder_that_holds_another_tools_files(tmp_path, capsys) -> None:
    out = tmp_path / "compare"
    out.mkdir()
    (out / "results.json").write_text("{}")
    _fails(["train", "gps", "--env", ENV, "--out", str(out), *GPS_TINY], capsys, "--out",
           "other files", "results.json")
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
