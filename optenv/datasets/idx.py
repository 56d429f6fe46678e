"""MNIST and Fashion-MNIST from their IDX files (the format LeCun et al. distribute).

IDX: two zero bytes, a type byte (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian uint32,
then the values, big-endian, row-major. Images [n, 28, 28] become features [n, 784] (raw 0..255;
the objective standardises them), labels [n].

Files, under ``<data_dir>/mnist/`` or ``<data_dir>/fashion-mnist/``, each also accepted gzipped
as distributed: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (TRAIN, 60 000),
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (TEST, 10 000).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from optenv.datasets.dataset import Dataset, DatasetSpec
from optenv.datasets.files import open_maybe_gz

__all__ = ["FASHION_MNIST", "MNIST", "read_idx"]

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
          "t10k-labels-idx1-ubyte")


def read_idx(path: Path) -> np.ndarray:
    """The array an IDX file (optionally gzipped) holds; ValueError naming the file if its
    header or length is not IDX."""
    raw = open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES or raw[3] == 0:
        raise ValueError(f"data_dir: {str(path)!r} is not an IDX file (bad magic number "
                         f"{raw[:4].hex() or 'empty'}); allowed: the IDX files of MNIST / "
                         "Fashion-MNIST")
    ndim = raw[3]
    head = 4 + 4 * ndim
    shape = tuple(int(v) for v in np.frombuffer(raw[4:head], dtype=">u4")) if \
        len(raw) >= head else ()
    dtype = np.dtype(_TYPES[raw[2]])
    count = int(np.prod(shape)) if shape else -1
    if count < 0 or len(raw) != head + count * dtype.itemsize:
        raise ValueError(f"data_dir: {str(path)!r} is truncated or padded (header says shape "
                         f"{shape}, the file has {len(raw)} bytes)")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape)


def _loader(name: str) -> Callable[[list[Path]], Dataset]:
    """The loader of an MNIST-format set from its four files (in the order of _FILES)."""

    def load(paths: list[Path]) -> Dataset:
        xs, ys = [], []
        for images, labels in ((paths[0], paths[1]), (paths[2], paths[3])):
            x, y = read_idx(images), read_idx(labels)
            if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"data_dir: {str(images)!r} and {str(labels)!r} do not match "
                                 f"(shapes {x.shape} and {y.shape}); allowed: n images and n "
                                 "labels")
            if len(y) and (y.min() < 0 or y.max() > 9):
                raise ValueError(f"data_dir: {str(labels)!r} has labels outside 0..9")
            xs.append(x.reshape(len(x), -1).astype(np.float64))
            ys.append(y.astype(np.int64))
        if xs[0].shape[1] != 784 or xs[1].shape[1] != 784:
            raise ValueError(f"data_dir: {name} images must be 28x28; got "
                             f"{xs[0].shape[1]} and {xs[1].shape[1]} pixels")
        return Dataset(name, xs[0], ys[0], xs[1], ys[1], 10, f"IDX files in {paths[0].parent}")

    return load


MNIST = DatasetSpec(
    name="mnist", summary="MNIST from its IDX files (784 features, 10 classes)",
    split="the files' own: train-* TRAIN (60 000), t10k-* TEST (10 000)",
    n_features=784, n_classes=10,
    load=_loader("mnist"), files=tuple(f"mnist/{f}" for f in _FILES), gz=True,
    where="http://yann.lecun.com/exdb/mnist/ (mirrored at "
          "https://ossci-datasets.s3.amazonaws.com/mnist/)")
FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    summary="Fashion-MNIST from its IDX files (784 features, 10 classes)",
    split="the files' own: train-* TRAIN (60 000), t10k-* TEST (10 000)",
    n_features=784, n_classes=10,
    load=_loader("fashion-mnist"), files=tuple(f"fashion-mnist/{f}" for f in _FILES), gz=True,
    where="https://github.com/zalandoresearch/fashion-mnist (its data/fashion folder)")
