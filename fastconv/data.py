"""Datasets, seeded splits, normalisation and mini-batch iteration.

Loaders return images as float32 NCHW arrays scaled to [0, 1] and labels as int64:

* :func:`load_digits` — scikit-learn's 8x8 handwritten digits (1797 images, shipped
  inside scikit-learn: no download; ``pip install fastconv[examples]``);
* :func:`load_mnist` — MNIST (or Fashion-MNIST) idx files, raw or ``.gz``;
* :func:`load_cifar10` — CIFAR-10 "python version" batches (a directory or the
  ``cifar-10-python.tar.gz`` archive).

Nothing is ever downloaded: a missing file raises ``FileNotFoundError`` naming the
path that was searched. A truncated or garbled file, an inconsistent idx header, labels
that are not integers in 0..9 or pixels that are not integers in 0..255 raise
``ValueError`` naming the file: nothing is wrapped or cast into range.

:func:`train_val_test_split` makes seeded (optionally stratified) splits,
:class:`Normalizer` standardises with statistics fitted on the training set, and
:class:`DataLoader` iterates over mini-batches, reshuffled every epoch from a seeded
generator.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np

__all__ = [
    "DataLoader",
    "Dataset",
    "DatasetSplits",
    "Normalizer",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "read_idx",
    "train_val_test_split",
]

PathLike = Union[str, os.PathLike]


class Dataset(NamedTuple):
    """Images ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64."""

    x: np.ndarray
    y: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])


class DatasetSplits(NamedTuple):
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    class_names: tuple[str, ...]


# --------------------------------------------------------------------------- splits


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return n_val, n_test


def _allocate(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Per-class sizes proportional to ``counts`` that sum to round(sum * fraction).

    Largest-remainder rounding: every class gets floor(count * fraction), and the
    classes with the largest remainders get one more until the total is reached.
    """
    ideal = counts * fraction
    sizes = np.floor(ideal).astype(np.int64)
    missing = int(round(counts.sum() * fraction)) - int(sizes.sum())
    if missing > 0:
        order = np.argsort(-(ideal - sizes), kind="stable")
        sizes[order[:missing]] += 1
    return np.minimum(sizes, counts)


def train_val_test_split(
    x: np.ndarray,
    y: np.ndarray,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int | None = 0,
    stratify: bool = True,
) -> tuple[Dataset, Dataset, Dataset]:
    """Seeded split into (train, val, test) :class:`Dataset` s.

    With ``stratify`` every class is split in the same proportions (largest-remainder
    rounding of its count times the fraction, so the split sizes are round(N * fraction)
    as without stratification).  The same seed always gives the same split.  Fractions
    may be 0 (an empty split).
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            "val_fraction and test_fraction must be >= 0 and sum to less than 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    rng = np.random.default_rng(seed)
    if stratify:
        labels, counts = np.unique(y, return_counts=True)
        n_test = _allocate(counts, test_fraction)
        n_val = np.minimum(_allocate(counts, val_fraction), counts - n_test)
        parts: list[list[np.ndarray]] = [[], [], []]
        for label, nv, nt in zip(labels, n_val, n_test):
            members = np.flatnonzero(y == label)
            members = members[rng.permutation(len(members))]
            parts[2].append(members[:nt])
            parts[1].append(members[nt : nt + nv])
            parts[0].append(members[nt + nv :])
        chosen = [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]
        chosen = [idx[rng.permutation(len(idx))] for idx in chosen]
    else:
        order = rng.permutation(len(x))
        n_val, n_test = _split_counts(len(x), val_fraction, test_fraction)
        chosen = [order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]]
    train, val, test = (Dataset(x[idx], y[idx]) for idx in chosen)
    return train, val, test


# --------------------------------------------------------------------------- batching


class DataLoader:
    """Mini-batches of one or more aligned arrays: ``for xb, yb in DataLoader(x, y, ...)``.

    ``shuffle`` draws a new order every epoch (every ``iter()``) from a generator
    seeded with ``seed``, so a run is reproducible; ``drop_last`` drops a final
    incomplete batch.  Batches are C-contiguous: shuffled ones are copies (fancy
    indexing), unshuffled ones are views of the arrays.

    ``num_replicas`` > 1 shards the data for data-parallel training (PyTorch's
    ``DistributedSampler``): every replica draws the same order from the same seed,
    pads it by wrapping around to a multiple of ``num_replicas`` and takes every
    ``num_replicas``-th sample from position ``rank``, so the shards are disjoint (but
    for the padding), reshuffled every epoch, and of equal size: every rank gets as
    many batches.  Batch k of the ranks together is batch k of one unsharded loader
    with ``num_replicas`` times the batch size.
    """

    def __init__(
        self,
        *arrays: np.ndarray,
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not arrays:
            raise ValueError("DataLoader needs at least one array")
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas} "
                f"and {rank}"
            )
        if len(arrays) == 1 and isinstance(arrays[0], Dataset):
            arrays = tuple(arrays[0])
        n = len(arrays[0])
        if any(len(a) != n for a in arrays):
            raise ValueError(f"arrays have different lengths: {[len(a) for a in arrays]}")
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.arrays = arrays
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.generator = np.random.default_rng(seed)

    @property
    def num_samples(self) -> int:
        return len(self.arrays[0])

    @property
    def samples_per_replica(self) -> int:
        """Samples this replica iterates over per epoch (its shard, padding included)."""
        return -(-self.num_samples // self.num_replicas)

    def __len__(self) -> int:
        n, b = self.samples_per_replica, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[Any]:
        n = self.num_samples
        order = self.generator.permutation(n) if self.shuffle else None
        if self.num_replicas > 1:
            whole = np.arange(n) if order is None else order
            padded = np.resize(whole, self.samples_per_replica * self.num_replicas)
            order = padded[self.rank :: self.num_replicas]
            n = order.size
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, n)
            if order is None:
                batch = tuple(a[start:stop] for a in self.arrays)
            else:
                idx = order[start:stop]
                batch = tuple(a[idx] for a in self.arrays)
            yield batch if len(batch) > 1 else batch[0]


# --------------------------------------------------------------------------- normalisation


class Normalizer:
    """Standardise ``(x - mean) / std`` with statistics fitted on the training set.

    ``per_channel`` (default) fits one mean/std per channel of an NCHW array (axis 1);
    otherwise a single scalar pair.  Statistics are accumulated in float64 and stored
    in the data's dtype, so float32 data stays float32.
    """

    def __init__(self, per_channel: bool = True, eps: float = 1e-8) -> None:
        self.per_channel = per_channel
        self.eps = eps
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> Normalizer:
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"Normalizer needs floating-point data, got {x.dtype}")
        axes = (
            tuple(i for i in range(x.ndim) if i != 1) if (self.per_channel and x.ndim > 1) else None
        )
        mean = x.mean(axis=axes, dtype=np.float64, keepdims=True)
        std = x.std(axis=axes, dtype=np.float64, keepdims=True)
        self.mean = mean.astype(x.dtype)
        self.std = np.maximum(std, self.eps).astype(x.dtype)
        return self

    def _check(self) -> None:
        if self.mean is None:
            raise RuntimeError("Normalizer is not fitted: call fit(x_train) first")

    def transform(self, x: np.ndarray) -> np.ndarray:
        self._check()
        x = np.asarray(x)
        return ((x - self.mean.astype(x.dtype)) / self.std.astype(x.dtype)).astype(x.dtype)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        self._check()
        x = np.asarray(x)
        return (x * self.std.astype(x.dtype) + self.mean.astype(x.dtype)).astype(x.dtype)

    def state_dict(self) -> dict[str, np.ndarray]:
        self._check()
        return {"mean": self.mean, "std": self.std}


# --------------------------------------------------------------------------- digits


def load_digits() -> Dataset:
    """scikit-learn's handwritten digits: x (1797, 1, 8, 8) float32 in [0, 1], y int64."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits dataset ships with scikit-learn: "
            "pip install 'fastconv[examples]' (or scikit-learn)"
        ) from exc
    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    return Dataset(np.ascontiguousarray(x), bunch.target.astype(np.int64))


# --------------------------------------------------------------------------- MNIST (idx)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# What a truncated or garbled gzip stream or tar archive raises while it is read.
_CORRUPT_ARCHIVE = (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error)

# Numpy 1's limit on dims (numpy 2 allows 64): a file reads the same under both. The
# MNIST files have 1 or 3.
_IDX_MAX_DIMS = 32


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head != b"\x1f\x8b":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except _CORRUPT_ARCHIVE as exc:
        raise ValueError(f"{path} is not a readable gzip file: {exc}") from exc


def read_idx(path: PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), raw or gzip-compressed (detected by content).

    Header: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dims, then each dim as a big-endian uint32.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4]!r})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    if ndim > _IDX_MAX_DIMS:
        raise ValueError(
            f"{path}: the idx header announces {ndim} dims; at most {_IDX_MAX_DIMS} are read"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: truncated idx header ({ndim} dims need {header} bytes, "
            f"the file holds {len(raw)})"
        )
    shape = tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(4, header, 4))
    # Python ints: exact, where a fixed-width product of 65536 x 65536 x ... wraps.
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: idx header announces shape {shape} ({expected} bytes of "
            f"data) but the file holds {len(raw) - header} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _integers_in_range(values: Any, low: int, high: int, what: str) -> np.ndarray:
    """values as an array whose entries are all integers in [low, high] (ints, or floats
    that hold integers); a ValueError, starting with ``what``, names the first bad one.
    Casting unchecked would wrap -1 to 255, and turn NaN into -2**63."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:  # a ragged list, say
        raise ValueError(f"{what} are not a numeric array: {exc}") from None
    if array.dtype.kind not in "uif":
        raise ValueError(f"{what} must be integers in {low}..{high}, got dtype {array.dtype}")
    if array.dtype.kind in "ui" and np.iinfo(array.dtype).min >= low:
        if np.iinfo(array.dtype).max <= high:  # uint8 pixels: nothing to check
            return array
        bad = array > high
    elif array.dtype.kind in "ui":
        bad = (array < low) | (array > high)
    else:
        with np.errstate(invalid="ignore"):
            bad = ~((array >= low) & (array <= high) & (np.floor(array) == array))
    if bad.any():
        position = np.unravel_index(int(np.argmax(bad)), array.shape)
        raise ValueError(
            f"{what} must be integers in {low}..{high}, got {array[position].item()!r} "
            f"at index {tuple(int(i) for i in position)}"
        )
    return array


_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _mnist_dirs(data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / "MNIST" / "raw", data_dir / "mnist", data_dir / "MNIST"]


def _find_mnist_file(data_dir: Path, stem: str) -> Path:
    variants = [stem, stem.replace("-idx", ".idx")]
    for directory in _mnist_dirs(data_dir):
        for name in variants:
            for suffix in ("", ".gz"):
                candidate = directory / (name + suffix)
                if candidate.is_file():
                    return candidate
    searched = ", ".join(str(d) for d in _mnist_dirs(data_dir))
    raise FileNotFoundError(
        f"MNIST file {stem} (or {stem}.gz) not found in {data_dir} (searched: {searched}). "
        "fastconv never downloads data: get the four idx files (e.g. from "
        "https://yann.lecun.com/exdb/mnist/ or a mirror) and put them in that directory."
    )


def load_mnist(data_dir: PathLike) -> tuple[Dataset, Dataset]:
    """MNIST train and test sets from idx files in ``data_dir`` (raw or .gz).

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (also with ``.gz``, and
    in torchvision's ``MNIST/raw`` layout).  Images become (N, 1, 28, 28) float32 in
    [0, 1]; labels int64.  Works for Fashion-MNIST, which uses the same files.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MNIST data directory not found: {data_dir}")
    paths = {key: _find_mnist_file(data_dir, stem) for key, stem in _MNIST_FILES.items()}
    out = []
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"])
        labels = read_idx(paths[f"{split}_labels"])
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(
                f"{paths[f'{split}_images']}: expected (N, H, W) images and (N,) "
                f"labels, got {images.shape} and {labels.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
        _integers_in_range(images, 0, 255, f"{paths[f'{split}_images']}: pixel values")
        labels = _integers_in_range(labels, 0, 9, f"{paths[f'{split}_labels']}: labels")
        x = (images.astype(np.float32) / np.float32(255.0))[:, None]
        out.append(Dataset(np.ascontiguousarray(x), labels.astype(np.int64)))
    return out[0], out[1]


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only: no arbitrary code from a file."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name} from a CIFAR-10 batch file"
        )


def _unpickle(data: bytes, source: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise ValueError(f"{source} is not a readable CIFAR-10 python batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a dict, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(entry: dict, source: str) -> Dataset:
    if "data" not in entry or "labels" not in entry:
        raise ValueError(
            f"{source}: a CIFAR-10 batch needs 'data' and 'labels' entries, got {sorted(entry)}"
        )
    data = _integers_in_range(entry["data"], 0, 255, f"{source}: pixel values")
    labels = _integers_in_range(entry["labels"], 0, 9, f"{source}: labels")
    if (
        data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
        or labels.ndim != 1
        or len(data) != len(labels)
    ):
        raise ValueError(
            f"{source}: expected (N, 3072) uint8 data and N labels, got "
            f"{data.shape} and {labels.shape}"
        )
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    return Dataset(np.ascontiguousarray(x), labels.astype(np.int64))


def _read_cifar_batch(payload: bytes, source: str) -> Dataset:
    """One pickled batch file's images and labels; errors name ``source``, the file."""
    return _cifar_batch(_unpickle(payload, source), source)


_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


def load_cifar10(data_dir: PathLike) -> tuple[Dataset, Dataset]:
    """CIFAR-10 train (50000) and test (10000) sets from the python-version batches.

    ``data_dir`` holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (directly
    or in ``cifar-10-batches-py/``), or the unextracted ``cifar-10-python.tar.gz``.
    Images become (N, 3, 32, 32) float32 in [0, 1]; labels int64.  Batch files are
    unpickled with a loader that accepts NumPy arrays and plain containers only.
    """
    data_dir = Path(data_dir)
    names = (*_CIFAR_TRAIN, _CIFAR_TEST)
    for directory in (data_dir, data_dir / "cifar-10-batches-py"):
        if all((directory / name).is_file() for name in names):
            batches = {
                name: _read_cifar_batch((directory / name).read_bytes(), str(directory / name))
                for name in names
            }
            break
    else:
        archive = data_dir / "cifar-10-python.tar.gz"
        if archive.is_file():
            batches = {}
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    for member in tar.getmembers():
                        base = member.name.rsplit("/", 1)[-1]
                        if base in names and member.isfile():
                            fh = tar.extractfile(member)
                            assert fh is not None
                            source = f"{archive}:{member.name}"
                            batches[base] = _read_cifar_batch(fh.read(), source)
                    # Reading on to the end of the gzip stream checks its CRC, which covers
                    # every byte read above (tar itself has no checksum of the data).
                    while tar.fileobj.read(1 << 20):
                        pass
            except _CORRUPT_ARCHIVE as exc:
                raise ValueError(f"{archive} is not a readable .tar.gz archive: {exc}") from exc
            missing = [n for n in names if n not in batches]
            if missing:
                raise ValueError(
                    f"{archive} lacks {', '.join(missing)}: it is truncated, or not the "
                    "CIFAR-10 python archive"
                )
        else:
            missing = [str(data_dir / n) for n in names if not (data_dir / n).is_file()]
            raise FileNotFoundError(
                f"CIFAR-10 batches not found: missing {missing[0]}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                + f" (also looked in {data_dir / 'cifar-10-batches-py'} and for "
                f"{archive}). fastconv never downloads data: get cifar-10-python.tar.gz from "
                "https://www.cs.toronto.edu/~kriz/cifar.html and put it (or its extracted "
                "files) in that directory."
            )
    parts = [batches[name] for name in _CIFAR_TRAIN]
    train = Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
    return train, batches[_CIFAR_TEST]


# --------------------------------------------------------------------------- one entry point


def load_dataset(
    name: str,
    data_dir: PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int | None = 0,
) -> DatasetSplits:
    """Train/val/test splits of ``'digits'``, ``'mnist'`` or ``'cifar10'``.

    Digits has no official test set: it is split (stratified) into train/val/test
    with ``val_fraction`` / ``test_fraction``.  MNIST and CIFAR-10 keep their official
    test set and carve a stratified validation set of ``val_fraction`` out of train.
    """
    name = name.lower()
    if name == "digits":
        data = load_digits()
        train, val, test = train_val_test_split(
            data.x, data.y, val_fraction, test_fraction, seed=seed
        )
        return DatasetSplits(train, val, test, 10, tuple(str(i) for i in range(10)))
    if name not in ("mnist", "cifar10"):
        raise ValueError(f"unknown dataset {name!r}: choose digits, mnist or cifar10")
    if data_dir is None:
        raise ValueError(f"--data-dir is required for {name} (fastconv never downloads data)")
    if name == "mnist":
        full, test = load_mnist(data_dir)
        classes: Sequence[str] = tuple(str(i) for i in range(10))
    else:
        full, test = load_cifar10(data_dir)
        classes = CIFAR10_CLASSES
    train, val, _ = train_val_test_split(full.x, full.y, val_fraction, 0.0, seed=seed)
    return DatasetSplits(train, val, test, 10, tuple(classes))
