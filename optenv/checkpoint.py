"""Files the package writes and reads back: atomic, checksummed, never unpickled.

Every result, checkpoint and saved optimiser goes through :func:`atomic_write`: the bytes go to a
temporary file next to the target, which is renamed into place only once complete, so an
interrupted run leaves the previous file (or none), never a truncated one. The file gets the
mode any other program would give it (``0o666`` less the process's umask), not the ``0o600`` of
the temporary file it started as.

Saved torch payloads (:func:`save_tagged`) carry a ``format`` tag, so loading a wrong file is a
clear ``ValueError``, and a SHA-256 checksum of their content (:func:`content_digest`: tensor
bytes, dtypes, shapes and the plain values around them), so a file changed since it was written
(a flipped bit, a truncated copy) is refused rather than read. They are read with
``torch.load(weights_only=True)`` only: a file may hold tensors and plain data (dicts, lists,
strings, numbers, bytes), nothing that only unpickling could rebuild, so reading a crafted file
cannot run code. The checksum is over the loaded content rather than the file's bytes, so it does
not depend on how a torch version lays out its zip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKSUM_KEY", "UnsafeFileError", "atomic_write", "content_digest", "file_mode",
           "load_module", "load_tagged", "read_json_object", "read_payload", "save_module",
           "save_tagged"]

#: The key of the checksum inside a saved payload.
CHECKSUM_KEY = "sha256"


class UnsafeFileError(ValueError):
    """A file that holds Python objects only unpickling could rebuild (refused, never run)."""


def file_mode() -> int:
    """The mode a new file gets from ``open()`` in this process: ``0o666`` less the umask.

    The umask is read from ``/proc/self/status`` where the OS has it (Linux), which leaves it
    alone; elsewhere it is set and restored at once (``os.umask`` has no read-only form).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None],
                 *, binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it into place
    with the mode of :func:`file_mode` (the user's umask).

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, file_mode())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else
                                                        {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of a payload's content: every tensor's dtype, shape and bytes, and the
    plain values (dicts in their order, lists, tuples, strings, bytes, numbers, None) around
    them. TypeError for anything else (such a payload would not load with ``weights_only``)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    """One value into the digest, tagged with its kind (and length), so that no two payloads
    of different structure feed the same bytes."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().resolve_conj().resolve_neg().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"D%d:" % len(obj))
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, list | tuple):
        h.update(b"%s%d:" % (b"L" if isinstance(obj, list) else b"U", len(obj)))
        for value in obj:
            _feed(h, value)
    elif isinstance(obj, bytes | bytearray):
        h.update(b"B%d:" % len(obj))
        h.update(obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"S%d:" % len(data))
        h.update(data)
    elif obj is None or isinstance(obj, bool | int | float):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"content_digest: cannot checksum a {type(obj).__name__}; allowed: "
                        "tensors, dicts, lists, tuples, strings, bytes, numbers, None")


def save_tagged(path: str | os.PathLike[str], fmt: str, payload: dict[str, Any]) -> Path:
    """``torch.save`` of ``{"format": fmt, **payload}`` with its checksum, atomically."""
    body = {"format": fmt, **payload}
    body[CHECKSUM_KEY] = content_digest(body)
    return atomic_write(path, lambda fh: torch.save(body, fh), binary=True)


def read_payload(path: str | os.PathLike[str], what: str, *,
                 map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict a file of this package holds, read with ``weights_only=True`` and checked
    against its checksum when it has one (files written before checksums have none: a caller
    that needs one checks for the :data:`CHECKSUM_KEY` entry, which stays in the dict).

    ValueError naming ``path`` if it cannot be read, is not a dict, or fails its checksum;
    :class:`UnsafeFileError` (a ValueError) if it holds objects only unpickling could rebuild.
    """
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise UnsafeFileError(
                f"path: {str(path)!r} holds Python objects ({', '.join(unsafe[:4])}) that only "
                "unpickling could rebuild, which optenv never does with a file (it could run "
                "code)") from err
        raise ValueError(f"path: cannot read {what} from {str(path)!r} ({err})") from err
    except (OSError, RuntimeError, EOFError, AttributeError, ValueError, IndexError,
            KeyError, TypeError) as err:
        raise ValueError(f"path: cannot read {what} from {str(path)!r} ({err})") from err
    if not isinstance(payload, dict):
        raise ValueError(f"path: {str(path)!r} is not {what} (it holds a "
                         f"{type(payload).__name__})")
    if CHECKSUM_KEY in payload:
        body = {k: v for k, v in payload.items() if k != CHECKSUM_KEY}
        try:
            ok = content_digest(body) == payload[CHECKSUM_KEY]
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"path: {str(path)!r} fails its checksum: it changed since it was "
                             "written (a damaged or edited copy); allowed: an intact file")
    return payload


def _unsafe_globals(path: str | os.PathLike[str]) -> list[str]:
    """The names of what a torch file would have to unpickle (read without unpickling), or []
    where torch cannot say."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        return sorted(finder(path))
    except Exception:  # an unreadable file: the caller reports the load error
        return []


def load_tagged(path: str | os.PathLike[str], fmt: str, what: str, *,
                map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The payload :func:`save_tagged` wrote with tag ``fmt`` (see :func:`read_payload`);
    ValueError naming ``path`` for another tag."""
    payload = read_payload(path, what, map_location=map_location)
    if payload.get("format") != fmt:
        raise ValueError(f"path: {str(path)!r} is not {what} (expected format {fmt!r})")
    return payload


def save_module(path: str | os.PathLike[str], fmt: str, module: torch.nn.Module,
                extra: dict[str, Any] | None = None) -> Path:
    """Save a module that has ``config()`` (its constructor arguments) with its weights."""
    return save_tagged(path, fmt, {"config": module.config(), "state_dict": module.state_dict(),
                                   "extra": extra or {}})


def load_module(path: str | os.PathLike[str], fmt: str, what: str,
                factory: Callable[..., torch.nn.Module],
                map_location: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """``(factory(**config) with the saved weights, extra)`` from :func:`save_module`."""
    payload = load_tagged(path, fmt, what, map_location=map_location)
    module = factory(**payload["config"])
    state = payload["state_dict"]
    module.to(next(iter(state.values())).dtype)
    module.load_state_dict(state)
    return module, payload["extra"]


def read_json_object(path: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a run's ``config.json``, ...); ValueError starting with
    ``name`` (the argument that led there, e.g. ``--resume``) and naming the file if it is
    missing, unreadable, not JSON, or JSON but not an object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ValueError(f"{name}: cannot read {str(path)!r} ({reason})") from err
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}: {str(path)!r} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"{name}: {str(path)!r} holds a JSON {type(value).__name__}, "
                         "allowed: a JSON object")
    return value
