"""scikit-learn's bundled 8×8 handwritten digits: the MNIST stand-in that needs no download.

1797 grey-level images (values 0..16) of the digits 0-9, shipped inside scikit-learn (a
dependency), read with :func:`sklearn.datasets.load_digits`. Split: every fifth example (indices
4, 9, 14, ...) is TEST (359), the other 1438 are TRAIN; the examples cycle through the classes,
so both parts hold every class in about equal numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optenv.datasets.dataset import Dataset, DatasetSpec

__all__ = ["SPEC", "load_digits"]

N_EXAMPLES, TEST_EVERY = 1797, 5


def load_digits(paths: list[Path] | None = None) -> Dataset:
    """The digits :class:`Dataset` (no files: the data ship with scikit-learn)."""
    from sklearn.datasets import load_digits as sk_load  # heavy import, only when used

    bunch = sk_load()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    test = np.arange(len(y)) % TEST_EVERY == TEST_EVERY - 1
    return Dataset("digits", x[~test], y[~test], x[test], y[test], 10,
                   "scikit-learn's bundled digits (sklearn.datasets.load_digits)")


SPEC = DatasetSpec(
    name="digits",
    summary="scikit-learn's bundled 8x8 handwritten digits (64 features, 10 classes)",
    split="every fifth example (indices 4, 9, ...) TEST (359), the rest TRAIN (1438)",
    n_features=64, n_classes=10, n_train=N_EXAMPLES - N_EXAMPLES // TEST_EVERY,
    load=load_digits)
