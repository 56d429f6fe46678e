"""The published study numbers cannot drift from the study: docs/results.md's tables and the
README's summary table are generated blocks (``optenv study --report-only --doc PAGE``), and
here every block must equal what the study.json it came from generates. Those study.json files
are kept, gzipped, in docs/studies/; regenerating a page without keeping its study.json (or
editing a generated cell by hand) fails these tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from optenv.lab.study_report import doc_markers, render_doc, short_summary_rows
from optenv.lab.study_schema import validate_study

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ROOT / "docs" / "studies"
KEPT = ("study-2016-quick.json.gz", "study-2017-quick.json.gz")


def _study(name: str) -> dict[str, Any]:
    doc = json.loads(gzip.decompress((STUDIES / name).read_bytes()))
    validate_study(doc)
    return doc


def test_the_kept_study_json_files_are_the_two_quick_studies() -> None:
    assert sorted(p.name for p in STUDIES.glob("*.json.gz")) == list(KEPT)
    for name in KEPT:
        doc = _study(name)
        assert name == f"study-{doc['setting']}{'-quick' if doc['quick'] else ''}.json.gz"


@pytest.mark.parametrize(("page", "kinds"), [("docs/results.md", ("tables",)),
                                             ("README.md", ("summary",))])
def test_each_pages_study_blocks_are_what_their_study_json_generates(page, kinds) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    covered = 0
    for name in KEPT:
        doc = _study(name)
        present = [k for k in kinds if doc_markers(doc["setting"], doc["quick"], k)[0] in text]
        if not present:
            continue
        covered += 1
        assert render_doc(doc, text, page) == text, (
            f"{page}: the {doc['setting']} study's block differs from what docs/studies/{name} "
            "generates; run `optenv study --report-only --out DIR --doc docs/results.md --doc "
            "README.md` and keep DIR/study.json as that file")
    # docs/results.md carries both settings' tables; the README at least one summary
    assert covered == len(KEPT) if page == "docs/results.md" else covered >= 1


def test_render_doc_rewrites_only_the_blocks_and_keeps_the_hand_written_text() -> None:
    doc = _study(KEPT[0])
    tb, te = doc_markers("2016", True, "tables")
    sb, se = doc_markers("2016", True, "summary")
    other = doc_markers("2017", True, "tables")
    page = (f"# Page\n\nhand-written\n{sb}\nstale\n{se}\nmiddle\n{tb}\n| old |\n{te}\n"
            f"{other[0]}\nthe other study's block\n{other[1]}\nend\n")
    new = render_doc(doc, page)
    assert new.startswith(f"# Page\n\nhand-written\n{sb}\n`optenv study --setting 2016 --quick`")
    assert f"\n{se}\nmiddle\n{tb}\nGenerated from the `study.json`" in new
    assert new.endswith(f"\n{te}\n{other[0]}\nthe other study's block\n{other[1]}\nend\n")
    assert "stale" not in new and "| old |" not in new
    assert render_doc(doc, new) == new  # regenerating is a fixed point
    # a hand edit inside a block is undone (so the drift test above catches it)
    edited = new.replace("| gps | 0.", "| gps | 9.", 1)
    assert edited != new and render_doc(doc, edited) == new
    for broken in (page.replace(te, ""), page.replace(sb, f"{sb}\n{sb}"),
                   f"{se}\n{sb}\n", "no blocks here\n"):
        with pytest.raises(ValueError, match=r"--doc: 'p\.md' has"):
            render_doc(doc, broken, "--doc: 'p.md'")


def test_the_short_summary_holds_the_learned_methods_and_the_best_tuned_one() -> None:
    for name in KEPT:
        doc = _study(name)
        rows = short_summary_rows(doc)
        t = doc["train"]["horizon"]
        long = doc["conditions"]["horizon-10x"]
        last = str(long["horizon"])
        hand = [k for k, m in doc["methods"].items() if m["kind"] == "hand"]
        best = min(hand, key=lambda k: long["methods"][k]["mean_f_at"][last]["mean"])
        assert [r[0] for r in rows[1:]] == ["gps", "bptt-lstm", "bptt-same", f"{best} (tuned)"]
        assert rows[0][1:4] == [f"f@T={t}", f"f@10T={last}", f"diverged at {last}"]
        for row in rows[1:]:
            m = row[0].split(" ")[0]
            same = doc["conditions"]["same"]["methods"][m]
            assert row[1] == f"{same['mean_f_at'][str(t)]['mean']:.4g}"
            assert row[2] == f"{long['methods'][m]['mean_f_at'][last]['mean']:.4g}"
            assert row[3] == f"{100 * long['methods'][m]['fraction_diverged']['mean']:.0f}%"
