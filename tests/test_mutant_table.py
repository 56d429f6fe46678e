"""The mutation table (tools/mutants.py) still fits the code: a refactor that moves a mutant's
snippet would otherwise only show when someone runs the (slow) mutation script."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_each_mutant_applies_once_and_names_existing_tests(mutant) -> None:
    source = (ROOT / mutant.path).read_text()
    assert source.count(mutant.original) == 1, f"{mutant.id}: snippet not found exactly once"
    assert mutant.original != mutant.mutated
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).exists(), f"{mutant.id}: no {test}"
