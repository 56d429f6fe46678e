"""optenv.locks: one process per run folder, and a killed holder never blocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from optenv import locks
from optenv.locks import LOCK_FILE, FolderLock

#: A process that takes the lock and waits; it loads optenv/locks.py alone (standard library
#: only), not the optenv package, so it starts in a fraction of a second.
HOLD = ("import importlib.util, sys, time; "
        "spec = importlib.util.spec_from_file_location('locks', sys.argv[2]); "
        "locks = importlib.util.module_from_spec(spec); spec.loader.exec_module(locks); "
        "lock = locks.FolderLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)")


def test_a_second_lock_is_refused_until_the_first_is_released(tmp_path) -> None:
    first = FolderLock(tmp_path)
    with pytest.raises(ValueError, match=rf"--out: .* is in use by another optenv run \(pid "
                                         rf"{os.getpid()} on "):
        FolderLock(tmp_path)
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    with FolderLock(tmp_path) as again:
        assert again.held
    assert not again.held


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs kill -9")
def test_a_lock_whose_holder_was_killed_does_not_block(tmp_path) -> None:
    """The rule: the OS drops the lock with the process, so kill -9 leaves a lock file that
    blocks no one."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), locks.__file__],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"pid {holder.pid} on "):
            FolderLock(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (tmp_path / LOCK_FILE).exists()  # left behind by the killed run ...
    with FolderLock(tmp_path):  # ... and taken at once
        pass
