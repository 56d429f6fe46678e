"""Running a command as a real torchrun job of 2 processes (gloo, CPU), and reading results
files without the fields that describe the run rather than its numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().with_name("distributed_driver.py")
#: Keys that differ between two runs of the same work whatever the number of processes: when
#: it ran, how long it took, with which versions, and (study) the folder it was written to.
#: compare's list is optenv.lab.compare.RUN_METADATA; the study adds the stage records'
#: wall_s and each learned method's absolute run folder.
RUN_KEYS = ("created", "optenv_version", "torch_version", "wall_s", "path")


def torchrun(*argv: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 ARGV`` from the
    repository root, one torch thread per rank, collectives timing out after 60 s."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]), "OMP_NUM_THREADS": "1", "OPTENV_DIST_TIMEOUT": "60"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         *map(str, argv)], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def without_run_keys(obj: Any) -> Any:
    """``obj`` (parsed JSON) with every key of :data:`RUN_KEYS` removed, at any depth."""
    if isinstance(obj, dict):
        return {k: without_run_keys(v) for k, v in obj.items() if k not in RUN_KEYS}
    if isinstance(obj, list):
        return [without_run_keys(v) for v in obj]
    return obj
