"""``optenv study`` end to end on a tiny plan: the study folder, study.json against its schema,
the report's tables against the JSON, resume after an interruption, and the folder guard."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from study_helpers import tiny_plan

from optenv.lab import study
from optenv.lab.cli import main
from optenv.lab.results import read_results
from optenv.lab.study_schema import read_study, validate_study


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread for this module's studies (the test machine's cores are shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread) -> Path:
    """One uninterrupted tiny study (its study folder), shared by the tests of this module."""
    out = tmp_path_factory.mktemp("study") / "s"
    study.run_study(tiny_plan(), out, quiet=True, figures=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".optenv.lock"))
    return dst


def _numbers(doc: dict[str, Any]) -> dict[str, Any]:
    """What a study computed: everything but when and how fast."""
    return {"methods": {k: {**m, "runs": [{**r, "wall_s": None} for r in m["runs"] or []]}
                        for k, m in doc["methods"].items()},
            "conditions": {k: {**c, "wall_s": None} for k, c in doc["conditions"].items()},
            "tuning": {**doc["tuning"], "wall_s": None}}


def test_a_tiny_study_writes_every_stage_and_a_study_json_that_validates(finished) -> None:
    doc = read_study(finished / "study.json")
    assert doc["schema"] == "optenv-study/1" and doc["setting"] == "2016" and doc["seeds"] == 1
    assert list(doc["methods"]) == ["gps", "bptt-lstm", "bptt-same", "gd", "adam", "cg",
                                    "lbfgs-fixed"]
    assert doc["not_applicable"] == dict(tiny_plan().not_applicable)
    for name in ("gps", "bptt-lstm", "bptt-same"):
        run = finished / doc["methods"][name]["runs"][0]["path"]
        assert (run / "checkpoint.pt").is_file()
    for c in doc["conditions"].values():
        results = read_results(finished / c["results"][0])  # compare's schema, validated
        assert results["horizon"] == c["horizon"] and results["n_test"] == 6
        for mname, m in results["methods"].items():
            assert 0.0 <= m["fraction_late_divergence"] <= 1.0
            stat = c["methods"][mname]["fraction_diverged"]
            assert stat["mean"] == stat["seed_min"] == m["fraction_diverged"]
            for t, cell in c["methods"][mname]["mean_f_at"].items():
                assert cell["mean"] == m["mean_f"][int(t)]
    # the hand-designed methods were tuned once, on the meta-train objectives at T, and the
    # same hyper-parameters are used on every axis
    tuning = json.loads((finished / "tuning.json").read_text())
    assert tuning["setup"] == {**tuning["setup"], "env_id": "optenv/LogisticRegression-v0",
                               "horizon": 4, "split": "train"}
    for c in doc["conditions"].values():
        results = read_results(finished / c["results"][0])
        assert results["methods"]["adam"]["hyperparameters"] == \
            doc["methods"]["adam"]["hyperparameters"]
    assert doc["conditions"]["horizon-10x"]["horizon"] == 40
    assert sorted(doc["conditions"]["horizon-10x"]["methods"]["gd"]["mean_f_at"], key=int) == \
        ["4", "8", "20", "40"]
    for stem in ("axis-same", "axis-horizon", "axis-architecture", "divergence",
                 "margin_of_victory"):
        assert (finished / f"{stem}.png").stat().st_size > 1000
        assert (finished / f"{stem}.svg").is_file()


def _md_tables(text: str) -> dict[str, list[list[str]]]:
    """The Markdown tables of report.md under their nearest heading (first table only)."""
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("#"):
            heading = lines[0].lstrip("# ").strip()
        elif lines and lines[0].startswith("|") and heading not in tables:
            tables[heading] = [[c.strip() for c in row.strip("|").split("|")]
                               for row in lines if not row.startswith("|---")]
    return tables


def _first_number(cell: str) -> float:
    return float(re.match(r"[-+0-9.e]+", cell).group(0))


def test_the_report_tables_hold_the_numbers_of_study_json(finished) -> None:
    doc = read_study(finished / "study.json")
    tables = _md_tables((finished / "report.md").read_text())
    for name, c in doc["conditions"].items():
        key = next(k for k in tables if k.startswith(f"{name}:"))
        head, *rows = tables[key]
        assert [r[0] for r in rows] == list(c["methods"])
        for row in rows:
            m = c["methods"][row[0]]
            for col, cell in zip(head[1:], row[1:], strict=True):
                if col.startswith("f@"):
                    assert _first_number(cell) == pytest.approx(
                        m["mean_f_at"][col[2:]]["mean"], rel=5e-4)
                elif col in ("diverged", "late"):
                    key2 = "fraction_diverged" if col == "diverged" else \
                        "fraction_late_divergence"
                    assert cell == f"{100 * m[key2]['mean']:.0f}%"
                else:
                    assert cell == ", ".join("none" if v is None else str(v)
                                             for v in m["first_upturn"])
    head, *rows = tables["Divergence"]
    assert head[1:] == list(doc["conditions"])
    for row in rows:
        for cname, cell in zip(head[1:], row[1:], strict=True):
            m = doc["conditions"][cname]["methods"][row[0]]
            assert cell == (f"{100 * m['fraction_diverged']['mean']:.0f}% / "
                            f"{100 * m['fraction_late_divergence']['mean']:.0f}%")
    head, *rows = tables["Mean f at the last iteration"]
    for row in rows:
        cname = row[0].split(" ")[0]
        last = str(doc["conditions"][cname]["horizon"])
        for mname, cell in zip(head[1:], row[1:], strict=True):
            assert float(cell) == pytest.approx(
                doc["conditions"][cname]["methods"][mname]["mean_f_at"][last]["mean"], rel=5e-4)
    head, *rows = tables["Summary"]
    same = doc["conditions"]["same"]["methods"]
    for row in rows:
        assert _first_number(row[1]) == pytest.approx(same[row[0]]["mean_f_at"]["4"]["mean"],
                                                      rel=5e-4)


def test_an_interrupted_study_resumes_to_the_uninterrupted_numbers(finished, tmp_path,
                                                                   monkeypatch) -> None:
    out = _copy(finished, tmp_path / "s")
    # undo everything after GPS's training, and the record of one finished BPTT run (so its
    # trainer resumes it from its checkpoint)
    for rel in ("tuning.json", "study.json", "report.md", "stages/tune.json",
                "stages/train-bptt-same-s0.json"):
        (out / rel).unlink()
    shutil.rmtree(out / "conditions")
    for p in (out / "stages").glob("evaluate-*.json"):
        p.unlink()
    real = study._evaluate_condition

    def interrupted(plan, cond, *args, **kwargs):
        if cond.name == "horizon-10x":
            raise KeyboardInterrupt
        return real(plan, cond, *args, **kwargs)

    monkeypatch.setattr(study, "_evaluate_condition", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(tiny_plan(), out, resume=True, quiet=True, figures=False)
    assert (out / "stages" / "evaluate-same.json").is_file()
    assert not (out / "study.json").exists()
    monkeypatch.setattr(study, "_evaluate_condition", real)
    doc, _ = study.run_study(tiny_plan(), out, resume=True, quiet=True, figures=False)
    assert _numbers(doc) == _numbers(read_study(finished / "study.json"))
    for c in doc["conditions"].values():
        a = read_results(out / c["results"][0])["methods"]
        b = read_results(finished / c["results"][0])["methods"]
        for m in a:
            np.testing.assert_array_equal(np.array(a[m]["final_f"], dtype=float),
                                          np.array(b[m]["final_f"], dtype=float))


def test_a_folder_holding_a_study_is_never_overwritten_without_resume(finished, tmp_path,
                                                                       capsys) -> None:
    out = _copy(finished, tmp_path / "s")
    before = (out / "study.json").read_bytes()
    assert main(["study", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err and "holds a study" in err
    with pytest.raises(ValueError, match="seeds"):
        study.run_study(tiny_plan(), out, seeds=2, resume=True, quiet=True)
    with pytest.raises(ValueError, match="n_test"):
        study.run_study(tiny_plan().replace(n_test=5), out, resume=True, quiet=True)
    assert (out / "study.json").read_bytes() == before


def test_report_only_redraws_the_report_and_figures_and_doc_blocks_from_study_json(
        finished, tmp_path, capsys) -> None:
    out = _copy(finished, tmp_path / "s")
    report = (out / "report.md").read_text()
    (out / "report.md").unlink()
    (out / "divergence.png").unlink()
    md = tmp_path / "page.md"
    md.write_text("# Page\n\nbefore\n<!-- optenv study 2016 --quick: begin -->\nold\n"
                  "<!-- optenv study 2016 --quick: end -->\nafter\n")
    assert main(["study", "--report-only", "--out", str(out), "--doc", str(md)]) == 0
    printed = capsys.readouterr().out
    assert (out / "report.md").read_text() == report
    assert (out / "divergence.png").is_file()
    assert (out / "conditions" / "same" / "seed0" / "mean_f.png").is_file()
    assert "bptt-same" in printed and "same: f@4" in printed
    # --doc: only the study's marked block is rewritten, with report.md's tables
    text = md.read_text()
    assert text.startswith("# Page\n\nbefore\n<!-- optenv study 2016 --quick: begin -->\n")
    assert text.endswith("<!-- optenv study 2016 --quick: end -->\nafter\n")
    assert "old" not in text
    block = text.split("begin -->\n")[1].split("<!--")[0]
    tables = _md_tables(block.replace("Summary:", "## Summary").replace(
        "Fraction of runs diverged / diverged late:", "## Divergence"))
    generated = _md_tables(report)
    assert tables["Summary"] == generated["Summary"]
    assert tables["Divergence"] == generated["Divergence"]
    # a page without this setting's block is refused before anything is redrawn
    other = tmp_path / "other.md"
    other.write_text("<!-- optenv study 2017 --quick: begin -->\n"
                     "<!-- optenv study 2017 --quick: end -->\n")
    before = other.read_text()
    (out / "divergence.png").unlink()
    assert main(["study", "--report-only", "--out", str(out), "--doc", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--doc" in err and "2016 --quick: begin" in err
    assert other.read_text() == before and not (out / "divergence.png").exists()


def test_study_json_that_breaks_the_schema_is_refused_by_field(finished) -> None:
    doc = read_study(finished / "study.json")
    bad = json.loads(json.dumps(doc))
    bad["schema"] = "optenv-study/0"
    with pytest.raises(ValueError, match=r"study\.schema"):
        validate_study(bad)
    bad = json.loads(json.dumps(doc))
    bad["conditions"]["same"]["results"].append("x.json")
    with pytest.raises(ValueError, match="results"):
        validate_study(bad)
    bad = json.loads(json.dumps(doc))
    del bad["conditions"]["dim-20"]["methods"]["gps"]["fraction_late_divergence"]
    with pytest.raises(ValueError, match="fraction_late_divergence"):
        validate_study(bad)
    bad = json.loads(json.dumps(doc))
    bad["conditions"]["same"]["methods"]["gd"]["mean_f_at"]["99"] = \
        bad["conditions"]["same"]["methods"]["gd"]["mean_f_at"]["4"]
    with pytest.raises(ValueError, match="mean_f_at"):
        validate_study(bad)
