"""Files that are never half-written: atomic writes and tagged torch payloads.

Every result, checkpoint and saved optimiser goes through :func:`atomic_write`: the bytes go to a
temporary file next to the target, which is renamed into place only once complete, so an
interrupted run leaves the previous file (or none), never a truncated one. Saved torch payloads
carry a ``format`` tag, so loading a wrong or corrupt file is a clear ``ValueError``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write", "load_module", "load_tagged", "save_module", "save_tagged"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None],
                 *, binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it into place.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
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


def save_tagged(path: str | os.PathLike[str], fmt: str, payload: dict[str, Any]) -> Path:
    """``torch.save`` of ``{"format": fmt, **payload}``, atomically."""
    return atomic_write(path, lambda fh: torch.save({"format": fmt, **payload}, fh), binary=True)


def load_tagged(path: str | os.PathLike[str], fmt: str, what: str, *,
                map_location: str | torch.device = "cpu",
                weights_only: bool = True) -> dict[str, Any]:
    """The payload :func:`save_tagged` wrote with tag ``fmt``; ValueError naming ``path``.

    ``weights_only=False`` is for the package's own checkpoints (they hold RNG states and
    plain Python objects); never use it on files from elsewhere.
    """
    try:
        payload = torch.load(path, map_location=map_location, weights_only=weights_only)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, AttributeError) as err:
        raise ValueError(f"path: cannot read {what} from {str(path)!r} ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != fmt:
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
