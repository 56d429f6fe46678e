"""``optenv study`` under torchrun: a rank that dies ends the study, ``--resume`` under
torchrun finishes it from what was written, and every file is the one-process study's but for
the run metadata."""

from __future__ import annotations

import json
import re
import shutil
import time

from study_helpers import small_plan
from torchrun_helpers import DRIVER, torchrun, without_run_keys

from optenv.lab import study
from optenv.lab.cli import main
from optenv.lab.study_report import doc_markers


def test_a_study_on_two_ranks_survives_a_dead_rank_by_resume_and_equals_one_process(
        tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    study.run_study(small_plan(), one, quiet=True, threads=1, figures=False)
    t0 = time.perf_counter()
    died = torchrun(DRIVER, "tiny-study", two, "--die")
    assert died.returncode != 0
    assert time.perf_counter() - t0 < 55  # torchrun ended rank 0 before the 60 s timeout
    # and its summary names the rank that died first, and how
    assert re.search(r"Root Cause.*?rank\s*:\s*1 .*?exitcode\s*:\s*3", died.stderr, re.S)
    # what the ranks finished before rank 1 died is on disk: the training runs and tuning
    for name in ("train-gps-s0", "train-bptt-lstm-s0", "tune"):
        assert (two / "stages" / f"{name}.json").is_file(), name
    assert not (two / "study.json").exists()
    resumed = torchrun(DRIVER, "tiny-study", two, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    files = sorted(p.relative_to(one) for p in one.rglob("*.json") if p.parts[-2] != "stages")
    assert len(files) > 5 and any(p.name == "results.json" for p in files)
    for rel in files:
        a, b = (json.loads((root / rel).read_text()) for root in (one, two))
        assert without_run_keys(a) == without_run_keys(b), rel
    assert (two / "report.md").is_file()
    shutil.rmtree(tmp_path)


def test_the_cli_on_a_rank_other_than_0_neither_prints_nor_writes_the_doc(
        tmp_path, monkeypatch, capsys) -> None:
    page = tmp_path / "page.md"
    page.write_text("\n".join(doc_markers("2016", True)) + "\n")
    before = page.read_text()
    monkeypatch.setattr(study, "run_study", lambda *a, **k: ({}, []))  # what rank 1 gets
    assert main(["study", "--quick", "--out", str(tmp_path / "s"), "--doc", str(page)]) == 0
    assert capsys.readouterr().out == "" and page.read_text() == before
