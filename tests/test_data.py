"""Tests of fastconv.data: seeded splits, batching, normalisation, and the digits / MNIST /
CIFAR-10 loaders (on tiny files written here; nothing is downloaded)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from fastconv import data

# ======================================================================================
# Splits
# ======================================================================================


def labelled(n=200, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)
    return x, rng.integers(0, classes, n)


@pytest.mark.parametrize("stratify", [True, False])
def test_split_partitions_and_is_seeded(stratify):
    x, y = labelled()
    train, val, test = data.train_val_test_split(x, y, 0.15, 0.25, seed=3, stratify=stratify)
    ids = [s.x[:, 0, 0, 0].astype(int) for s in (train, val, test)]
    everything = np.concatenate(ids)
    assert sorted(everything) == list(range(200))  # disjoint and complete
    assert len(test.y) == 50
    assert len(val.y) == 30
    for split, idx in zip((train, val, test), ids):
        np.testing.assert_array_equal(split.y, y[idx])  # labels stay aligned
        assert split.x.dtype == np.float32
    again = data.train_val_test_split(x, y, 0.15, 0.25, seed=3, stratify=stratify)
    for a, b in zip((train, val, test), again):
        np.testing.assert_array_equal(a.x, b.x)
    other = data.train_val_test_split(x, y, 0.15, 0.25, seed=4, stratify=stratify)
    assert not np.array_equal(other[2].x, test.x)


def test_stratified_split_keeps_class_proportions():
    y = np.repeat(np.arange(5), [100, 50, 30, 10, 10])
    x = np.zeros((len(y), 1, 1, 1), np.float32)
    train, val, test = data.train_val_test_split(x, y, 0.1, 0.2, seed=0)
    for label, count in enumerate([100, 50, 30, 10, 10]):
        assert (test.y == label).sum() == round(count * 0.2)
        assert (val.y == label).sum() == round(count * 0.1)
    # small classes: per-class rounding would give no validation set at all
    y = np.repeat(np.arange(10), 4)
    _, val, test = data.train_val_test_split(np.zeros((40, 1)), y, 0.1, 0.25, seed=0)
    assert len(val.y) == 4
    assert len(test.y) == 10
    assert len(set(val.y)) == 4


def test_split_validation_and_empty_parts():
    x, y = labelled(20)
    train, val, test = data.train_val_test_split(x, y, 0.0, 0.5, seed=0)
    assert len(val.y) == 0
    assert val.x.shape == (0, 1, 2, 2)
    assert len(train.y) + len(test.y) == 20
    with pytest.raises(ValueError, match="val_fraction and test_fraction must be"):
        data.train_val_test_split(x, y, 0.5, 0.5)
    with pytest.raises(ValueError, match="x has 20 samples but y has 5"):
        data.train_val_test_split(x, y[:5])


# ======================================================================================
# DataLoader
# ======================================================================================


def test_loader_batches_in_order():
    x, y = labelled(10)
    loader = data.DataLoader(x, y, batch_size=4)
    batches = list(loader)
    assert len(loader) == 3
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    assert len(data.DataLoader(x, y, batch_size=4, drop_last=True)) == 2
    assert [len(b[1]) for b in data.DataLoader(x, y, batch_size=4, drop_last=True)] == [4, 4]
    single = list(data.DataLoader(x, batch_size=5))
    assert isinstance(single[0], np.ndarray)
    assert single[0].shape == (5, 1, 2, 2)


def test_loader_shuffles_every_epoch_reproducibly():
    x, y = labelled(50)
    loader = data.DataLoader(x, y, batch_size=8, shuffle=True, seed=1)
    epoch1 = np.concatenate([b[0][:, 0, 0, 0] for b in loader])
    epoch2 = np.concatenate([b[0][:, 0, 0, 0] for b in loader])
    assert sorted(epoch1) == sorted(epoch2) == list(range(50))
    assert not np.array_equal(epoch1, epoch2)  # a new order each epoch
    assert not np.array_equal(epoch1, np.arange(50))
    for xb, yb in loader:  # samples and labels stay paired
        np.testing.assert_array_equal(yb, y[xb[:, 0, 0, 0].astype(int)])
        assert xb.flags.c_contiguous
    replay = data.DataLoader(x, y, batch_size=8, shuffle=True, seed=1)
    np.testing.assert_array_equal(np.concatenate([b[0][:, 0, 0, 0] for b in replay]), epoch1)
    from_dataset = data.DataLoader(data.Dataset(x, y), batch_size=8)
    assert len(next(iter(from_dataset))) == 2


def test_loader_validation():
    x, y = labelled(10)
    with pytest.raises(ValueError, match=r"different lengths: \[10, 3\]"):
        data.DataLoader(x, y[:3])
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        data.DataLoader(x, y, batch_size=0)
    with pytest.raises(ValueError, match="DataLoader needs at least one array"):
        data.DataLoader()


# ======================================================================================
# Normalizer
# ======================================================================================


def test_normalizer_fits_on_train_per_channel():
    rng = np.random.default_rng(0)
    train = (
        rng.normal([1.0, -2.0, 5.0], [2.0, 0.5, 3.0], (400, 4, 4, 3))
        .transpose(0, 3, 1, 2)
        .astype(np.float32)
    )
    test = train[:10] + np.float32(1.0)
    norm = data.Normalizer()
    out = norm.fit_transform(train)
    assert out.dtype == np.float32
    assert norm.mean.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-4)
    # the test set uses the training statistics
    np.testing.assert_allclose(norm.transform(test), out[:10] + 1 / norm.std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.inverse_transform(out), train, rtol=1e-5, atol=1e-4)
    scalar = data.Normalizer(per_channel=False).fit(train)
    assert scalar.mean.size == 1
    constant = data.Normalizer().fit(np.ones((4, 1, 2, 2), np.float32))
    assert np.isfinite(constant.transform(np.ones((1, 1, 2, 2), np.float32))).all()
    with pytest.raises(RuntimeError, match="not fitted"):
        data.Normalizer().transform(train)


# ======================================================================================
# Digits (scikit-learn)
# ======================================================================================


def test_load_digits():
    pytest.importorskip("sklearn")
    digits = data.load_digits()
    assert digits.x.shape == (1797, 1, 8, 8)
    assert digits.x.dtype == np.float32
    assert digits.y.dtype == np.int64
    assert set(digits.y) == set(range(10))
    assert digits.x.min() == 0.0
    assert digits.x.max() == 1.0
    splits = data.load_dataset("digits", seed=0)
    sizes = [len(s.y) for s in splits[:3]]
    assert sum(sizes) == 1797
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=10)
    assert splits.num_classes == 10


# ======================================================================================
# MNIST idx files
# ======================================================================================


def idx_bytes(array, code=0x08):
    array = np.asarray(array)
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(dtype).tobytes()


def write_mnist(directory, n_train=12, n_test=5, gz=False, dotted=False, size=28):
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[split] = (images, labels)
        for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
            name = f"{split}-{kind}-idx{ndim}-ubyte"
            if dotted:
                name = name.replace("-idx", ".idx")
            payload = idx_bytes(array)
            if gz:
                (directory / (name + ".gz")).write_bytes(gzip.compress(payload))
            else:
                (directory / name).write_bytes(payload)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    train, test = data.load_mnist(tmp_path)
    assert train.x.shape == (12, 1, 28, 28)
    assert test.x.shape == (5, 1, 28, 28)
    assert train.x.dtype == np.float32
    assert train.y.dtype == np.int64
    np.testing.assert_allclose(train.x[:, 0], arrays["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(test.y, arrays["t10k"][1])


def test_load_mnist_torchvision_layout_and_dotted_names(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", gz=True)
    train, _ = data.load_mnist(tmp_path)
    assert len(train.y) == 12
    write_mnist(tmp_path / "dots", dotted=True)
    train, _ = data.load_mnist(tmp_path / "dots")
    assert len(train.y) == 12


def test_load_mnist_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        data.load_mnist(tmp_path / "nowhere")
    write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError) as info:
        data.load_mnist(tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(info.value)
    assert str(tmp_path) in str(info.value)
    assert "never downloads" in str(info.value)


def test_read_idx_types_and_corruption(tmp_path):
    values = np.arange(-6, 6).reshape(3, 4)
    for code, dtype in (
        (0x09, np.int8),
        (0x0B, np.int16),
        (0x0C, np.int32),
        (0x0D, np.float32),
        (0x0E, np.float64),
    ):
        path = tmp_path / f"a{code}"
        path.write_bytes(idx_bytes(values, code))
        out = data.read_idx(path)
        assert out.dtype == np.dtype(dtype)
        assert out.dtype.isnative
        np.testing.assert_array_equal(out, values)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an idx file"):
        data.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(np.zeros((4, 4), np.uint8))[:-3])
    with pytest.raises(ValueError, match="announces shape"):
        data.read_idx(short)
    with pytest.raises(FileNotFoundError):
        data.read_idx(tmp_path / "absent")
    write_mnist(tmp_path / "mismatch")
    (tmp_path / "mismatch" / "train-labels-idx1-ubyte").write_bytes(
        idx_bytes(np.zeros(3, np.uint8))
    )
    with pytest.raises(ValueError, match="12 images but 3 labels"):
        data.load_mnist(tmp_path / "mismatch")


# ======================================================================================
# CIFAR-10 python batches
# ======================================================================================

CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_batches(n=3):
    rng = np.random.default_rng(0)
    out = {}
    for i, name in enumerate(CIFAR_NAMES):
        out[name] = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n + i % 2)],
            b"data": rng.integers(0, 256, (n + i % 2, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * (n + i % 2),
        }
    return out


def write_cifar(directory, batches):
    directory.mkdir(parents=True, exist_ok=True)
    for name, entry in batches.items():
        (directory / name).write_bytes(pickle.dumps(entry, protocol=2))


def check_cifar(train, test, batches):
    expected = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    assert train.x.shape == (len(expected), 3, 32, 32)
    assert train.x.dtype == np.float32
    np.testing.assert_allclose(train.x.reshape(len(expected), -1), expected / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(
        train.y, np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    )
    n_test = len(batches["test_batch"][b"labels"])
    assert test.x.shape == (n_test, 3, 32, 32)
    assert test.y.dtype == np.int64
    # channel-major layout: the first 1024 bytes are the red plane
    np.testing.assert_allclose(
        test.x[0, 0].ravel(), batches["test_batch"][b"data"][0, :1024] / 255.0, rtol=1e-6
    )


@pytest.mark.parametrize("layout", ["flat", "subdir", "tar"])
def test_load_cifar10(tmp_path, layout):
    batches = cifar_batches()
    if layout == "flat":
        write_cifar(tmp_path, batches)
    elif layout == "subdir":
        write_cifar(tmp_path / "cifar-10-batches-py", batches)
    else:
        with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, entry in batches.items():
                payload = pickle.dumps(entry)
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    train, test = data.load_cifar10(tmp_path)
    check_cifar(train, test, batches)


def test_load_cifar10_missing_and_unsafe_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.load_cifar10(tmp_path)
    assert str(tmp_path / "data_batch_1") in str(info.value)
    assert "never downloads" in str(info.value)
    batches = cifar_batches()
    write_cifar(tmp_path, batches)
    os.remove(tmp_path / "test_batch")
    with pytest.raises(FileNotFoundError, match="test_batch"):
        data.load_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load global"):
        data.load_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(ValueError, match="3072"):
        data.load_cifar10(tmp_path)


def test_load_dataset_dispatch(tmp_path):
    write_mnist(tmp_path / "m", n_train=40)
    splits = data.load_dataset("mnist", tmp_path / "m", val_fraction=0.25, seed=0)
    assert len(splits.train.y) + len(splits.val.y) == 40
    assert len(splits.test.y) == 5
    write_cifar(tmp_path / "c", cifar_batches(n=8))
    splits = data.load_dataset("cifar10", tmp_path / "c")
    assert splits.class_names[0] == "airplane"
    assert splits.train.x.shape[1:] == (3, 32, 32)
    with pytest.raises(ValueError, match="data-dir"):
        data.load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("imagenet", tmp_path)
