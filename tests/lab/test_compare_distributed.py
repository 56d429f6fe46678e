"""``optenv compare`` under torchrun: 2 processes (gloo) give the one-process results.json
bit for bit, but for the run metadata (a rank that dies: tests/lab/test_study_distributed.py)."""

from __future__ import annotations

import json

from torchrun_helpers import torchrun

from optenv.lab.cli import main
from optenv.lab.compare import RUN_METADATA

#: Non-convex family (numerical f* from 4 starts, shared across ranks), tuned methods (grid
#: points shared), a line search (extra evaluations), adam (not batch-invariant: run whole on
#: one rank; its bias correction beta2**t differs in the last bit at t=32 between the CPU
#: kernel's vectorised body, used from 16 rows, and its scalar tail, hence 21 objectives:
#: 11 + 10 on 2 ranks, uneven shares, and horizon 33).
ARGS = ("compare", "--env", "optenv/NeuralNet-v0", "--methods", "gd,lbfgs,adam",
        "--n-test", "21", "--n-train", "5", "--horizon", "33", "--no-plots", "--quiet",
        "--threads", "1")


def _without(doc: dict, fields: tuple[str, ...]) -> dict:
    """``doc`` without the RUN_METADATA fields (``a.*.b``: field b of every entry of a)."""
    for field in fields:
        head, _, rest = field.partition(".*.")
        if rest:
            for entry in doc[head].values():
                del entry[rest]
        else:
            parent, _, key = head.rpartition(".")
            del (doc[parent] if parent else doc)[key]
    return doc


def test_two_processes_write_the_results_json_of_one_process(tmp_path, capsys) -> None:
    assert main([*ARGS, "--out", str(tmp_path / "one")]) == 0
    one_out = capsys.readouterr().out
    two = torchrun("-m", "optenv", *ARGS, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert a["reference"]["source"] == "numerical" and a["methods"]["gd"]["tuning"]
    assert json.dumps(_without(a, RUN_METADATA)) == json.dumps(_without(b, RUN_METADATA))
    # rank 0 alone prints: the same table, once
    table = [ln for ln in one_out.splitlines() if not ln.startswith(("f*:", "wrote"))]
    assert [ln for ln in two.stdout.splitlines()
            if not ln.startswith(("f*:", "wrote"))] == table


def test_an_optimizer_declared_batch_invariant_gives_the_same_rows_on_a_smaller_batch() -> None:
    """The declaration compare's torchrun split relies on (``batch_invariant``): a method that
    claims it gives bit-identical rows on 20 objectives at once and on 13 + 7 (adam, which
    differs there on this CPU, declares it false; whether it differs depends on the CPU's
    vector width, so only the claim is checked)."""
    import numpy as np

    from baselines.optimizers import OPTIMIZERS
    from optenv.evaluate import evaluate
    from optenv.lab.compare import batch_invariant

    env = "optenv/LogisticRegression-v0"
    for name, cls in OPTIMIZERS.items():
        whole = evaluate(cls(), env, n_test=20, horizon=40).f
        split = np.concatenate([evaluate(cls(), env, n_test=13, horizon=40).f,
                                evaluate(cls(), env, n_test=7, seed=13, horizon=40).f])
        if batch_invariant(cls()):
            assert np.array_equal(whole, split), name
