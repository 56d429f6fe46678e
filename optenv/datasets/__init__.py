"""The classification data sets of the neural-net objectives (``MLPClassifier``).

None is ever downloaded. Two need nothing: ``digits`` (scikit-learn's bundled 8×8 digits, the
default) and ``mnist1d`` (MNIST-1D, generated). Four read the standard files a user already
has, from ``data_dir=`` or ``$OPTENV_DATA``: ``mnist`` and ``fashion-mnist`` (IDX files),
``cifar10`` and ``cifar100`` (the python-version batch files, read without unpickling code).
Each has a documented TRAIN/TEST split of its examples (:data:`DATASETS`' ``split``); the
objectives train on the TRAIN part only.

``load_dataset(name, data_dir)`` reads (or generates) a set once per process and caches it.
"""

from __future__ import annotations

import os
from pathlib import Path

from optenv.datasets.cifar import CIFAR10, CIFAR100
from optenv.datasets.dataset import Dataset, DatasetSpec
from optenv.datasets.digits import SPEC as DIGITS
from optenv.datasets.files import DATA_ENV, find_files, resolve_data_dir
from optenv.datasets.idx import FASHION_MNIST, MNIST
from optenv.datasets.mnist1d import SPEC as MNIST1D

__all__ = ["DATASETS", "DATA_ENV", "Dataset", "DatasetSpec", "check_dataset", "dataset_files",
           "load_dataset"]

#: Every data set by name, in the order errors list them.
DATASETS: dict[str, DatasetSpec] = {
    s.name: s for s in (DIGITS, MNIST1D, MNIST, FASHION_MNIST, CIFAR10, CIFAR100)}

_CACHE: dict[tuple[str, str | None], Dataset] = {}


def check_dataset(name: object) -> DatasetSpec:
    """The spec of data set ``name``; ValueError naming ``dataset`` otherwise."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"dataset: got {name!r}, allowed: {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_files(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The files data set ``name`` reads (none for the bundled and generated ones), checked to
    exist: a missing one is a ValueError naming ``data_dir``, the files and where to get
    them."""
    spec = check_dataset(name)
    if not spec.files:
        return []
    return find_files(spec.name, spec.files, spec.gz, spec.where, data_dir)


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Data set ``name`` (read from ``data_dir`` / ``$OPTENV_DATA`` if it needs files), cached
    per process by name and directory."""
    spec = check_dataset(name)
    root = resolve_data_dir(data_dir) if spec.files else None
    key = (name, None if root is None else str(root.resolve()))
    if key not in _CACHE:
        _CACHE[key] = spec.load(dataset_files(name, root))
    return _CACHE[key]
