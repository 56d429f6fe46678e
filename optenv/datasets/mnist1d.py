"""MNIST-1D, generated procedurally: a small, hard 1-D analogue of MNIST (no files, no network).

Greydanus & Kobak, "Scaling down deep learning with MNIST-1D" (arXiv:2011.14439). Each example
is one of ten hand-made 1-D digit templates, padded, dilated, scaled, translated, given
correlated and i.i.d. noise and sheared, then resampled to 40 points; 5000 examples, the first
4000 (after a seeded shuffle) TRAIN and the last 1000 TEST, exactly the split of the reference
code.

Why vendored rather than a dependency: the ``mnist1d`` package (0.0.2.post1 on the registry)
generates offline through ``mnist1d.data.make_dataset``, but importing it needs ``requests`` and
``matplotlib`` (its ``get_dataset`` downloads by default), and it seeds NumPy's *global* random
state, which would change a user's own random numbers. This module is the reference generator
(``make_dataset`` with ``get_dataset_args()``' defaults, seed 42), rewritten around a private
``numpy.random.RandomState(42)`` that makes the same draws in the same order, and ``np.interp``
for ``scipy.interpolate.interp1d(kind="linear")``; it reproduces the reference data set to
float64 rounding (checked against mnist1d 0.0.2.post1; ``tests/optenv/test_datasets.py`` pins
values of it).

Attribution: MNIST-1D, Copyright (c) 2020 Sam Greydanus and the mnist1d contributors (Peter
Steinbach, Karim, Dmitry Kobak, Jakob Jordan), https://github.com/greydanus/mnist1d, licensed
under the Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0). Changes
from the original: the random state is a private RandomState, the interpolation is np.interp,
no download or caching, no pickles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optenv.datasets.dataset import Dataset, DatasetSpec

__all__ = ["SPEC", "load_mnist1d", "templates"]

#: The reference generator's defaults (mnist1d.data.get_dataset_args).
NUM_SAMPLES = 5000
TRAIN_SPLIT = 0.8
TEMPLATE_LEN = 12
PADDING = (36, 60)
SCALE_COEFF = 0.4
MAX_TRANSLATION = 48
CORR_NOISE_SCALE = 0.25
IID_NOISE_SCALE = 2e-2
SHEAR_SCALE = 0.75
FINAL_SEQ_LENGTH = 40
SEED = 42


def templates() -> np.ndarray:
    """The ten 12-point digit templates [10, 12], whitened and starting at 0, scaled by 1/6."""
    t = np.asarray([
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ])
    t = t - t.mean(1, keepdims=True)
    t = t / t.std(1, keepdims=True)
    t = t - t[:, :1]
    return t / 6.0


def _interpolate(x: np.ndarray, n: int) -> np.ndarray:
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def _transform(x: np.ndarray, rs: np.random.RandomState) -> np.ndarray:
    """One noisy example from a template (the reference ``transform``, same draw order)."""
    from scipy.ndimage import gaussian_filter

    low, high = PADDING
    p = low + int(rs.rand() * (high - low + 1))
    new_x = np.concatenate([x + 1e-8, np.zeros(p)])  # pad
    new_x = _interpolate(new_x, TEMPLATE_LEN + PADDING[-1])  # dilate
    new_x = new_x * (1 + SCALE_COEFF * (rs.rand() - 0.5))  # scale
    k = rs.choice(MAX_TRANSLATION)  # translate (k = 0 leaves x as it is)
    new_x = np.concatenate([new_x[-k:], new_x[:-k]]) if k else new_x
    mask = new_x != 0
    corr = gaussian_filter(CORR_NOISE_SCALE * rs.randn(*new_x.shape), 2)
    new_x = mask * new_x + (1 - mask) * corr
    new_x = new_x + IID_NOISE_SCALE * rs.randn(*new_x.shape)
    coeff = SHEAR_SCALE * (rs.rand() - 0.5)  # shear
    new_x = new_x - coeff * np.linspace(-0.5, 0.5, len(new_x))
    return _interpolate(new_x, FINAL_SEQ_LENGTH)


def load_mnist1d(paths: list[Path] | None = None) -> Dataset:
    """The MNIST-1D :class:`Dataset`, generated (about a second; no files)."""
    rs = np.random.RandomState(SEED)
    temp = templates()
    per_class = NUM_SAMPLES // len(temp)
    xs, ys = [], []
    for label in range(len(temp)):
        for _ in range(per_class):
            xs.append(_transform(temp[label], rs))
            ys.append(label)
    order = rs.permutation(len(ys))
    x = np.stack(xs)[order]
    y = np.asarray(ys, dtype=np.int64)[order]
    x = (x - x.mean()) / x.std()
    cut = int(len(y) * TRAIN_SPLIT)
    return Dataset("mnist1d", x[:cut], y[:cut], x[cut:], y[cut:], 10,
                   "MNIST-1D, generated (Greydanus & Kobak; vendored generator, seed 42)")


SPEC = DatasetSpec(
    name="mnist1d",
    summary="MNIST-1D, generated procedurally (40 features, 10 classes)",
    split="the reference generator's: 4000 TRAIN, 1000 TEST (after its seeded shuffle)",
    n_features=FINAL_SEQ_LENGTH, n_classes=10, n_train=int(NUM_SAMPLES * TRAIN_SPLIT),
    load=load_mnist1d)
