"""The one-step plain calls (conv2d, max_pool2d, gemm without Python validation).

A plain call must give exactly what the validating path gives, and must decline (return
None, so that the validating path runs and raises) every call outside its plain domain.
The validation tests (``test_validation``, ``test_validation_arrays``) run every invalid
call with the plain calls live as well.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import _cpu

rng = np.random.default_rng(0)


def validating_only(monkeypatch):
    for name in ("conv2d_plain", "max_pool2d_plain", "gemm_plain"):
        monkeypatch.setattr(_cpu, name, lambda *args: None)


CONV_CALLS = [
    ((2, 8, 9, 11), (16, 8, 3, 3), {"padding": 1}),
    ((8, 9, 11), (6, 8, 3, 3), {"stride": 2}),  # unbatched
    ((3, 12, 10, 10), (12, 3, 3, 5), {"padding": (1, 2), "dilation": (2, 1), "groups": 4}),
    ((2, 6, 14, 14), (6, 1, 5, 5), {"stride": (2, 1), "padding": 2, "groups": 6}),
    ((1, 64, 7, 7), (64, 64, 3, 3), {"padding": 1}),
    ((4, 32, 5, 5), (16, 32, 1, 1), {}),
]


@pytest.mark.parametrize(("x_shape", "w_shape", "kwargs"), CONV_CALLS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_plain_conv2d_is_the_validating_path(monkeypatch, x_shape, w_shape, kwargs, dtype, bias):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    plain = _cpu.conv2d_plain(
        x,
        w,
        b,
        kwargs.get("stride", 1),
        kwargs.get("padding", 0),
        kwargs.get("dilation", 1),
        kwargs.get("groups", 1),
    )
    assert plain is not None
    ran = fastconv.last_algorithms()["conv2d"]
    validating_only(monkeypatch)
    expected = fastconv.conv2d(x, w, b, **kwargs)
    assert fastconv.last_algorithms()["conv2d"] == ran
    assert plain.dtype == expected.dtype
    assert plain.shape == expected.shape
    np.testing.assert_array_equal(plain, expected)


POOL_CALLS = [
    ((2, 3, 9, 11), 3, None, 1, 1, False),
    ((3, 9, 11), 2, 2, 0, 1, True),
    ((2, 4, 13, 13), (3, 2), (2, 1), (1, 1), (2, 1), True),
    ((1, 1, 5, 5), 5, 1, 2, 1, False),
]


@pytest.mark.parametrize(("shape", "k", "s", "p", "d", "ceil"), POOL_CALLS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("indices", [False, True], ids=["values", "indices"])
def test_plain_max_pool2d_is_the_validating_path(
    monkeypatch, shape, k, s, p, d, ceil, dtype, indices
):
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[::7] = np.nan
    plain = _cpu.max_pool2d_plain(x, k, s, p, d, ceil, indices)
    assert plain is not None
    validating_only(monkeypatch)
    expected = fastconv.max_pool2d(x, k, s, p, d, ceil, indices)
    plain, expected = (plain, expected) if indices else ((plain,), (expected,))
    for got, want in zip(plain, expected):
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("trans_a", "trans_b"), [(False, False), (True, False), (False, True)])
def test_plain_gemm_is_the_validating_path(monkeypatch, dtype, trans_a, trans_b):
    a = rng.standard_normal((37, 19) if trans_a else (19, 37)).astype(dtype)
    b = rng.standard_normal((23, 37) if trans_b else (37, 23)).astype(dtype)
    a_view = np.repeat(a, 2, axis=1)[:, ::2]  # strided: the kernel reads strides
    plain = _cpu.gemm_plain(a_view, b, 1.5, trans_a, trans_b)
    assert plain is not None
    validating_only(monkeypatch)
    expected = fastconv.gemm(a_view, b, alpha=1.5, trans_a=trans_a, trans_b=trans_b)
    assert plain.dtype == expected.dtype
    np.testing.assert_array_equal(plain, expected)


X = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
W = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)


@pytest.mark.parametrize(
    ("what", "args"),
    [
        ("list input", (X.tolist(), W, None, 1, 0, 1, 1)),
        ("big-endian input", (X.astype(">f4"), W.astype(">f4"), None, 1, 0, 1, 1)),
        ("float16", (X.astype(np.float16), W.astype(np.float16), None, 1, 0, 1, 1)),
        ("mixed dtypes", (X, W.astype(np.float64), None, 1, 0, 1, 1)),
        ("transposed view", (X.transpose(0, 1, 3, 2), W, None, 1, 0, 1, 1)),
        ("empty batch", (X[:0], W, None, 1, 0, 1, 1)),
        ("bool stride", (X, W, None, True, 0, 1, 1)),
        ("numpy int stride", (X, W, None, np.int64(1), 0, 1, 1)),
        ("list padding", (X, W, None, 1, [1, 1], 1, 1)),
        ("string padding", (X, W, None, 1, "same", 1, 1)),
        ("3-tuple stride", (X, W, None, (1, 1, 1), 0, 1, 1)),
        ("zero stride", (X, W, None, 0, 0, 1, 1)),
        ("negative padding", (X, W, None, 1, -1, 1, 1)),
        ("huge dilation", (X, W, None, 1, 0, 2**31, 1)),
        ("groups not dividing", (X, W, None, 1, 0, 1, 3)),
        ("output too small", (X, W, None, 1, 0, 4, 1)),
        ("bias of the wrong size", (X, W, np.zeros(3, np.float32), 1, 0, 1, 1)),
        ("bias as a list", (X, W, [0.0] * 4, 1, 0, 1, 1)),
        ("2-D input", (X[0, 0], W, None, 1, 0, 1, 1)),
    ],
)
def test_plain_conv2d_declines(what, args):
    assert _cpu.conv2d_plain(*args) is None, what


@pytest.mark.parametrize(
    ("what", "args"),
    [
        ("padding above half the kernel", (X, 2, None, 2, 1, False, False)),
        ("empty stride", (X, 2, (), 0, 1, False, False)),
        ("numpy bool", (X, 2, None, 0, 1, np.bool_(True), False)),
        ("int ceil_mode", (X, 2, None, 0, 1, 1, False)),
        ("window larger than the plane", (X, 7, None, 0, 1, False, False)),
        ("strided view", (X[:, :, ::2], 2, None, 0, 1, False, False)),
        (
            "unaligned",
            (
                np.frombuffer(bytearray(X.nbytes + 1), np.float32, X.size, 1).reshape(X.shape),
                2,
                None,
                0,
                1,
                False,
                False,
            ),
        ),
    ],
)
def test_plain_max_pool2d_declines(what, args):
    assert _cpu.max_pool2d_plain(*args) is None, what


def test_plain_gemm_declines():
    a = rng.standard_normal((4, 5)).astype(np.float32)
    assert _cpu.gemm_plain(a, a, 1.0, False, False) is None  # inner dims differ
    assert _cpu.gemm_plain(a, a.T, np.float32(1.0), False, False) is None
    assert _cpu.gemm_plain(a, a.T, 1.0, 0, False) is None
    assert _cpu.gemm_plain(a, a.astype(np.float64).T, 1.0, False, False) is None
    assert _cpu.gemm_plain(a[:, :0], a[:0], 1.0, False, False) is None
    assert _cpu.gemm_plain(a, a.T, 1.0, False, False) is not None


def test_valid_calls_outside_the_plain_kind_still_work():
    expected = fastconv.conv2d(X, W, None, 1, 1)
    np.testing.assert_array_equal(fastconv.conv2d(X, W, None, [1, 1], np.int64(1)), expected)
    strided = np.repeat(X, 2, axis=3)[..., ::2]
    np.testing.assert_array_equal(fastconv.conv2d(strided, W, padding=1), expected)
    np.testing.assert_array_equal(fastconv.max_pool2d(X, 2, ()), fastconv.max_pool2d(X, 2, None))
    with pytest.raises(TypeError, match="dtype"):
        fastconv.conv2d(X.astype(">f4"), W.astype(">f4"))
