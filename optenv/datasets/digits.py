"""scikit-learn's bundled 8×8 handwritten digits: the MNIST stand-in that needs no download.

1797 grey-level images (values 0..16) of the digits 0-9, shipped inside scikit-learn (a
dependency), read with :func:`sklearn.datasets.load_digits`. Split, stratified: of each class's
examples, in file order, every fifth (its 5th, 10th, ...) is TEST (355 in all, 34 to 36 a
class), the other 1442 are TRAIN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optenv.datasets.dataset import Dataset, DatasetSpec

__all__ = ["SPEC", "load_digits"]

TEST_EVERY = 5
#: TRAIN examples (1797 in all, 355 of them TEST); a test checks it against the data
N_TRAIN = 1442


def load_digits(paths: list[Path] | None = None) -> Dataset:
    """The digits :class:`Dataset` (no files: the data ship with scikit-learn)."""
    from sklearn.datasets import load_digits as sk_load  # heavy import, only when used

    bunch = sk_load()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        test[np.flatnonzero(y == c)[TEST_EVERY - 1::TEST_EVERY]] = True
    return Dataset("digits", x[~test], y[~test], x[test], y[test], 10,
                   "scikit-learn's bundled digits (sklearn.datasets.load_digits)")


SPEC = DatasetSpec(
    name="digits",
    summary="scikit-learn's bundled 8x8 handwritten digits (64 features, 10 classes)",
    split="stratified: every fifth example of each class TEST (355), the rest TRAIN (1442)",
    n_features=64, n_classes=10, n_train=N_TRAIN,
    load=load_digits)
