"""``optenv train gps --resume`` refusals that tell the user what to change: the preset flag
the saved run used."""

from __future__ import annotations

from pathlib import Path

import pytest

from optenv.lab.cli import main

ENV = "optenv/LogisticRegression-v0"


def test_resume_without_the_quick_flag_the_run_used_says_to_add_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    shape = ["--conditions", "2", "--samples", "3", "--horizon", "4", "--lqr-history", "2",
             "--policy-steps", "5", "--policy-batch", "16", "--quiet"]
    assert main(["train", "gps", "--env", ENV, "--out", str(out), "--quick", "--iterations",
                 "0", *shape]) == 0
    capsys.readouterr()
    assert main(["train", "gps", "--env", ENV, "--out", str(out), "--resume", "--iterations",
                 "1", *shape]) == 2
    err = capsys.readouterr().err
    assert "the run was saved with --quick: add --quick" in err, err
    # another difference besides the preset's: no hint, the plain refusal
    assert main(["train", "gps", "--env", ENV, "--out", str(out), "--resume", "--iterations",
                 "1", *shape[:-1], "--kl-step", "0.3", "--quiet"]) == 2
    assert "saved with --quick" not in capsys.readouterr().err
