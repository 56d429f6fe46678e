"""One rank of a torchrun job for the tests of compare and study across processes.

``python -m torch.distributed.run --standalone --nproc-per-node 2 distributed_driver.py ARGS``:

``ARGS`` = ``tiny-study OUT [--resume] [--die]``: the tests' small study
(``study_helpers.small_plan``) into OUT; ``--die``: rank 1 ends at once (``os._exit(3)``, as a
crash or a kill would) as it starts its first evaluation stage.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _tiny_study(out: str, resume: bool, die: bool) -> int:
    from study_helpers import small_plan

    from optenv.lab import study

    if die and _rank() == 1:
        def dying(*args: Any, **kwargs: Any) -> None:
            os._exit(3)

        study._evaluate_condition = dying
    study.run_study(small_plan(), out, resume=resume, quiet=True, threads=1, figures=False)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["tiny-study"] or len(sys.argv) < 3:
        sys.exit("usage: distributed_driver.py tiny-study OUT [--resume] [--die]")
    sys.exit(_tiny_study(sys.argv[2], "--resume" in sys.argv, "--die" in sys.argv))
