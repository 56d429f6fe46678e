"""optenv.datasets: the bundled, generated and file-based sets, their splits and bad files."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest

from optenv.datasets import DATA_ENV, DATASETS, load_dataset
from optenv.datasets.mnist1d import load_mnist1d
from optenv.families import MLPClassifier


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = head + array.astype(">u1").tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


def write_mnist(root, folder: str = "mnist", n: int = (12, 5)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    (root / folder).mkdir(parents=True)
    arrays = {}
    for prefix, count in zip(("train", "t10k"), n, strict=True):
        arrays[prefix] = rng.integers(0, 256, (count, 28, 28))
        arrays[prefix + "_y"] = rng.integers(0, 10, count)
        write_idx(root / folder / f"{prefix}-images-idx3-ubyte", arrays[prefix], gz=True)
        write_idx(root / folder / f"{prefix}-labels-idx1-ubyte", arrays[prefix + "_y"])
    return arrays


def write_cifar(path, n: int, label_key: bytes, classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"tiny", label_key: rng.integers(0, classes, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
             b"filenames": [b"x.png"] * n}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return batch


def test_digits_split_is_every_fifth_example_of_each_class_and_matches_its_spec():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1442, 64) and ds.x_test.shape == (355, 64)
    assert DATASETS["digits"].n_train == len(ds.y_train)
    assert np.bincount(ds.y_test).min() == 34 and np.bincount(ds.y_test).max() == 36
    train, test = ds.inputs(48)
    assert train.shape == (1442, 48) and test.shape == (355, 48)
    np.testing.assert_allclose(train.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(train.std(0), 1.0, atol=1e-12)
    assert ds.inputs(48)[0] is train  # cached


def test_mnist1d_is_the_reference_generator_output():
    ds = load_mnist1d()
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    # values of mnist1d 0.0.2.post1's make_dataset(get_dataset_args()), checked equal to 0.0
    np.testing.assert_allclose(ds.x_train[0, :4], [-0.33200567, -0.47191037, -0.77869708,
                                                   -1.00974083], atol=1e-8)
    assert ds.x_train.sum() == pytest.approx(-51.78746787509559, abs=1e-8)
    assert ds.y_train[:10].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1]


@pytest.mark.parametrize("folder", ["mnist", "fashion-mnist"])
def test_idx_files_load_gzipped_or_not(tmp_path, folder):
    arrays = write_mnist(tmp_path, folder)
    ds = load_dataset(folder, tmp_path)
    np.testing.assert_array_equal(ds.x_train, arrays["train"].reshape(12, 784))
    np.testing.assert_array_equal(ds.y_test, arrays["t10k_y"])
    fam = MLPClassifier(dataset=folder, data_dir=str(tmp_path), hidden=3, inputs=None,
                        batch_size=12)
    assert fam.d == 784 * 3 + 3 + 3 * 10 + 10
    data, x = fam.sample([0])
    assert fam.value_and_grad(x, data)[1].shape == (1, fam.d)
    with pytest.raises(ValueError, match=r"^batch_size: got 13.*12 examples"):
        MLPClassifier(dataset=folder, data_dir=str(tmp_path), batch_size=13)


def test_data_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert len(load_dataset("mnist").y_train) == 12


def test_a_missing_file_names_data_dir_the_files_and_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(ValueError, match=r"^data_dir: .*OPTENV_DATA is not set.*yann\.lecun"):
        MLPClassifier(dataset="mnist")
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"")
    with pytest.raises(ValueError, match=r"missing cifar-100-python/test\b.*toronto"):
        load_dataset("cifar100", tmp_path)


def test_a_file_that_is_not_idx_is_refused_naming_it(tmp_path):
    write_mnist(tmp_path)
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")  # header says 9, has 3
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*truncated"):
        load_dataset("mnist", tmp_path / ".")


@pytest.mark.parametrize(("name", "folder", "files", "key", "classes"), [
    ("cifar10", "cifar-10-batches-py",
     [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 10),
    ("cifar100", "cifar-100-python", ["train", "test"], b"fine_labels", 100),
])
def test_cifar_batch_files_load_without_running_pickled_code(tmp_path, name, folder, files,
                                                              key, classes):
    batches = [write_cifar(tmp_path / folder / f, 3, key, classes, i)
               for i, f in enumerate(files)]
    ds = load_dataset(name, tmp_path)
    assert ds.x_train.shape == (3 * (len(files) - 1), 3072) and ds.n_classes == classes
    np.testing.assert_array_equal(ds.x_test, batches[-1][b"data"])
    assert ds.y_train.tolist() == [label for b in batches[:-1] for label in b[key]]


def test_a_pickle_calling_anything_but_numpy_array_code_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "cifar-100-python"
    write_cifar(folder / "train", 2, b"fine_labels", 100, 0)
    (folder / "test").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"test' is not a CIFAR.*print is not allowed"):
        load_dataset("cifar100", tmp_path)
    assert "pwned" not in capsys.readouterr().out


def test_an_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"^dataset: got 'tfd', allowed: digits, mnist1d, mnist"):
        load_dataset("tfd")
