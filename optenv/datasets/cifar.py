"""CIFAR-10 and CIFAR-100 from their python-version files, read without running pickled code.

The "python version" archives (cifar-10-python.tar.gz, cifar-100-python.tar.gz from
https://www.cs.toronto.edu/~kriz/cifar.html) hold pickles: dicts with ``data`` (uint8
[n, 3072], the red, green and blue planes of 32×32 images) and ``labels`` (CIFAR-10) or
``fine_labels`` (CIFAR-100). A pickle can run arbitrary code, so they are never read with
``pickle.load``: :class:`_ArrayUnpickler` resolves only the globals that rebuild a NumPy array
(``numpy.core.multiarray._reconstruct`` or ``numpy._core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``) and ``_codecs.encode`` (how Python 3 stores bytes in a
protocol-2 pickle); any other global is an error naming the file, and object arrays are refused.
That is the standard library's documented way of restricting an unpickler ("Restricting
Globals"), chosen over asking users to convert the files first: the files load as they are
downloaded.

Files: ``<data_dir>/cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` (TRAIN, 50 000) and
``test_batch`` (TEST, 10 000); ``<data_dir>/cifar-100-python/train`` (TRAIN, 50 000) and
``test`` (TEST, 10 000), fine labels (100 classes).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from optenv.datasets.dataset import Dataset, DatasetSpec

__all__ = ["CIFAR10", "CIFAR100", "read_cifar_pickle"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, strings, numbers and NumPy arrays, nothing
    else (every other global raises)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR batch file's dict, keys decoded to str; ValueError naming the file if it is not
    a dict of plain data and arrays."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as err:
        raise ValueError(f"data_dir: {str(path)!r} is not a CIFAR python-version batch file "
                         f"({err}); allowed: the files of the CIFAR python archives") from err
    if not isinstance(obj, dict):
        raise ValueError(f"data_dir: {str(path)!r} holds a {type(obj).__name__}, allowed: "
                         "a CIFAR batch dict")
    out = {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}
    for v in out.values():
        if isinstance(v, np.ndarray) and v.dtype == object:
            raise ValueError(f"data_dir: {str(path)!r} holds an object array, allowed: "
                             "numeric arrays")
    return out


def _part(paths: list[Path], label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Features [n, 3072] and labels [n] of the batch files ``paths``, concatenated."""
    xs, ys = [], []
    for path in paths:
        batch = read_cifar_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise ValueError(f"data_dir: {str(path)!r} lacks 'data' or {label_key!r}; "
                             f"has {sorted(batch)}")
        x = np.asarray(batch["data"])
        y = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise ValueError(f"data_dir: {str(path)!r} has data of shape {x.shape} and "
                             f"{len(y)} labels; allowed: [n, 3072] and n labels")
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"data_dir: {str(path)!r} has labels outside 0..{n_classes - 1}")
        xs.append(x.astype(np.float64))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _loader(name: str, n_train_files: int, label_key: str, n_classes: int
            ) -> Callable[[list[Path]], Dataset]:
    def load(paths: list[Path]) -> Dataset:
        x_tr, y_tr = _part(paths[:n_train_files], label_key, n_classes)
        x_te, y_te = _part(paths[n_train_files:], label_key, n_classes)
        return Dataset(name, x_tr, y_tr, x_te, y_te, n_classes,
                       f"CIFAR python batch files in {paths[0].parent}")

    return load


_WHERE = "https://www.cs.toronto.edu/~kriz/cifar.html ({}, unpacked)"
CIFAR10 = DatasetSpec(
    name="cifar10", summary="CIFAR-10 from its python batch files (3072 features, 10 classes)",
    split="the files' own: data_batch_1..5 TRAIN (50 000), test_batch TEST (10 000)",
    n_features=3072, n_classes=10, load=_loader("cifar10", 5, "labels", 10),
    files=(*(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
           "cifar-10-batches-py/test_batch"),
    where=_WHERE.format("cifar-10-python.tar.gz"))
CIFAR100 = DatasetSpec(
    name="cifar100",
    summary="CIFAR-100 from its python files, fine labels (3072 features, 100 classes)",
    split="the files' own: train TRAIN (50 000), test TEST (10 000)",
    n_features=3072, n_classes=100, load=_loader("cifar100", 1, "fine_labels", 100),
    files=("cifar-100-python/train", "cifar-100-python/test"),
    where=_WHERE.format("cifar-100-python.tar.gz"))
