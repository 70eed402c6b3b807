"""Inputs an adversarial user tries, and what they must get: a TypeError or ValueError that
names the argument or the file -- never a crash, a silently ignored mask, a dropped
imaginary part, or a value wrapped into range.

- the thread count: a huge one is refused (it used to crash the interpreter in the first
  kernel), a float gets a message that says what is accepted;
- masked arrays and complex arrays, for every op and every floating-point argument, and
  for ``Module.load_state_dict``, which also refuses what is not a mapping;
- data files: truncated or garbled ``.npz``, ``.tar.gz`` and ``.gz`` files, inconsistent
  idx headers (too many dims, dims whose product overflows 64 bits), labels that are NaN
  or outside 0..9, pixels outside 0..255.

Child processes run what used to crash, so a regression fails one test instead of
killing the run.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import tarfile
import textwrap
import zipfile

import numpy as np
import pytest
from breadth_helpers import BREADTH_OPS, breadth_kwargs
from helpers import run_python
from test_data import cifar_batches, idx_bytes, write_cifar, write_mnist
from validation_helpers import OP_ARGS, call, good_kwargs, ints, named

import fastconv
from fastconv import _cpu, data, nn
from fastconv.reference import BatchNormSaved


def run_child(code, **kwargs):
    """Run ``code`` in a child Python; fail with its output unless it exits cleanly."""
    child = run_python(textwrap.dedent(code), **kwargs)
    if child.returncode != 0:
        pytest.fail(
            f"the child exited with status {child.returncode}:\n"
            f"{child.stdout}\n{child.stderr[-2000:]}"
        )
    return child


# ======================================================================================
# Thread count
# ======================================================================================


def test_thread_counts_above_the_bound_are_refused_and_change_nothing(threads):
    limit = _cpu.max_num_threads()
    threads(2)
    for bad in (limit + 1, 10**9, 2**31 - 1):
        with pytest.raises(ValueError, match=rf"^n must lie in \[1, {limit}\], got {bad}:"):
            fastconv.set_num_threads(bad)
        assert fastconv.get_num_threads() == 2
    threads(limit)  # the bound itself is allowed
    assert fastconv.get_num_threads() == limit


def test_thread_bound_is_four_per_usable_cpu_and_never_below_64(monkeypatch):
    assert _cpu.usable_cpus() >= 1
    for cpus, limit in ((1, 64), (16, 64), (17, 68), (192, 768)):
        monkeypatch.setattr(_cpu, "usable_cpus", lambda cpus=cpus: cpus)
        assert _cpu.max_num_threads() == limit
        with pytest.raises(ValueError, match=rf"\[1, {limit}\].*\({cpus} CPUs here\)"):
            _cpu.set_num_threads(limit + 1)


def test_huge_thread_count_cannot_crash_a_gemm():
    """The reproducer: 10**9 threads, then a 3000 x 3000 gemm, killed the interpreter (a
    292 GB allocation refused); now the count is refused and the gemm runs as before."""
    child = run_child(
        """
        import numpy as np
        import fastconv as fc
        fc.set_num_threads(2)
        for n in (10**9, 50_000):
            try:
                fc.set_num_threads(n)
            except ValueError as exc:
                print("refused", n, exc)
        a = np.ones((3000, 3000), np.float32)
        print("threads", fc.get_num_threads(), "c[0, 0]", fc.gemm(a, a)[0, 0])
        """
    )
    assert child.stdout.count("refused") == 2, child.stdout
    assert "threads 2 c[0, 0] 3000.0" in child.stdout


def test_absurd_omp_num_threads_is_brought_down_to_the_bound():
    """The default comes from OpenMP: OMP_NUM_THREADS=100000 must not reach a kernel."""
    child = run_child(
        """
        import numpy as np
        import fastconv as fc
        from fastconv import _cpu
        a = np.ones((1000, 1000), np.float32)
        print(fc.get_num_threads() == _cpu.max_num_threads(), fc.gemm(a, a)[0, 0])
        """,
        env={**os.environ, "OMP_NUM_THREADS": "100000"},
    )
    assert child.stdout.split() == ["True", "1000.0"], child.stdout
    assert "RuntimeWarning" in child.stderr
    assert "100000 threads" in child.stderr


ACCEPTED_INTS = re.escape("(Python or NumPy integers; floats are not rounded)")


@pytest.mark.parametrize("bad", [1.5, 2.0, np.float64(2.0), "2", None, [2]])
def test_non_int_thread_count_names_n_and_says_what_is_accepted(threads, bad):
    threads(2)
    got = re.escape(f"got {type(bad).__name__} {bad!r}")
    with pytest.raises(TypeError, match=rf"^n must be an int {ACCEPTED_INTS}, {got}$"):
        fastconv.set_num_threads(bad)
    assert fastconv.get_num_threads() == 2


def test_int_arguments_say_int_and_window_arguments_say_pair(no_backend):
    """Only window arguments take a pair; an int argument's message must not offer one."""
    kwargs = good_kwargs("conv2d")
    kwargs["groups"] = 1.5
    with pytest.raises(
        TypeError, match=rf"^groups must be an int {ACCEPTED_INTS}, got float 1\.5$"
    ):
        call("conv2d", kwargs)
    kwargs = good_kwargs("conv2d_input")
    kwargs["input_size"] = (2, 4, 9.0, 8)
    with pytest.raises(TypeError, match=r"^input_size\[2\] must be an int .*, got float 9\.0$"):
        call("conv2d_input", kwargs)
    kwargs = good_kwargs("max_pool2d")
    kwargs["kernel_size"] = (3, 2.5)
    with pytest.raises(TypeError, match=r"^kernel_size must be an int or a pair of ints \("):
        call("max_pool2d", kwargs)


# ======================================================================================
# Masked and complex arrays
# ======================================================================================


def _other_op_kwargs(op):
    """Valid keyword arguments of the public ops that validation_helpers.OPS leaves out."""
    if op in BREADTH_OPS:
        return breadth_kwargs(op)
    x = ints((4, 3, 2, 2), np.float32, 1)
    weight, bias = ints((3,), np.float32, 2), ints((3,), np.float32, 3)
    if op == "batch_norm":
        stats = dict(running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float32))
        return dict(input=x, training=True, weight=weight, bias=bias, **stats)
    if op == "batch_norm_backward":
        saved = BatchNormSaved(ints((4, 3, 4), np.float32, 4), np.ones(3, np.float32), True)
        return dict(grad_output=x, saved=saved, weight=weight)
    assert op == "conv2d_bias_grad"
    return dict(grad_output=x)


OTHER_OPS = ["batch_norm", "batch_norm_backward", "conv2d_bias_grad", *BREADTH_OPS]
EVERY_OP_ARG = OP_ARGS + [
    (op, arg)
    for op in OTHER_OPS
    for arg, value in _other_op_kwargs(op).items()
    if isinstance(value, np.ndarray) and value.dtype.kind == "f"  # indices are checked apart
]


def test_every_public_op_with_array_arguments_is_covered():
    """A new op must join the lists above (or the ones here that take no arrays)."""
    public_functions = {
        name
        for name in fastconv.functional.__all__
        if callable(getattr(fastconv.functional, name))
        and not isinstance(getattr(fastconv.functional, name), type)
    }
    shape_only = {"conv2d_algorithm", "conv2d_input_algorithm", "conv2d_weight_algorithm"}
    no_arrays = {"get_num_threads", "set_num_threads", "last_algorithms"}
    assert {op for op, _ in EVERY_OP_ARG} == public_functions - shape_only - no_arrays


def _kwargs(op):
    return _other_op_kwargs(op) if op in OTHER_OPS else good_kwargs(op)


@pytest.mark.parametrize("masked", ["mask_one", "no_mask_set"])
@pytest.mark.parametrize(("op", "arg"), EVERY_OP_ARG)
def test_masked_arrays_are_type_error_naming_the_argument(no_backend, op, arg, masked):
    """A MaskedArray passes for an ndarray, and every kernel would read its masked entries
    as data: it is refused, with or without entries masked."""
    kwargs = _kwargs(op)
    value = np.ma.masked_array(kwargs[arg])
    if masked == "mask_one":
        value[(0,) * value.ndim] = np.ma.masked
    kwargs[arg] = value
    with pytest.raises(TypeError, match="MaskedArray") as info:
        getattr(fastconv, op)(**kwargs)
    info.match(named(arg))


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize(("op", "arg"), EVERY_OP_ARG)
def test_complex_arrays_are_type_error_naming_the_argument(no_backend, op, arg, dtype):
    kwargs = _kwargs(op)
    kwargs[arg] = kwargs[arg].astype(dtype)
    with pytest.raises(TypeError, match=rf"dtype float32 or float64, got {np.dtype(dtype)}") as e:
        getattr(fastconv, op)(**kwargs)
    e.match(named(arg))


def test_a_masked_maximum_no_longer_wins_a_max_pool():
    x = np.ma.masked_array(np.ones((1, 1, 2, 2), np.float32), mask=[[[[0, 1], [0, 0]]]])
    x.data[0, 0, 0, 1] = 1e30
    with pytest.raises(TypeError, match=r"^input is a numpy\.ma\.MaskedArray"):
        fastconv.max_pool2d(x, 2)


def test_masked_max_pool_indices_cannot_write_out_of_bounds():
    """The range check on indices reads through the mask, the kernel reads the raw
    values: a masked index of 10**12 scattered far outside grad_input (a segfault)."""
    child = run_child(
        """
        import numpy as np
        import fastconv as fc
        x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
        out, idx = fc.max_pool2d(x, 2, return_indices=True)
        idx[0, 0, 0, 0] = 10**12
        masked = np.ma.masked_array(idx, mask=idx == 10**12)
        try:
            fc.max_pool2d_backward(np.ones_like(out), masked, x.shape)
        except TypeError as exc:
            print("refused:", exc)
        """
    )
    assert child.stdout.startswith("refused: indices is a numpy.ma.MaskedArray"), child.stdout


# --------------------------------------------------------------------------- load_state_dict


@pytest.mark.parametrize("bad", [[1, 2], None, "weights", [("weight", np.zeros((2, 3)))]])
def test_load_state_dict_refuses_what_is_not_a_mapping(bad):
    with pytest.raises(
        TypeError, match=rf"^state_dict must be a mapping .* got {type(bad).__name__}$"
    ):
        nn.Linear(3, 2).load_state_dict(bad)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.full((2, 3), 1 + 2j, np.complex64), "must hold real numbers .* got dtype complex64"),
        (np.full((2, 3), 1 + 0j), "must hold real numbers .* got dtype complex128"),
        (np.ma.masked_array(np.ones((2, 3)), mask=np.eye(2, 3)), "is a numpy.ma.MaskedArray"),
        (np.full((2, 3), "1"), "must hold real numbers .* got dtype <U1"),
        (np.full((2, 3), None), "must hold real numbers .* got dtype object"),
        ([[1.0, 2.0, 3.0], [4.0]], "must be a numeric array"),
    ],
    ids=["complex64", "complex128-real-valued", "masked", "strings", "objects", "ragged"],
)
def test_load_state_dict_refuses_values_a_cast_would_corrupt(value, message):
    model = nn.Linear(3, 2)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {"weight": value, "bias": np.zeros(2)}
    with pytest.raises(TypeError, match=rf"^state_dict\['weight'\] {message}"):
        model.load_state_dict(state)
    for key, array in model.state_dict().items():
        np.testing.assert_array_equal(array, before[key])  # nothing was loaded


def test_load_state_dict_still_casts_real_values():
    model = nn.Linear(3, 2)
    model.load_state_dict({"weight": np.arange(6).reshape(2, 3), "bias": [True, False]})
    assert model.weight.data.dtype == np.float32
    np.testing.assert_array_equal(model.weight.data, np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(model.bias.data, [1.0, 0.0])


# ======================================================================================
# Data files
# ======================================================================================


def _valid_npz(path):
    nn.save_weights(nn.Linear(3, 2), path)
    return path.read_bytes()


def _write_npy(path):
    with open(path, "wb") as fh:  # np.save given a path would append ".npy" to the name
        np.save(fh, np.zeros(3))


def _zip_with_text_member(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weight.txt", "1 2 3")


NPZ_DAMAGE = {
    "empty": lambda path, blob: path.write_bytes(b""),
    "truncated": lambda path, blob: path.write_bytes(blob[: len(blob) // 2]),
    "cut-end-record": lambda path, blob: path.write_bytes(blob[:-10]),
    "garbage": lambda path, blob: path.write_bytes(bytes(range(256)) * 4),
    "zip-magic-then-garbage": lambda path, blob: path.write_bytes(b"PK\x03\x04" + b"\xff" * 200),
    "a-single-npy": lambda path, blob: _write_npy(path),
    "pickled-objects": lambda path, blob: np.savez(path, weight=np.array([{}], dtype=object)),
    "text-member": lambda path, blob: _zip_with_text_member(path),
}


@pytest.mark.parametrize("damage", list(NPZ_DAMAGE))
def test_damaged_npz_is_value_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "weights.npz"
    NPZ_DAMAGE[damage](path, _valid_npz(path))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        nn.load_weights(path, nn.Linear(3, 2))


def test_npz_checks_keep_missing_files_and_good_files_as_they_were(tmp_path):
    with pytest.raises(FileNotFoundError):
        nn.load_weights(tmp_path / "absent.npz")
    model = nn.Linear(3, 2)
    nn.save_weights(model, tmp_path / "w.npz")
    state = nn.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(state["weight"], model.weight.data)


# --------------------------------------------------------------------------- idx / MNIST


def _idx_header(code, dims):
    return bytes([0, 0, code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize("ndim", [33, 65, 255])
def test_idx_header_with_too_many_dims_names_the_file(tmp_path, ndim):
    path = tmp_path / "many-dims"
    path.write_bytes(_idx_header(0x08, [1] * ndim) + b"\x07")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: .*announces {ndim} dims"):
        data.read_idx(path)


def test_idx_dims_whose_product_overflows_64_bits_are_caught(tmp_path):
    """65536**4 bytes is 2**64: a 64-bit product wraps to 0, which matched an empty body
    and passed the size check."""
    path = tmp_path / "overflow"
    for code, dims, announced in (
        (0x08, [65536] * 4, 2**64),
        (0x0C, [65536, 65536, 65536, 65536, 4], 2**66 * 4),
        (0x0E, [2**32 - 1] * 3, (2**32 - 1) ** 3 * 8),
    ):
        path.write_bytes(_idx_header(code, dims))
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: .*\({announced} bytes"):
            data.read_idx(path)


def test_truncated_idx_header_names_the_file(tmp_path):
    path = tmp_path / "short-header"
    path.write_bytes(_idx_header(0x08, [2, 3, 4])[:9])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: truncated idx header"):
        data.read_idx(path)


GZ_DAMAGE = {
    "truncated": lambda blob: blob[: len(blob) // 2],
    "cut-trailer": lambda blob: blob[:-4],
    "garbage-after-magic": lambda blob: b"\x1f\x8b" + b"\x00" * 40,
    "bad-crc": lambda blob: blob[:-8] + bytes(4) + blob[-4:],
    "corrupt-stream": lambda blob: blob[:12] + b"\xff" * 16 + blob[28:],
}


@pytest.mark.parametrize("damage", list(GZ_DAMAGE))
def test_damaged_gz_idx_is_value_error_naming_the_file(tmp_path, damage):
    blob = gzip.compress(idx_bytes(np.arange(600).reshape(6, 10, 10) % 256))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(GZ_DAMAGE[damage](blob))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data.read_idx(path)


def test_load_mnist_names_a_damaged_gz_file(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is not a readable gzip"):
        data.load_mnist(tmp_path)


@pytest.mark.parametrize(
    ("code", "labels", "shown"),
    [
        (0x0D, [1.0, np.nan, 2.0, 3.0, 4.0], "nan at index (1,)"),
        (0x0E, [1.0, 2.0, np.inf, 3.0, 4.0], "inf at index (2,)"),
        (0x0E, [1.0, 2.0, 3.0, 4.5, 4.0], "4.5 at index (3,)"),
        (0x08, [1, 2, 3, 4, 10], "10 at index (4,)"),
        (0x09, [-1, 2, 3, 4, 5], "-1 at index (0,)"),
        (0x0C, [1, 2, 3, 2**31 - 1, 5], "2147483647 at index (3,)"),
    ],
)
def test_mnist_labels_outside_0_to_9_name_the_file(tmp_path, code, labels, shown):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.array(labels), code))
    message = f"{path}: labels must be integers in 0..9, got {shown}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        data.load_mnist(tmp_path)


def test_mnist_float_labels_that_hold_integers_are_read(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.array([0.0, 9.0, 3.0, 4.0, 5.0]), 0x0D))
    _, test = data.load_mnist(tmp_path)
    assert test.y.dtype == np.int64
    np.testing.assert_array_equal(test.y, [0, 9, 3, 4, 5])


def test_mnist_pixels_outside_0_to_255_name_the_file(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    images = np.zeros((5, 28, 28), np.int16)
    images[2, 3, 4] = 300
    path.write_bytes(idx_bytes(images, 0x0B))
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(path))}: pixel values .* 300 at index \(2, 3, 4\)$"
    ):
        data.load_mnist(tmp_path)


# --------------------------------------------------------------------------- CIFAR-10


def _cifar_archive_bytes(batches):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, entry in batches.items():
            payload = pickle.dumps(entry)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _retar_without_test_batch(blob):
    batches = cifar_batches()
    del batches["test_batch"]
    return _cifar_archive_bytes(batches)


TAR_DAMAGE = {
    "empty": lambda blob: b"",
    "truncated": lambda blob: blob[: len(blob) // 2],
    "cut-trailer": lambda blob: blob[:-4],
    "garbage": lambda blob: bytes(range(256)) * 8,
    "gzip-magic-then-garbage": lambda blob: b"\x1f\x8b\x08\x00" + b"\xff" * 300,
    "not-a-tar-inside": lambda blob: gzip.compress(b"just text, no tar headers" * 40),
    "cut-tar-regzipped": lambda blob: gzip.compress(gzip.decompress(blob)[:1536]),
    "lacks-test-batch": _retar_without_test_batch,
}


@pytest.mark.parametrize("damage", list(TAR_DAMAGE))
def test_damaged_cifar_archive_is_value_error_naming_it(tmp_path, damage):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(TAR_DAMAGE[damage](_cifar_archive_bytes(cifar_batches())))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(archive))}"):
        data.load_cifar10(tmp_path)


@pytest.mark.parametrize(
    ("field", "values", "shown"),
    [
        ("data", -1, "-1"),
        ("data", 256, "256"),
        ("data", 1e9, "1000000000.0"),
        ("data", np.nan, "nan"),
        ("data", 12.5, "12.5"),
        ("labels", 10, "10"),
        ("labels", -1, "-1"),
        ("labels", np.nan, "nan"),
    ],
)
def test_cifar_values_out_of_range_are_refused_not_wrapped(tmp_path, field, values, shown):
    batches = cifar_batches()
    entry = batches["data_batch_3"]
    if field == "data":
        pixels = entry[b"data"].astype(np.float64 if isinstance(values, float) else np.int64)
        pixels[1, 7] = values
        entry[b"data"] = pixels
        where, what = r"\(1, 7\)", "pixel values must be integers in 0..255"
    else:
        entry[b"labels"] = [*entry[b"labels"][:-1], values]
        where, what = rf"\({len(entry[b'labels']) - 1},\)", "labels must be integers in 0..9"
    write_cifar(tmp_path, batches)
    source = re.escape(str(tmp_path / "data_batch_3"))
    with pytest.raises(
        ValueError, match=rf"^{source}: {re.escape(what)}, got {re.escape(shown)} at index {where}$"
    ):
        data.load_cifar10(tmp_path)


def test_cifar_errors_inside_an_archive_name_the_member(tmp_path):
    batches = cifar_batches()
    batches["test_batch"][b"labels"][0] = 11
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(_cifar_archive_bytes(batches))
    archive = re.escape(str(tmp_path / "cifar-10-python.tar.gz"))
    with pytest.raises(ValueError, match=rf"^{archive}:cifar-10-batches-py/test_batch: labels"):
        data.load_cifar10(tmp_path)


def test_cifar_int64_pixels_in_range_are_read_exactly(tmp_path):
    batches = cifar_batches()
    for entry in batches.values():
        entry[b"data"] = entry[b"data"].astype(np.int64)
    write_cifar(tmp_path, batches)
    train, _ = data.load_cifar10(tmp_path)
    expected = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.x.reshape(len(expected), -1) * 255, expected)


LAYERS_TAKING_ARRAYS = [
    lambda: nn.Conv2d(3, 4, 3),
    lambda: nn.ConvTranspose2d(3, 4, 3),
    lambda: nn.Conv1d(3, 4, 3),
    lambda: nn.Linear(4, 2),
    lambda: nn.BatchNorm2d(3),
    lambda: nn.GroupNorm(1, 3),
    lambda: nn.LayerNorm(4),
    lambda: nn.InstanceNorm2d(3),
    lambda: nn.MaxPool2d(2),
    lambda: nn.AvgPool2d(2),
    lambda: nn.AdaptiveAvgPool2d(1),
    lambda: nn.MaxPool1d(2),
    lambda: nn.AvgPool1d(2),
    lambda: nn.ReLU(),
    lambda: nn.ReLU6(),
    lambda: nn.LeakyReLU(),
    lambda: nn.SiLU(),
    lambda: nn.GELU(),
    lambda: nn.Sigmoid(),
    lambda: nn.Tanh(),
    lambda: nn.Softmax(dim=1),
    lambda: nn.Dropout(),
    lambda: nn.Flatten(),
    lambda: nn.Upsample(scale_factor=2),
    lambda: nn.PixelShuffle(2),
]


@pytest.mark.parametrize("make", LAYERS_TAKING_ARRAYS, ids=lambda make: type(make()).__name__)
@pytest.mark.parametrize(
    "bad", [[[[[1.0] * 4] * 4] * 3], 1.5, np.ma.masked_array(np.ones((1, 3, 4, 4)))]
)
def test_layers_refuse_what_is_not_an_array_naming_the_input(make, bad):
    with pytest.raises(TypeError, match="^input (must|is a numpy.ma.MaskedArray)"):
        make()(bad)
