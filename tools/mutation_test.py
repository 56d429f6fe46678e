"""Mutation testing with a hand-written mutant table: does the suite catch the bugs that matter?

Usage (from the repository root)::

    python -m tools.mutation_test                    # every mutant of tools/mutants.py
    python -m tools.mutation_test --only cg-fletcher-reeves badmm-dual-ascent-sign
    python -m tools.mutation_test --list
    python -m tools.mutation_test --markdown docs/mutation-score.md --timeout 300

For each mutant of :data:`tools.mutants.MUTANTS` it replaces the original snippet by the mutated
one in a *temporary copy* of the tree (the files git tracks plus untracked, non-ignored ones;
the working tree is never written), runs only the mutant's test files there
(``pytest -x -q -p no:cacheprovider``, one torch thread, a timeout), and restores the file. A
mutant is **killed** when the tests fail, **survived** when they pass, **timeout** when they
run past the limit (counted as killed: the bug made the tests hang), and **error** when pytest
could not run them (exit code 2-5: a mutant that breaks collection says nothing about the
tests). Before the mutants, the named test files run once unmutated: a failing baseline makes
every "kill" meaningless, so the script stops there.

Output: one JSON object per mutant on stdout, then a summary object with the score
(killed + timeout) / (mutants − errors); ``--markdown PATH`` also writes the table. Exit code 0
when every mutant is killed, 1 otherwise (2 for a bad argument or a failing baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tools.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parent.parent


def _tree_files(root: Path) -> list[str]:
    """The files of the tree: tracked ones and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=root, check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p and (root / p).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    """Copy the tree's files (see :func:`_tree_files`) into ``dest``."""
    for rel in _tree_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def check_table(mutants: Sequence[Mutant], root: Path) -> None:
    """Every original snippet occurs exactly once in its file, every test path exists, ids are
    unique; ValueError naming the mutant otherwise."""
    seen: set[str] = set()
    for m in mutants:
        if m.id in seen:
            raise ValueError(f"mutant {m.id!r}: duplicate id")
        seen.add(m.id)
        text = (root / m.path).read_text()
        n = text.count(m.original)
        if n != 1:
            raise ValueError(f"mutant {m.id!r}: the original snippet occurs {n} times in "
                             f"{m.path}, allowed: exactly once")
        for t in m.tests:
            if not (root / t.split("::")[0]).is_file():
                raise ValueError(f"mutant {m.id!r}: test file {t} does not exist")


def _pytest(tree: Path, tests: Sequence[str], timeout: float) -> tuple[str, float, str]:
    """(outcome, seconds, last line) of pytest on ``tests`` inside ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, f"over {timeout:.0f} s"
    seconds = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    last = lines[-1] if lines else proc.stderr.strip().splitlines()[-1:] or [""]
    last = last if isinstance(last, str) else last[0]
    outcome = {0: "survived", 1: "killed"}.get(proc.returncode, "error")
    return outcome, seconds, last


def run(mutants: Sequence[Mutant], timeout: float, root: Path = ROOT) -> list[dict]:
    """Baseline, then every mutant, in one temporary copy of the tree; JSON-ready rows."""
    check_table(mutants, root)
    rows = []
    with tempfile.TemporaryDirectory(prefix="optenv-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(root, tree)
        tests = sorted({t for m in mutants for t in m.tests})
        outcome, seconds, last = _pytest(tree, tests, timeout * 4)
        if outcome != "survived":
            raise RuntimeError(f"baseline: the unmutated tests did not pass ({outcome}, {last})")
        print(json.dumps({"baseline": "passed", "tests": len(tests),
                          "seconds": round(seconds, 1)}), flush=True)
        for m in mutants:
            path = tree / m.path
            original = path.read_text()
            path.write_text(original.replace(m.original, m.mutated, 1))
            try:
                outcome, seconds, last = _pytest(tree, m.tests, timeout)
            finally:
                path.write_text(original)
            row = {"id": m.id, "path": m.path, "outcome": outcome,
                   "seconds": round(seconds, 1), "why": m.why, "pytest": last}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def summary(rows: Sequence[dict]) -> dict:
    """Counts and the score (killed + timeout) / (mutants − errors)."""
    count = {k: sum(r["outcome"] == k for r in rows)
             for k in ("killed", "timeout", "survived", "error")}
    scored = len(rows) - count["error"]
    score = (count["killed"] + count["timeout"]) / scored if scored else float("nan")
    return {"mutants": len(rows), **count, "score": round(score, 4),
            "seconds": round(sum(r["seconds"] for r in rows), 1),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count()}


def _cell(text: str) -> str:
    """Text for a markdown table cell (a bare | would end the cell)."""
    return text.replace("|", "\\|")


def markdown(rows: Sequence[dict], summ: dict) -> str:
    """The table of outcomes, one row per mutant, and the score line."""
    lines = [f"Score: **{summ['killed'] + summ['timeout']} / "
             f"{summ['mutants'] - summ['error']} killed** ({summ['score']:.0%}); "
             f"survived {summ['survived']}, errors {summ['error']}; "
             f"{summ['seconds']:.0f} s of test runs.", "",
             "| mutant | file | outcome | s | the bug |", "|---|---|---|---|---|"]
    lines += [f"| `{r['id']}` | `{r['path']}` | {r['outcome']} | {r['seconds']:.0f} | "
              f"{_cell(r['why'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutation_test",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds per mutant's test run (default 300)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table here")
    args = parser.parse_args(argv)
    chosen = list(MUTANTS)
    if args.only:
        known = {m.id for m in MUTANTS}
        unknown = [i for i in args.only if i not in known]
        if unknown:
            print(f"--only: got unknown id(s) {unknown}, allowed: see --list", file=sys.stderr)
            return 2
        chosen = [m for m in MUTANTS if m.id in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.id:36s} {m.path:42s} {m.why}")
        return 0
    if not args.timeout > 0:
        print(f"--timeout: got {args.timeout}, allowed: a number > 0", file=sys.stderr)
        return 2
    try:
        rows = run(chosen, args.timeout)
    except (ValueError, RuntimeError) as err:
        print(str(err), file=sys.stderr)
        return 2
    summ = summary(rows)
    print(json.dumps({"summary": summ}), flush=True)
    if args.markdown:
        out = Path(args.markdown)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(markdown(rows, summ))
        tmp.replace(out)
    return 0 if summ["survived"] == 0 and summ["error"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
