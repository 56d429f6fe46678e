"""Every script in examples/ runs as written (the README points users at them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
#: Examples for a client that is not a dependency (RLlib pins its own Gymnasium version, so it
#: lives in an environment of its own): skipped where their module is missing.
NEEDS = {"rllib_ppo.py": "ray.rllib"}


def test_examples_folder_is_found():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_script_runs_as_written(script: Path) -> None:
    if script.name in NEEDS:
        pytest.importorskip(NEEDS[script.name])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=script.parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip(), "an example prints what it measured"
