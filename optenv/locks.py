"""An exclusive lock on a run folder, so that two processes never run in one folder at once.

The rule, which also settles stale locks: the lock is the operating system's advisory lock
(``flock`` on POSIX, ``msvcrt.locking`` on Windows) on the file ``DIR/.optenv.lock``, held
through an open file descriptor for as long as the run goes on. The OS drops such a lock when the
process ends, however it ends — ``kill -9``, a crash, an out-of-memory kill — so a lock of a dead
run never blocks anyone, and there is no PID to check, no timeout, nothing to clean up by hand.
The file's text (pid, host, start time) only serves the message shown to a second run; the file
is removed when the lock is released, and one left by a killed run is simply locked again.

A second process asking for a held lock is refused at once with a ValueError saying who holds
it (no waiting: a run that waited would start from a checkpoint the first one is about to
replace). Processes forked while the lock is held share its descriptor, so they hold it too
until they exit. On Linux the lock works on local file systems and on NFS (where the kernel
maps ``flock`` to NFS byte-range locks).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = ["LOCK_FILE", "FolderLock"]

LOCK_FILE = ".optenv.lock"
#: Windows locks a byte range: one byte far past the holder's text, so that text stays readable.
_WINDOWS_LOCK_OFFSET = 1 << 20


def _try_lock(fd: int) -> bool:
    """Take the OS lock on ``fd`` without waiting; False if another open file holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


class FolderLock:
    """The lock of ``folder`` (see the module docstring), taken on construction.

    Args:
        folder: an existing folder.
        name: the argument that named the folder, for the error message (``--out``).

    ValueError if another process (or another ``FolderLock`` in this one) holds it. Release with
    :meth:`release` or by using the lock as a context manager.
    """

    def __init__(self, folder: str | os.PathLike[str], name: str = "--out") -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            if not _try_lock(fd):
                holder = self._holder(fd)
                os.close(fd)
                raise ValueError(f"{name}: {str(folder)!r} is in use by another optenv run "
                                 f"({holder}); allowed: a folder no running optenv uses (wait "
                                 "for that run to end, or stop it)")
            # A holder that was releasing may have removed the file between our open and our
            # lock: then we locked a file no one else will see, so start again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())

    @staticmethod
    def _holder(fd: int) -> str:
        """Who holds the lock, from the holder's text ("pid ... on HOST since ...")."""
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            info = json.loads(os.read(fd, 4096).decode() or "{}")
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that has not written its name yet"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # Windows cannot remove an open file: it stays
            os.unlink(self.path)
        os.close(self._fd)  # closing the descriptor drops the OS lock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:  # a lock dropped without release() (the OS would drop it too)
        with contextlib.suppress(Exception):
            self.release()
