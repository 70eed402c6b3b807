"""Winograd F(4x4, 3x3): accuracy bound, selection, and limits.

Documented error (README): over the dense 3x3 stride-1 layers of the benchmark
layer set (batch 1) with standard-normal and uniform data, 20 draws of each, the
largest |winograd - reference_float64| / max|reference_float64| measured 6.0e-06
(the exact GEMM path: 6.3e-07). WINOGRAD_ERROR_BOUND is the bound this file
enforces, on fixed draws.
"""

import zlib

import numpy as np
import pytest

import fastconv
from fastconv import reference

WINOGRAD_ERROR_BOUND = 1e-5

# (name, C, H=W, K) of the dense 3x3 stride-1 pad-1 layers of the layer set.
DENSE_3X3_LAYERS = [
    ("resnet_3x3_56", 64, 56, 64),
    ("resnet_3x3_28", 128, 28, 128),
    ("resnet_3x3_14", 256, 14, 256),
    ("resnet_3x3_7", 512, 7, 512),
    ("vgg_3x3_112", 64, 112, 128),
    ("alexnet_3x3_13", 384, 13, 384),
]


def relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize(
    ("name", "c", "hw", "k"), DENSE_3X3_LAYERS, ids=[row[0] for row in DENSE_3X3_LAYERS]
)
@pytest.mark.parametrize("dist", ["normal", "uniform"])
def test_error_bound_on_layer_set(name, c, hw, k, dist):
    rng = np.random.default_rng(zlib.crc32(f"{name}-{dist}".encode()))
    if dist == "normal":
        x, w = rng.standard_normal((1, c, hw, hw)), rng.standard_normal((k, c, 3, 3))
    else:
        x, w = rng.random((1, c, hw, hw)), rng.random((k, c, 3, 3)) - 0.5
    expected = reference.conv2d(x, w, None, 1, 1)
    got = fastconv.conv2d(
        x.astype(np.float32), w.astype(np.float32), None, 1, 1, algorithm="winograd"
    )
    assert relative_error(got, expected) <= WINOGRAD_ERROR_BOUND


SMALL_CASES = [
    # (N, C, H, W, K, padding, bias)
    (1, 1, 3, 3, 1, 0, False),
    (2, 3, 9, 11, 5, 1, True),
    (1, 7, 6, 19, 3, (1, 0), True),
    (1, 8, 1, 1, 4, 1, False),
    (2, 5, 7, 30, 6, "same", True),
    (1, 4, 3, 3, 2, 2, False),
    (3, 16, 5, 4, 9, (0, 2), True),
    (1, 2, 13, 17, 33, 3, True),
    # rows of more than 16 tiles (the AVX-512 row split works 16 tiles at a time):
    # exactly 16 and 32 tiles, a partial second group, and wide padding on both sides
    (1, 3, 6, 64, 2, 1, False),
    (1, 2, 5, 128, 3, (1, 0), True),
    (2, 3, 4, 71, 2, 1, False),
    (1, 2, 3, 90, 2, (0, 3), True),
]


@pytest.mark.parametrize("case", SMALL_CASES)
def test_matches_reference_on_small_shapes(case):
    """On a handful of outputs, max|y| can be far below the terms that cancel into it
    (one 3x3 output over 300 draws: |error| / |y| up to 3.5e-4), so the error is scaled
    by the largest sum of |terms|, the bound a summation's rounding obeys."""
    n, c, h, w, k, padding, with_bias = case
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c, 3, 3))
    b = rng.standard_normal(k) if with_bias else None
    expected = reference.conv2d(x, wt, b, 1, padding)
    term_sums = reference.conv2d(
        np.abs(x), np.abs(wt), None if b is None else np.abs(b), 1, padding
    )
    got = fastconv.conv2d(
        x.astype(np.float32),
        wt.astype(np.float32),
        None if b is None else b.astype(np.float32),
        1,
        padding,
        algorithm="winograd",
    )
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() / term_sums.max() <= WINOGRAD_ERROR_BOUND


def test_selector_uses_winograd_only_where_it_wins():
    choose = fastconv.conv2d_algorithm
    assert choose((8, 64, 56, 56), (64, 64, 3, 3), 1, 1) == "winograd"
    assert choose((2, 64, 112, 112), (128, 64, 3, 3), 1, 1) == "winograd"
    # small problems, narrow outputs, strided, dilated, grouped, few channels, float64: not
    assert choose((32, 32, 8, 8), (32, 32, 3, 3), 1, 1) == "direct"
    assert choose((8, 512, 7, 7), (512, 512, 3, 3), 1, 1) == "winograd"
    assert choose((8, 256, 6, 6), (256, 256, 3, 3), 1, 1) != "winograd"
    assert choose((8, 256, 14, 6), (256, 256, 3, 3), 1, 1) != "winograd"
    assert choose((8, 64, 56, 56), (64, 64, 3, 3), 2, 1) != "winograd"
    assert choose((8, 64, 56, 56), (64, 64, 3, 3), 1, 2, 2) != "winograd"
    assert choose((8, 64, 56, 56), (64, 32, 3, 3), 1, 1, 1, 2) != "winograd"
    assert choose((8, 16, 56, 56), (64, 16, 3, 3), 1, 1) != "winograd"
    assert choose((8, 64, 56, 56), (64, 64, 3, 3), 1, 1, dtype=np.float64) != "winograd"


def test_input_gradient_through_winograd_matches_reference():
    # conv2d_input of a stride-1 3x3 layer is itself a 3x3 stride-1 convolution,
    # large enough here for the selector to pick Winograd.
    shape = (2, 48, 24, 48)
    assert fastconv.conv2d_algorithm(shape, (40, 48, 3, 3), 1, 1) == "winograd"
    assert fastconv.conv2d_input_algorithm(shape, (40, 48, 3, 3), 1, 1) == "winograd (transposed)"
    rng = np.random.default_rng(7)
    w = rng.standard_normal((40, 48, 3, 3))
    gy = rng.standard_normal((2, 40, 24, 48))
    expected = reference.conv2d_input(shape, w, gy, 1, 1)
    got = fastconv.conv2d_input(shape, w.astype(np.float32), gy.astype(np.float32), 1, 1)
    assert relative_error(got, expected) <= WINOGRAD_ERROR_BOUND


@pytest.mark.parametrize(
    ("weight_shape", "kwargs"),
    [
        ((4, 4, 5, 5), {}),
        ((4, 4, 3, 3), {"stride": 2}),
        ((4, 4, 3, 3), {"dilation": 2}),
        ((4, 2, 3, 3), {"groups": 2}),
    ],
)
def test_forcing_winograd_where_unsupported_is_a_value_error(weight_shape, kwargs):
    x = np.ones((1, 4, 9, 9), np.float32)
    with pytest.raises(ValueError, match="winograd"):
        fastconv.conv2d(x, np.ones(weight_shape, np.float32), algorithm="winograd", **kwargs)


def test_winograd_is_float32_only():
    with pytest.raises(ValueError, match="float32"):
        fastconv.conv2d(np.ones((1, 4, 9, 9)), np.ones((4, 4, 3, 3)), algorithm="winograd")


def test_deterministic_across_thread_counts():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 32, 20, 52)).astype(np.float32)
    w = rng.standard_normal((48, 32, 3, 3)).astype(np.float32)
    previous = fastconv.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 1):
            fastconv.set_num_threads(threads)
            results.append(fastconv.conv2d(x, w, None, 1, 1, algorithm="winograd"))
    finally:
        fastconv.set_num_threads(previous)
    assert all(np.array_equal(results[0], r) for r in results[1:])


# Shapes that take each of the kernel's two schedules (csrc/conv2d/conv2d_winograd_impl.h):
# per-thread chunks with the filters transformed once (small filters, >= 64 tiles per
# thread), and all threads on each chunk with per-job filter blocks (otherwise). Channel
# counts above 256 split the GEMMs' reduction into blocks; odd K leaves partial slivers.
SCHEDULE_CASES = [
    # (N, C, H=W, K): the schedule at 2 threads
    (2, 288, 32, 40),  # independent: 128 tiles, 1.7 MB of transformed filters
    (3, 40, 9, 20),  # cooperative, one output-channel block split into two tile parts
    (2, 300, 7, 70),  # cooperative: 8 tiles, three output-channel blocks
]


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("threads", [1, 2])
def test_both_schedules_match_reference(case, threads):
    n, c, hw, k = case
    rng = np.random.default_rng(n * 1000 + c)
    x = rng.standard_normal((n, c, hw, hw))
    w = rng.standard_normal((k, c, 3, 3))
    b = rng.standard_normal(k)
    expected = reference.conv2d(x, w, b, 1, 1)
    previous = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(threads)
        got = fastconv.conv2d(
            x.astype(np.float32),
            w.astype(np.float32),
            b.astype(np.float32),
            1,
            1,
            algorithm="winograd",
        )
    finally:
        fastconv.set_num_threads(previous)
    assert relative_error(got, expected) <= WINOGRAD_ERROR_BOUND
