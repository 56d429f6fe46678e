"""Where file-based data sets live, and the one error a missing file gives.

A data set that is not bundled or generated is read from ``<data_dir>/<folder>/<file>``, where
``data_dir`` is the family's ``data_dir=`` argument or else the ``$OPTENV_DATA`` environment
variable, and ``<folder>/<file>`` are the names the data set's own archive unpacks to. Nothing
is ever downloaded: a missing file is a ValueError naming ``data_dir``, every file expected and
where to get them.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

__all__ = ["DATA_ENV", "find_files", "open_maybe_gz", "resolve_data_dir"]

#: The environment variable read when ``data_dir`` is not given.
DATA_ENV = "OPTENV_DATA"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """``data_dir``, or ``$OPTENV_DATA`` when it is None (None when neither is set)."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV) or None
    if data_dir is None:
        return None
    if not isinstance(data_dir, str | os.PathLike):
        raise ValueError(f"data_dir: got {data_dir!r}, allowed: None or a directory path")
    return Path(data_dir).expanduser()


def find_files(name: str, files: tuple[str, ...], gz: bool, where: str,
               data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The paths of ``files`` under the data directory (each ``f`` or, where ``gz``, ``f.gz``);
    ValueError naming ``data_dir`` and listing every expected file if any is missing."""
    root = resolve_data_dir(data_dir)
    found: list[Path] = []
    missing: list[str] = []
    for rel in files:
        candidates = [rel, rel + ".gz"] if gz else [rel]
        hit = None if root is None else next(
            (root / c for c in candidates if (root / c).is_file()), None)
        if hit is None:
            missing.append(rel + ("[.gz]" if gz else ""))
        else:
            found.append(hit)
    if missing:
        place = (f"under {str(root)!r}" if root is not None
                 else f"(no data_dir given and ${DATA_ENV} is not set)")
        raise ValueError(
            f"data_dir: dataset {name!r} needs the files {', '.join(files)} {place}; missing "
            f"{', '.join(missing)}. Nothing is downloaded: get them from {where}, put them "
            f"there, and pass data_dir= or set ${DATA_ENV}")
    return found


def open_maybe_gz(path: Path) -> bytes:
    """The bytes of a file, gunzipped if its name ends in .gz."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()
