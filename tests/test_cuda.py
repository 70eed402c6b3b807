"""Tests of the Numba CUDA backend (``fastconv.cuda``) against ``fastconv.reference``.

Without a GPU they run under the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``,
set here before numba is imported), which executes every thread of every block in
Python: shapes are tiny, and the GEMM-shaped kernels run with a 16x16x4 test tile
(the same kernel code as the production tiles, other constants) so that a few pixels
already cover several blocks, partial tiles in M, N and the reduction, and several
reduction steps. Each production tile is also run once. On a machine with a GPU the
same tests run on the device.

Skipped where numba (numba-cuda) is not installed.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest


def _gpu_present() -> bool:
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/dxg"))


if "numba" not in sys.modules:
    if not _gpu_present():
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")

numba = pytest.importorskip("numba")
pytest.importorskip("numba.cuda")

from helpers import assert_close_scaled, run_python  # noqa: E402
from numba import cuda  # noqa: E402

import fastconv  # noqa: E402
import fastconv.cuda as fc  # noqa: E402
from fastconv import reference as ref  # noqa: E402
from fastconv.cuda import _runtime as rt  # noqa: E402
from fastconv.geometry import ConvGeometry, PoolWindow  # noqa: E402

SIM = rt.SIMULATOR
if not SIM and not cuda.is_available():
    pytest.skip(
        "numba was imported without the CUDA simulator and no GPU is usable",
        allow_module_level=True,
    )


def _performance_warning_filters():
    marks = []
    for module in ("numba.core.errors", "numba.cuda.core.errors"):
        try:
            __import__(module)
        except ImportError:
            continue
        if hasattr(sys.modules[module], "NumbaPerformanceWarning"):
            marks.append(pytest.mark.filterwarnings(f"ignore::{module}.NumbaPerformanceWarning"))
    return marks


pytestmark = _performance_warning_filters()

#: A tiny tile for the simulator: 16 threads, 4x4 outputs each, reduction steps of 4.
TEST_TILE = fc.TileConfig(16, 16, 4, 4, 4)

RNG_SEED = 1234


def _locked_shared_arrays():
    """Patch for a race in the simulator's ``cuda.shared.array``: the first threads of a
    block to reach the call can each miss the allocation cache and get *private*
    arrays (numba-cuda 0.30, ``FakeCUDAShared.array``: an unlocked get-then-set), which
    shows up as rare wrong results. Returns an undo function, or None where the
    simulator's internals differ from the ones this patch knows."""
    import threading

    try:
        from numba.cuda.simulator import kernelapi
        from numba.np import numpy_support
    except ImportError:
        return None
    module = getattr(kernelapi, "FakeCUDAModule", None)
    shared = getattr(kernelapi, "FakeCUDAShared", None)
    if module is None or shared is None or not hasattr(shared(0), "_allocations"):
        return None
    lock = threading.Lock()

    class LockedShared(shared):
        def array(self, shape, dtype, alignment=None):
            if shape == 0 or alignment is not None:
                return super().array(shape, dtype, alignment)
            caller = sys._getframe(1)
            key = (caller.f_code.co_filename, caller.f_lineno)  # one array per call site
            if isinstance(dtype, numba.core.types.Type):
                dtype = numpy_support.as_dtype(dtype)
            with lock:
                found = self._allocations.get(key)
                if found is None:
                    found = self._allocations[key] = np.empty(shape, dtype)
            return found

    original_init = module.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._shared = LockedShared(getattr(self._shared, "_dynshared_size", 0))

    module.__init__ = __init__

    def undo():
        module.__init__ = original_init

    return undo


@pytest.fixture(scope="module", autouse=True)
def _fast_simulator():
    """The simulator's block manager polls its threads while holding the GIL: a short
    switch interval makes syncthreads-heavy kernels ~3x faster. It also makes the
    simulator's shared-array race likely, so only with that race patched."""
    old = sys.getswitchinterval()
    undo = _locked_shared_arrays() if SIM else None
    if undo is not None:
        sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)
    if undo is not None:
        undo()


@pytest.fixture
def rng():
    return np.random.default_rng(RNG_SEED)


@pytest.fixture
def test_tile():
    with fc.force(tile=TEST_TILE):
        yield TEST_TILE


def D(a):
    return cuda.to_device(np.ascontiguousarray(a))


def H(d):
    assert _is_device(d), f"expected a device array, got {type(d).__name__}"
    return d.copy_to_host()


def _is_device(a) -> bool:
    return bool(getattr(a, "__cuda_ndarray__", False)) or hasattr(a, "__cuda_array_interface__")


# ======================================================================================
# Convolution
# ======================================================================================

# (id, N, C, H, W, K, (R, S), stride, padding, dilation, groups, algorithms)
CONV_CASES = [
    ("partial_tiles", 2, 5, 7, 6, 7, (3, 2), 1, 1, 1, 1, ("implicit_gemm",)),
    (
        "strided_dilated",
        1,
        4,
        9,
        8,
        6,
        (3, 3),
        (2, 1),
        (1, 2),
        (2, 1),
        1,
        ("implicit_gemm", "direct"),
    ),
    ("same_even_kernel", 1, 3, 6, 7, 4, (2, 4), 1, "same", (1, 2), 1, ("implicit_gemm",)),
    ("groups", 2, 6, 5, 5, 4, (3, 3), 1, 1, 1, 2, ("implicit_gemm", "direct")),
    ("depthwise", 2, 4, 6, 6, 4, (3, 3), 2, 1, 1, 4, ("implicit_gemm", "direct")),
    ("pointwise_stride2", 2, 8, 6, 5, 6, (1, 1), 2, 0, 1, 1, ("implicit_gemm",)),
    ("stride_over_kernel", 1, 2, 8, 7, 3, (2, 2), 3, 0, 1, 1, ("implicit_gemm", "direct")),
    # tap steps of the stride phases > 1: r = r0, r0 + 3, ... (stride 3, dilation 2)
    (
        "stride_dilation_coprime",
        1,
        3,
        11,
        10,
        4,
        (3, 3),
        (3, 2),
        (2, 1),
        (2, 3),
        1,
        ("implicit_gemm",),
    ),
]
CONV_PARAMS = [
    pytest.param(case, alg, id=f"{case[0]}-{alg}") for case in CONV_CASES for alg in case[-1]
]


def _conv_setup(case, rng, dtype=np.float32):
    _, n, c, h, w, k, (r, s), stride, padding, dilation, groups, _ = case
    stride, dilation = ref.pair(stride), ref.pair(dilation)
    (pt, pb), (pl, pr) = ref.conv_padding(padding, (r, s), dilation)
    geometry = ConvGeometry(stride, (pt, pb, pl, pr), dilation, groups)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c // groups, r, s)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x, weight, bias, geometry, kwargs


@pytest.mark.parametrize(("case", "algorithm"), CONV_PARAMS)
def test_conv2d(case, algorithm, rng, test_tile):
    x, weight, bias, geometry, kwargs = _conv_setup(case, rng)
    expected = ref.conv2d(x, weight, bias, **kwargs)
    with fc.force(algorithm=algorithm):
        out = fc.conv2d(D(x), D(weight), D(bias), geometry)
    assert_close_scaled(H(out), expected, k=weight[0].size)


@pytest.mark.parametrize(("case", "algorithm"), CONV_PARAMS)
def test_conv2d_input(case, algorithm, rng, test_tile):
    x, weight, _, geometry, kwargs = _conv_setup(case, rng)
    grad_out = rng.standard_normal(ref.conv2d(x, weight, **kwargs).shape).astype(np.float32)
    expected = ref.conv2d_input(x.shape, weight, grad_out, **kwargs)
    with fc.force(algorithm=algorithm):
        gin = fc.conv2d_input(x.shape, D(weight), D(grad_out), geometry)
    assert_close_scaled(H(gin), expected, k=weight.shape[0] * weight[0, 0].size)


@pytest.mark.parametrize(("case", "algorithm"), CONV_PARAMS)
def test_conv2d_weight(case, algorithm, rng, test_tile):
    x, weight, _, geometry, kwargs = _conv_setup(case, rng)
    grad_out = rng.standard_normal(ref.conv2d(x, weight, **kwargs).shape).astype(np.float32)
    expected = ref.conv2d_weight(x, weight.shape, grad_out, **kwargs)
    # three reduction splits: covers the split-K workspace and its summing pass
    with fc.force(algorithm=algorithm, splits=3):
        gw = fc.conv2d_weight(D(x), weight.shape, D(grad_out), geometry)
    assert_close_scaled(H(gw), expected, k=grad_out[:, 0].size)


def test_conv2d_float64_all_passes(rng, test_tile):
    case = ("f64", 2, 4, 5, 6, 5, (3, 2), 1, (1, 0), 1, 1, ())
    x, weight, bias, geometry, kwargs = _conv_setup(case, rng, np.float64)
    out = fc.conv2d(D(x), D(weight), D(bias), geometry)
    assert out.dtype == np.float64
    assert_close_scaled(H(out), ref.conv2d(x, weight, bias, **kwargs), k=weight[0].size)
    grad_out = rng.standard_normal(out.shape)
    gin = fc.conv2d_input(x.shape, D(weight), D(grad_out), geometry)
    assert_close_scaled(H(gin), ref.conv2d_input(x.shape, weight, grad_out, **kwargs), k=30)
    gw = fc.conv2d_weight(D(x), weight.shape, D(grad_out), geometry)
    assert_close_scaled(H(gw), ref.conv2d_weight(x, weight.shape, grad_out, **kwargs), k=60)


# (op, case) run with the tile the selector picks: small problems get the 64x64 tiles
PRODUCTION_CONV = [
    ("forward", ("fwd", 1, 2, 5, 5, 20, (3, 3), 1, 1, 1, 1, ())),
    ("input", ("dgrad", 1, 16, 4, 4, 2, (3, 3), 1, 1, 1, 1, ())),
    ("weight", ("wgrad", 1, 2, 4, 4, 16, (3, 3), 1, 1, 1, 1, ())),
]


@pytest.mark.parametrize(("op", "case"), PRODUCTION_CONV, ids=[c[0] for c in PRODUCTION_CONV])
def test_conv_production_tiles(op, case, rng):
    x, weight, bias, geometry, kwargs = _conv_setup(case, rng)
    grad_out = rng.standard_normal(ref.conv2d(x, weight, **kwargs).shape).astype(np.float32)
    choice = fc.conv_algorithm(op, x.shape, weight.shape, grad_out.shape[2:], geometry)
    assert choice.algorithm == "implicit_gemm", choice
    assert choice.tile.bm == 64, choice
    if op == "forward":
        out = fc.conv2d(D(x), D(weight), D(bias), geometry)
        expected, k = ref.conv2d(x, weight, bias, **kwargs), weight[0].size
    elif op == "input":
        out = fc.conv2d_input(x.shape, D(weight), D(grad_out), geometry)
        expected, k = ref.conv2d_input(x.shape, weight, grad_out, **kwargs), 18
    else:
        out = fc.conv2d_weight(D(x), weight.shape, D(grad_out), geometry)
        expected, k = ref.conv2d_weight(x, weight.shape, grad_out, **kwargs), 16
    assert_close_scaled(H(out), expected, k=k)


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (2, 2, 12, 12), (1, 2, 1, 1), (0, 3, 2, 2)])
def test_channel_sums(shape, rng):
    g = rng.standard_normal(shape).astype(np.float32)
    out = fc.channel_sums(D(g) if g.size else cuda.device_array(shape, np.float32))
    assert out.shape == (shape[1],)
    expected = g.sum(axis=(0, 2, 3), dtype=np.float32)
    assert_close_scaled(H(out), expected, k=max(1, g[:, 0].size))


def test_conv2d_zero_batch():
    geometry = ConvGeometry((1, 1), (0, 0, 0, 0), (1, 1), 1)
    x = cuda.device_array((0, 2, 4, 4), np.float32)
    weight = D(np.ones((3, 2, 2, 2), np.float32))
    assert fc.conv2d(x, weight, None, geometry).shape == (0, 3, 3, 3)
    assert fc.conv2d_input(
        (0, 2, 4, 4), weight, cuda.device_array((0, 3, 3, 3), np.float32), geometry
    ).shape == (0, 2, 4, 4)
    gw = fc.conv2d_weight(x, (3, 2, 2, 2), cuda.device_array((0, 3, 3, 3), np.float32), geometry)
    np.testing.assert_array_equal(H(gw), 0)


# (name, x shape, w shape, out_hw, stride, groups) -> expected (algorithm, tile name)
ALGORITHM_TABLE = [
    ("forward", (8, 64, 56, 56), (64, 64, 3, 3), (56, 56), 1, 1, "implicit_gemm", "64x128x8-r8x8"),
    (
        "forward",
        (2, 64, 112, 112),
        (128, 64, 3, 3),
        (112, 112),
        1,
        1,
        "implicit_gemm",
        "128x128x8-r8x8",
    ),
    (
        "forward",
        (8, 256, 56, 56),
        (128, 256, 1, 1),
        (28, 28),
        2,
        1,
        "implicit_gemm",
        "64x64x8-r4x4",
    ),  # 49 blocks of 128x128 would leave most of 132 SMs idle
    (
        "forward",
        (8, 512, 7, 7),
        (512, 512, 3, 3),
        (7, 7),
        1,
        1,
        "implicit_gemm",
        "64x64x8-r4x4",
    ),  # 392 pixels: the 128-wide tiles would leave SMs idle
    ("forward", (8, 144, 56, 56), (144, 1, 3, 3), (56, 56), 1, 144, "direct", None),
    ("forward", (64, 1, 28, 28), (6, 1, 5, 5), (24, 24), 1, 1, "direct", None),
    ("input", (8, 3, 224, 224), (64, 3, 7, 7), (112, 112), 2, 1, "direct", None),
    ("input", (8, 64, 56, 56), (64, 64, 3, 3), (56, 56), 1, 1, "implicit_gemm", "64x128x8-r8x8"),
    (
        "weight",
        (8, 256, 14, 14),
        (256, 256, 3, 3),
        (14, 14),
        1,
        1,
        "implicit_gemm",
        "128x128x8-r8x8",
    ),
    ("weight", (64, 3, 32, 32), (32, 3, 3, 3), (32, 32), 1, 1, "implicit_gemm", "64x64x8-r4x4"),
    ("weight", (8, 144, 56, 56), (144, 1, 3, 3), (56, 56), 1, 144, "direct", None),
]


@pytest.mark.parametrize("row", ALGORITHM_TABLE, ids=lambda r: f"{r[0]}-{r[1]}-{r[2]}")
def test_conv_algorithm_table(row, monkeypatch):
    op, x_shape, w_shape, out_hw, stride, groups, algorithm, tile = row
    monkeypatch.setattr(rt, "sm_count", lambda: 132)  # an H100
    pads = (w_shape[2] // 2,) * 2 + (w_shape[3] // 2,) * 2
    geometry = ConvGeometry((stride, stride), pads, (1, 1), groups)
    choice = fc.conv_algorithm(op, x_shape, w_shape, out_hw, geometry)
    assert choice.algorithm == algorithm
    assert (choice.tile.name if choice.tile else None) == tile
    if op == "weight" and choice.tile is not None:
        assert choice.splits >= 1


def test_kernels_compiled_once(rng, test_tile):
    x, weight, bias, geometry, _ = _conv_setup(CONV_CASES[0], rng)
    fc.conv2d(D(x), D(weight), D(bias), geometry)
    before = rt.compiled_kernels()
    fc.conv2d(D(x), D(weight), D(bias), geometry)
    assert rt.compiled_kernels() == before
    assert ("conv2d_fwd", TEST_TILE.name, "<f4", "int32") in before


# ======================================================================================
# Pooling
# ======================================================================================


def _pool_input(rng, dtype=np.float32):
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    x[0, 0, 1, 1] = np.nan  # a NaN wins its windows
    x[0, 1, 2, :] = np.nan
    x[1, 2, :4, :4] = -np.inf  # all -inf windows: -inf, index of the first element
    return x


MAX_POOL_CASES = [
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, dilation=2, ceil_mode=True),
]


def _window(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    kernel = ref.pair(kernel_size)
    return PoolWindow(
        kernel,
        ref.pair(stride) if stride is not None else kernel,
        ref.pair(padding),
        ref.pair(dilation),
        ceil_mode,
    )


@pytest.mark.parametrize("kw", MAX_POOL_CASES, ids=str)
def test_max_pool2d_and_backward(kw, rng):
    x = _pool_input(rng)
    window = _window(**kw)
    out_hw = window.output_size(*x.shape[2:])
    out, idx = fc.max_pool2d(D(x), window, out_hw)
    exp_out, exp_idx = ref.max_pool2d(x, return_indices=True, **kw)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(H(out), exp_out)
    np.testing.assert_array_equal(H(idx), exp_idx)
    grad_out = rng.standard_normal(exp_out.shape).astype(np.float32)
    gin = fc.max_pool2d_backward(D(grad_out), idx, x.shape)
    assert_close_scaled(H(gin), ref.max_pool2d_backward(grad_out, exp_idx, x.shape), k=4)


def test_max_pool2d_float64(rng):
    x = _pool_input(rng, np.float64)
    window = _window(3, 2, 1)
    out, idx = fc.max_pool2d(D(x), window, window.output_size(7, 8))
    exp_out, exp_idx = ref.max_pool2d(x, 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(H(out), exp_out)
    np.testing.assert_array_equal(H(idx), exp_idx)


def test_max_pool2d_window_without_input_pixels():
    """Rows -1 and 2 of a 2-row input: no in-bounds element. -inf, and PyTorch's initial
    index (first row at/after the start in dilation steps: 2), which lies outside the
    plane, so the backward refuses it."""
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    kw = dict(kernel_size=2, stride=2, padding=1, dilation=3, ceil_mode=True)
    window = _window(**kw)
    out, idx = fc.max_pool2d(D(x), window, window.output_size(2, 2))
    exp_out, exp_idx = ref.max_pool2d(x, return_indices=True, **kw)
    np.testing.assert_array_equal(H(out), exp_out)
    np.testing.assert_array_equal(H(idx), exp_idx)
    with pytest.raises(ValueError, match="indices"):
        fc.max_pool2d_backward(D(np.ones_like(exp_out)), idx, x.shape)


@pytest.mark.parametrize("bad", [-1, 56, 2**40])
def test_max_pool2d_backward_rejects_bad_indices(bad):
    grad_out = D(np.ones((1, 2, 2, 2), np.float32))
    indices = np.zeros((1, 2, 2, 2), np.int64)
    indices[0, 1, 1, 0] = bad
    with pytest.raises(ValueError, match="indices"):
        fc.max_pool2d_backward(grad_out, D(indices), (1, 2, 7, 8))


AVG_POOL_CASES = [
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1), divisor_override=5),
    dict(kernel_size=2, stride=1),
]


@pytest.mark.parametrize("kw", AVG_POOL_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool2d_and_backward(kw, dtype, rng):
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    window = _window(
        kw["kernel_size"], kw["stride"], kw.get("padding", 0), 1, kw.get("ceil_mode", False)
    )
    cip, divisor = kw.get("count_include_pad", True), kw.get("divisor_override") or 0
    out = fc.avg_pool2d(D(x), window, window.output_size(7, 8), cip, divisor)
    assert_close_scaled(H(out), ref.avg_pool2d(x, **kw), k=9)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    gin = fc.avg_pool2d_backward(D(grad_out), x.shape, window, cip, divisor)
    assert_close_scaled(H(gin), ref.avg_pool2d_backward(grad_out, x.shape, **kw), k=9)


# ======================================================================================
# GEMM
# ======================================================================================


def _op(a, t):
    return a.T if t else a


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_transposes_alpha_beta(trans_a, trans_b, rng, test_tile):
    m, n, k = 21, 18, 11
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    dc = D(c)
    result = fc.gemm(D(a), D(b), dc, 0.5, -1.5, trans_a, trans_b)
    assert result is dc  # written in place
    expected = ref.gemm(a, b, c, alpha=0.5, beta=-1.5, trans_a=trans_a, trans_b=trans_b)
    assert_close_scaled(H(result), expected, k=k)


def test_gemm_beta_zero_never_reads_c(rng, test_tile):
    a = rng.standard_normal((9, 6)).astype(np.float32)
    b = rng.standard_normal((6, 20)).astype(np.float32)
    dc = D(np.full((9, 20), np.nan, np.float32))
    result = fc.gemm(D(a), D(b), dc, 2.0, 0.0, False, False)
    assert_close_scaled(H(result), 2 * a @ b, k=6)


def test_gemm_strided_operands(rng, test_tile):
    """Non-contiguous a (a column-major view: used as a transpose, no copy), b (a strided
    slice: copied on the device) and c (written back through its strides)."""
    a = rng.standard_normal((7, 9)).astype(np.float32)
    b = rng.standard_normal((18, 5)).astype(np.float32)
    c = rng.standard_normal((7, 10)).astype(np.float32)
    da = D(a.T).T  # F-ordered (7, 9)
    db = D(b)[::2]  # (9, 5), row stride 2
    dbig = D(c)
    dc = dbig[:, ::2]  # (7, 5), strided
    result = fc.gemm(da, db, dc, 1.0, 1.0, False, False)
    assert result is dc
    expected = c.copy()
    expected[:, ::2] = a @ b[::2] + c[:, ::2]
    assert_close_scaled(H(dbig), expected, k=9)


def test_gemm_new_result_and_empty_reduction(rng, test_tile):
    a = rng.standard_normal((5, 3)).astype(np.float64)
    b = rng.standard_normal((3, 4)).astype(np.float64)
    out = fc.gemm(D(a), D(b), None, 1.0, 0.0, False, False)
    assert out.dtype == np.float64
    assert out.shape == (5, 4)
    assert_close_scaled(H(out), a @ b, k=3)
    empty = fc.gemm(
        cuda.device_array((5, 0), np.float32),
        cuda.device_array((0, 4), np.float32),
        None,
        1.0,
        0.0,
        False,
        False,
    )
    np.testing.assert_array_equal(H(empty), np.zeros((5, 4), np.float32))


@pytest.mark.parametrize("tile", list(fc.TILES), ids=str)
def test_gemm_production_tiles(tile, rng):
    """Every registered tile, with partial tiles in M, N and the reduction."""
    cfg = fc.TILES[tile]
    m, n, k = cfg.bm - 3, cfg.bn - 5, cfg.bk + 3
    a = rng.standard_normal((k, m)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    with fc.force(tile=cfg):
        out = fc.gemm(D(a), D(b), None, 1.0, 0.0, True, False)
    assert_close_scaled(H(out), a.T @ b, k=k)


def test_add_batch_dim():
    x = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)
    for d, expected in ((D(x), x), (D(x)[:, :, ::2], x[:, :, ::2])):
        batched = fc.add_batch_dim(d)
        assert batched.shape == (1, *expected.shape)
        np.testing.assert_array_equal(H(batched), expected[None])


def test_broadcast_rows():
    bias = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(H(fc.broadcast_rows(D(bias), 3)), np.tile(bias, (3, 1)))


# ======================================================================================
# The public API, end to end (fastconv.functional -> fastconv.cuda)
# ======================================================================================


def test_public_conv2d_returns_device_array(rng):
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    out = fastconv.conv2d(D(x), D(w), padding="same")
    assert _is_device(out)
    assert_close_scaled(out.copy_to_host(), ref.conv2d(x, w, padding="same"), k=12)


def test_public_conv2d_gradients_and_3d_input(rng):
    xw = rng.standard_normal((3, 6, 10)).astype(np.float32)
    x = xw[:, :, ::2]  # (C, H, W): a batch of one, strided on the device too
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    out = fastconv.conv2d(D(xw)[:, :, ::2], D(w), D(b), stride=2, padding=1)
    expected = ref.conv2d(x, w, b, stride=2, padding=1)
    assert out.shape == expected.shape
    assert_close_scaled(H(out), expected, k=27)
    g = rng.standard_normal(expected.shape).astype(np.float32)
    gin = fastconv.conv2d_input(x.shape, D(w), D(g), stride=2, padding=1)
    assert_close_scaled(H(gin), ref.conv2d_input(x.shape, w, g, stride=2, padding=1), k=36)
    gw = fastconv.conv2d_weight(D(x), w.shape, D(g), stride=2, padding=1)
    assert_close_scaled(H(gw), ref.conv2d_weight(x, w.shape, g, stride=2, padding=1), k=9)
    bias_grad = getattr(fastconv.functional, "conv2d_bias_grad", None)
    if bias_grad is not None:
        assert_close_scaled(H(bias_grad(D(g))), g.sum(axis=(1, 2)), k=9)


def test_public_non_contiguous_input(rng):
    x = rng.standard_normal((2, 3, 6, 10)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dx = D(x)[:, :, :, ::2]
    out = fastconv.conv2d(dx, D(w), padding=1)
    assert_close_scaled(H(out), ref.conv2d(x[..., ::2], w, padding=1), k=27)


def test_public_pooling(rng):
    x = _pool_input(rng)
    out, idx = fastconv.max_pool2d(D(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    exp_out, exp_idx = ref.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(H(out), exp_out)
    np.testing.assert_array_equal(H(idx), exp_idx)
    g = rng.standard_normal(exp_out.shape).astype(np.float32)
    gin = fastconv.max_pool2d_backward(D(g), idx, x.shape)
    assert_close_scaled(H(gin), ref.max_pool2d_backward(g, exp_idx, x.shape), k=9)
    y = rng.standard_normal((3, 7, 8)).astype(np.float32)
    avg = fastconv.avg_pool2d(D(y), 2, count_include_pad=False)  # 3-D
    assert_close_scaled(H(avg), ref.avg_pool2d(y, 2, count_include_pad=False), k=4)
    ga = fastconv.avg_pool2d_backward(D(g[1]), x[1].shape, 3, 2, 1, ceil_mode=True)
    assert_close_scaled(
        H(ga), ref.avg_pool2d_backward(g[1], x[1].shape, 3, 2, 1, ceil_mode=True), k=9
    )


def test_public_max_pool2d_backward_bad_indices():
    g = D(np.ones((1, 1, 2, 2), np.float32))
    bad = D(np.array([[[[0, 1], [4, -2]]]], np.int64))
    with pytest.raises(ValueError, match="indices"):
        fastconv.max_pool2d_backward(g, bad, (1, 1, 2, 2))


def test_public_gemm_and_linear(rng):
    a = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    dc = D(np.full((6, 5), np.nan, np.float32))
    assert fastconv.gemm(D(a), D(b), dc, alpha=3.0) is dc
    assert_close_scaled(H(dc), 3 * a @ b, k=4)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    out = fastconv.linear(D(a), D(w), D(bias))
    assert_close_scaled(H(out), ref.linear(a, w, bias), k=4)


def test_import_fastconv_does_not_import_numba():
    code = "import sys, fastconv; assert 'numba' not in sys.modules, sorted(sys.modules)"
    child = run_python(code)
    assert child.returncode == 0, child.stderr[-3000:]


def test_forced_cpu_algorithm_is_refused_for_device_arrays(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="CPU algorithm"):
        fastconv.conv2d(D(x), D(w), algorithm="direct")


def test_max_pool2d_backward_of_its_own_indices_does_not_wait(rng, monkeypatch):
    """Indices max_pool2d made (every window holds an input pixel) skip the range
    check and its read back; indices from elsewhere, even equal ones, are checked."""
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    window = _window(3, 2, 1, ceil_mode=True)
    out, idx = fc.max_pool2d(D(x), window, window.output_size(7, 8))
    g = rng.standard_normal(out.shape).astype(np.float32)
    expected = ref.max_pool2d_backward(g, H(idx), x.shape)
    reads = []
    original = rt.sync_to_host
    monkeypatch.setattr(rt, "sync_to_host", lambda *a: reads.append(1) or original(*a))
    gin = fc.max_pool2d_backward(D(g), idx, x.shape)
    assert not reads
    assert_close_scaled(H(gin), expected, k=9)
    fc.max_pool2d_backward(D(g), D(H(idx)), x.shape)  # a copy: not known
    assert len(reads) == 1


def test_split_k_workspace_is_reused(rng, test_tile):
    """conv2d_weight's split partial sums go to a per-thread, per-stream workspace that
    the next call reuses (no allocation), and each call still gets its own result."""
    x, weight, _, geometry, kwargs = _conv_setup(CONV_CASES[0], rng)
    results, buffers = [], []
    for _ in range(2):
        grad_out = rng.standard_normal(ref.conv2d(x, weight, **kwargs).shape).astype(np.float32)
        with fc.force(algorithm="implicit_gemm", splits=3):
            gw = fc.conv2d_weight(D(x), weight.shape, D(grad_out), geometry)
        buffers.append(rt.device_pointer(rt.workspace(1, np.float32, 0)))
        results.append((H(gw), ref.conv2d_weight(x, weight.shape, grad_out, **kwargs)))
    assert buffers[0] == buffers[1]
    for got, expected in results:
        assert_close_scaled(got, expected, k=x.shape[0] * x.shape[2] * x.shape[3])
