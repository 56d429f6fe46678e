"""Package a trained optimiser as a pretrained one: ``NAME.pt`` + ``NAME.json`` with provenance.

::

    optenv train gps --policy coordinatewise --features li-malik-2017-psi --quick \\
        --env optenv/LogisticRegression-v0 --out runs/gps-logreg
    optenv compare --env optenv/LogisticRegression-v0 --methods gd,adam,gps:runs/gps-logreg \\
        --n-test 100 --out runs/cmp-logreg
    python -m optenv.pretrained.make gps-logreg-psi runs/gps-logreg \\
        --command "optenv train gps ..." --compare runs/cmp-logreg/results.json \\
        --compare-command "optenv compare ..." --summary "..."

Why a tool rather than copying files: the JSON must say how the weights were made (the exact
training command, the package and torch versions) and what they reached on held-out objectives
(read from the comparison's ``results.json``, not typed in), so a shipped optimiser can be
reproduced and checked. Both files are written atomically.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

import torch

from optenv.checkpoint import atomic_write
from optenv.learned import load_run
from optenv.policy import save_coordinatewise_policy
from optenv.pretrained import FOLDER

__all__ = ["heldout_figures", "main", "make"]


def heldout_figures(results: dict[str, Any]) -> dict[str, Any]:
    """The held-out figures of an ``optenv compare`` results document: its setting, and for each
    method the mean and median f at the last iteration and the share of runs that diverged."""
    if results.get("schema") != "optenv-compare/1":
        raise ValueError("compare: got a file that is not an optenv compare results.json "
                         f"(schema {results.get('schema')!r}); allowed: schema 'optenv-compare/1'")
    methods = {
        name: {"final_mean_f": m["mean_f"][-1], "final_median_f": m["median_f"][-1],
               "initial_mean_f": m["mean_f"][0],
               "fraction_diverged": m["fraction_diverged"]}
        for name, m in results["methods"].items()}
    keys = ("env_id", "horizon", "history", "max_step", "split", "n_test", "seed", "dtype",
            "optenv_version")
    return {**{k: results.get(k) for k in keys}, "methods": methods}


def make(name: str, run: str | Path, *, command: str, compare: str | Path,
         compare_command: str, summary: str, folder: str | Path = FOLDER) -> Path:
    """Write ``folder/NAME.pt`` (the run's coordinatewise policy and its metadata) and
    ``folder/NAME.json`` (provenance); returns the JSON's path."""
    import optenv
    from optenv.checkpoint import read_json_object

    if not name or not name.replace("-", "_").isidentifier():
        raise ValueError(f"name: got {name!r}, allowed: letters, digits, '-' and '_'")
    learned = load_run(run)
    learned.row_history()  # a policy whose rows the optimiser cannot compute is refused here
    config = read_json_object(Path(run) / "config.json", "run") if Path(run).is_dir() else {}
    results = read_json_object(compare, "--compare")
    pol = learned.policy
    meta = {
        "name": name, "summary": summary,
        "trainer": config.get("trainer") or ("bptt" if "arch" in learned.metadata else "gps"),
        "training_env": learned.metadata.get("env") or learned.metadata.get("env_id"),
        "features": pol.features, "cell": pol.cell, "hidden": list(pol.hidden),
        "max_step": learned.max_step, "history": learned.history,
        "trained_kinds": list(learned.trained_kinds or pol.kinds),
        "command": command, "compare_command": compare_command,
        "heldout": heldout_figures(results),
        "optenv_version": optenv.__version__, "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_config": config,
    }
    out = Path(folder)
    save_coordinatewise_policy(str(out / f"{name}.pt"), pol, dict(learned.metadata))
    path = out / f"{name}.json"
    atomic_write(path, lambda fh: fh.write(json.dumps(meta, indent=1) + "\n"))
    for written in (out / f"{name}.pt", path):  # package data: readable by every user
        written.chmod(0o644)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m optenv.pretrained.make NAME RUN ...`` (module docstring)."""
    p = argparse.ArgumentParser(prog="python -m optenv.pretrained.make",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("name")
    p.add_argument("run", help="run folder of optenv train gps|bptt (coordinatewise)")
    p.add_argument("--command", required=True, help="the exact training command")
    p.add_argument("--compare", required=True, help="results.json of optenv compare")
    p.add_argument("--compare-command", required=True, help="the exact compare command")
    p.add_argument("--summary", required=True, help="one line: what it is")
    p.add_argument("--folder", default=str(FOLDER), help="where to write (default: the package)")
    args = p.parse_args(argv)
    try:
        path = make(args.name, args.run, command=args.command, compare=args.compare,
                    compare_command=args.compare_command, summary=args.summary,
                    folder=args.folder)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
