"""A classification data set as the neural-net objectives use it: arrays, split, preprocessing.

Every data set the package reads (:mod:`optenv.datasets`) becomes one :class:`Dataset`: float64
features and int64 labels for a documented TRAIN part (the examples objectives are trained on)
and TEST part (held back: no objective reads it; there for a user's generalisation checks).
:meth:`Dataset.inputs` is what a network sees, Li & Malik 2017's preprocessing (§4: "a randomly
projected and normalized version of the MNIST training set with dimensionality 48 and unit
variance in each dimension"): optionally a fixed random projection to ``k`` dimensions, then each
dimension centred and scaled to unit variance with statistics of the TRAIN part.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from optenv.rng import KeyedRNG

__all__ = ["PROJECTION_KEY", "Dataset", "DatasetSpec", "standardise"]

#: The key of the random projection (:meth:`Dataset.inputs`): one fixed matrix per (data set
#: size, k), the same for every instance, split and machine (counter-based, see optenv.rng).
PROJECTION_KEY = 0x4C4D3137  # "LM17"
#: A feature whose TRAIN standard deviation is below this (MNIST's empty border pixels) is only
#: centred, not scaled.
STD_FLOOR = 1e-8


def standardise(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centre each column and scale it to unit variance with the TRAIN part's statistics;
    the same affine map applied to ``others``."""
    mean = train.mean(0)
    std = train.std(0)
    std = np.where(std < STD_FLOOR, 1.0, std)
    return tuple((a - mean) / std for a in (train, *others))


@dataclass(frozen=True, eq=False)
class Dataset:
    """One data set's examples: ``x_train`` [n_train, n_features] float64, ``y_train``
    [n_train] int64 in [0, n_classes), and the same for the TEST part. ``source`` says where
    the examples came from (a package, a generator, files)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    source: str
    _inputs: dict[int | None, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False)

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def inputs(self, k: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) inputs of a network: the features randomly projected to ``k``
        dimensions (``None``: kept as they are), then standardised on the TRAIN part.

        The projection is a Gaussian matrix [n_features, k] drawn from
        :data:`PROJECTION_KEY`, applied to the standardised features (so raw pixel scales do
        not matter); ``k`` may exceed n_features (the projected inputs then have rank
        n_features). Cached per ``k``."""
        if k not in self._inputs:
            train, test = standardise(self.x_train, self.x_test)
            if k is not None:
                rng = KeyedRNG(torch.tensor([PROJECTION_KEY], dtype=torch.int64))
                proj = rng.normal(self.n_features, k)[0].numpy() / math.sqrt(k)
                train, test = standardise(train @ proj, test @ proj)
            self._inputs[k] = (np.ascontiguousarray(train), np.ascontiguousarray(test))
        return self._inputs[k]


@dataclass(frozen=True)
class DatasetSpec:
    """What the package knows about a data set before reading it.

    ``n_features`` and ``n_classes`` fix a network's input and output widths (so a family's d
    is known without loading anything); ``n_train`` is the TRAIN part's size where it is fixed
    (the bundled and generated sets; None for files, read on load). ``files`` are the paths,
    relative to the data directory, a file-based set reads (each may also be gzipped where
    ``gz`` says so); ``where`` says where to get them. ``load(paths)`` builds the
    :class:`Dataset` from the paths of ``files`` found under the data directory, in order
    (an empty list for the sets that need no files).
    """

    name: str
    summary: str
    split: str
    n_features: int
    n_classes: int
    load: Callable[[list[Path]], Dataset]
    n_train: int | None = None
    files: tuple[str, ...] = ()
    gz: bool = False
    where: str = ""
