"""``optenv study``'s user errors: one line on stderr naming the flag, exit status 2, no
traceback, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from optenv.lab.cli import main


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> None:
    assert main(["study", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optenv: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize(("argv", "words"), [
    (["--seeds", "0"], ("--seeds", "0", ">= 1")),
    (["--seeds", "two"], ("--seeds", "two")),
    (["--setting", "2015"], ("--setting", "2015", "2016")),
    (["--threads", "0"], ("--threads", "0")),
    (["--device", "meta"], ("--device", "meta")),
    (["--bogus"], ("--bogus",)),
], ids=["seeds-0", "seeds-text", "setting", "threads", "device", "unknown"])
def test_a_bad_argument_is_exit_2_with_one_line_naming_it(tmp_path, capsys, argv, words) -> None:
    out = tmp_path / "s"
    _fails([*argv, "--out", str(out), "--quiet"], capsys, *words)
    assert not out.exists()


def test_an_occupied_folder_or_a_file_is_refused_and_left_as_it_was(tmp_path, capsys) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    _fails(["--out", str(tmp_path / "busy"), "--quiet"], capsys, "--out", "other files")
    _fails(["--out", str(tmp_path / "busy"), "--resume", "--quiet"], capsys, "--resume",
           "no plan.json")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    _fails(["--out", str(tmp_path / "file"), "--quiet"], capsys, "--out", "a file")
    assert Path(tmp_path / "file").read_text() == "x"


def test_resume_of_a_missing_or_empty_folder_is_refused_not_a_new_study(tmp_path, capsys) -> None:
    """A mistyped --out with --resume used to start a whole (full, CPU) study silently."""
    _fails(["--out", str(tmp_path / "typo"), "--resume", "--quiet"], capsys, "--resume",
           "no study", "no --resume")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    _fails(["--out", str(tmp_path / "empty"), "--resume", "--quiet"], capsys, "--resume",
           "no plan.json")
    assert not any((tmp_path / "empty").iterdir())


def test_report_only_without_a_study_is_exit_2(tmp_path, capsys) -> None:
    _fails(["--report-only", "--out", str(tmp_path)], capsys, "--report-only", "study.json")


def test_a_doc_without_the_settings_block_is_refused_before_any_work(tmp_path, capsys) -> None:
    md = tmp_path / "page.md"
    md.write_text("no block here\n")
    _fails(["--out", str(tmp_path / "s"), "--doc", str(md), "--quick", "--quiet"], capsys,
           "--doc", "<!-- optenv study 2016 --quick: begin -->")
    _fails(["--out", str(tmp_path / "s"), "--doc", str(tmp_path / "missing.md"), "--quiet"],
           capsys, "--doc", "missing.md")
    assert not (tmp_path / "s").exists()

