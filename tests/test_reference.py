"""Tests of the NumPy reference (fastconv.reference) against independent oracles.

1. brute-force pure-Python loops that follow the formulas literally (tiny shapes);
2. scipy.signal.correlate2d for single-channel convolution;
3. finite differences (float64, random projection) for every backward op;
4. PyTorch on a seeded, generated set of argument combinations (skipped without torch).
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pytest
from helpers import assert_close_scaled

from fastconv import reference as ref

DTYPES = [np.float32, np.float64]


# ======================================================================================
# Brute-force oracles: plain loops, written straight from the formulas
# ======================================================================================


def torch_same_pads(k, d):
    """PyTorch's 'same' rule for one dim: total d*(k-1), extra pixel after."""
    total = d * (k - 1)
    return total // 2, total - total // 2


def brute_conv2d(x, w, b, stride, pads, dilation, groups):
    """out[n,k,i,j] = b[k] + sum_{c,r,s} x[n, g*Cg+c, i*sh-pt+r*dh, j*sw-pl+s*dw] w[k,c,r,s]."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    (pt, pb), (pl, pr) = pads
    OH = (H + pt + pb - dh * (R - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (S - 1) - 1) // sw + 1
    Kg = K // groups
    out = np.zeros((N, K, OH, OW))
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for i in range(OH):
                for j in range(OW):
                    acc = 0.0 if b is None else float(b[k])
                    for c in range(Cg):
                        for r in range(R):
                            for s in range(S):
                                h = i * sh - pt + r * dh
                                v = j * sw - pl + s * dw
                                if 0 <= h < H and 0 <= v < W:
                                    acc += float(x[n, g * Cg + c, h, v]) * float(w[k, c, r, s])
                    out[n, k, i, j] = acc
    return out


def brute_pool_out(size, k, s, p, d, ceil_mode):
    num = size + 2 * p - d * (k - 1) - 1
    out = (math.ceil(num / s) if ceil_mode else math.floor(num / s)) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def brute_max_pool2d(x, k, s, p, d, ceil_mode):
    """PyTorch's scan: row-major over the window, take v if v > best or isnan(v)."""
    N, C, H, W = x.shape
    OH = brute_pool_out(H, k[0], s[0], p[0], d[0], ceil_mode)
    OW = brute_pool_out(W, k[1], s[1], p[1], d[1], ceil_mode)
    out = np.zeros((N, C, OH, OW), dtype=x.dtype)
    idx = np.zeros((N, C, OH, OW), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    best, best_i = -math.inf, None
                    for r in range(k[0]):
                        for q in range(k[1]):
                            h = i * s[0] - p[0] + r * d[0]
                            v = j * s[1] - p[1] + q * d[1]
                            if not (0 <= h < H and 0 <= v < W):
                                continue
                            val = x[n, c, h, v]
                            if best_i is None:
                                best_i = h * W + v
                            if val > best or math.isnan(val):
                                best, best_i = val, h * W + v
                    out[n, c, i, j] = best
                    idx[n, c, i, j] = best_i
    return out, idx


def brute_avg_pool2d(x, k, s, p, ceil_mode, count_include_pad, divisor_override):
    N, C, H, W = x.shape
    OH = brute_pool_out(H, k[0], s[0], p[0], 1, ceil_mode)
    OW = brute_pool_out(W, k[1], s[1], p[1], 1, ceil_mode)
    out = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    total, n_valid, n_padded = 0.0, 0, 0
                    for r in range(k[0]):
                        for q in range(k[1]):
                            h, v = i * s[0] - p[0] + r, j * s[1] - p[1] + q
                            if -p[0] <= h < H + p[0] and -p[1] <= v < W + p[1]:
                                n_padded += 1  # inside the padded image
                            if 0 <= h < H and 0 <= v < W:
                                n_valid += 1
                                total += float(x[n, c, h, v])
                    if n_valid == 0:
                        continue
                    if divisor_override is not None:
                        div = divisor_override
                    else:
                        div = n_padded if count_include_pad else n_valid
                    out[n, c, i, j] = total / div
    return out


# -------------------------------- brute-force tests -----------------------------------

# (N, C, H, W, K, R, S, stride, padding, dilation, groups, bias)
BRUTE_CONV = [
    (2, 3, 6, 5, 4, 3, 3, 1, 0, 1, 1, True),
    (1, 2, 7, 6, 3, 3, 2, 2, 1, 1, 1, False),
    (2, 2, 7, 7, 2, 2, 3, (2, 1), (1, 2), (1, 2), 1, True),
    (1, 3, 8, 7, 2, 3, 3, 1, 2, 2, 1, True),
    (1, 2, 6, 6, 3, 2, 2, 1, "same", 1, 1, True),  # even kernel: extra pad after
    (1, 2, 7, 6, 2, 4, 3, 1, "same", (1, 2), 1, False),
    (1, 2, 7, 8, 2, 2, 4, 1, "same", 2, 1, True),  # even kernel, even dilation: symmetric
    (2, 3, 6, 6, 2, 3, 2, 1, "valid", 1, 1, True),
    (2, 4, 6, 6, 4, 3, 3, 1, 1, 1, 2, True),  # 2 groups
    (2, 4, 6, 5, 4, 3, 3, 2, 1, 1, 4, True),  # depthwise
    (1, 3, 6, 6, 6, 3, 2, 1, (1, 0), (2, 1), 3, False),  # depthwise, multiplier 2
    (1, 2, 5, 5, 6, 1, 1, 1, 0, 1, 2, True),  # 1x1 grouped
]


@pytest.mark.parametrize("case", BRUTE_CONV, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_brute(case, dtype):
    N, C, H, W, K, R, S, stride, padding, dilation, groups, has_bias = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // groups, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if has_bias else None
    dh, dw = ref.pair(dilation)
    if padding == "same":
        pads = (torch_same_pads(R, dh), torch_same_pads(S, dw))
    elif padding == "valid":
        pads = ((0, 0), (0, 0))
    else:
        ph, pw = ref.pair(padding)
        pads = ((ph, ph), (pw, pw))
    expected = brute_conv2d(x, w, b, ref.pair(stride), pads, (dh, dw), groups)
    actual = ref.conv2d(x, w, b, stride, padding, dilation, groups)
    assert actual.dtype == dtype
    if padding == "same":
        assert actual.shape[2:] == (H, W)
    assert_close_scaled(actual, expected, C // groups * R * S)


# (kernel, stride, padding, dilation, ceil_mode, H, W)
BRUTE_POOL = [
    (2, None, 0, 1, False, 6, 6),
    (3, 2, 1, 1, False, 7, 8),
    (3, 2, 1, 1, True, 8, 7),
    ((3, 2), (2, 1), (1, 0), 1, True, 6, 5),
    (3, 2, 1, 2, False, 9, 8),
    ((2, 3), (3, 2), (1, 1), (2, 1), True, 8, 9),
    (4, 3, 2, 1, True, 10, 7),
    (1, 2, 0, 1, True, 5, 4),
]


@pytest.mark.parametrize("case", BRUTE_POOL, ids=lambda c: "-".join(map(str, c)))
def test_max_pool2d_brute(case):
    k, s, p, d, ceil_mode, H, W = case
    rng = np.random.default_rng(2)
    x = rng.integers(-3, 4, size=(2, 3, H, W)).astype(np.float64)  # many ties
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 0:2, 0:2] = np.nan  # several NaNs in one window: the last one wins
    x[1, 0] = -np.inf  # all -inf plane: first in-bounds element of each window
    x[1, 1, :, :2] = -np.inf
    kk, ss = ref.pair(k), ref.pair(k if s is None else s)
    exp_out, exp_idx = brute_max_pool2d(x, kk, ss, ref.pair(p), ref.pair(d), ceil_mode)
    out, idx = ref.max_pool2d(x, k, s, p, d, ceil_mode, return_indices=True)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(out, exp_out)
    np.testing.assert_array_equal(idx, exp_idx)
    np.testing.assert_array_equal(ref.max_pool2d(x, k, s, p, d, ceil_mode), exp_out)


BRUTE_AVG_POOL = [c for c in BRUTE_POOL if c[3] == 1]  # avg_pool2d has no dilation


@pytest.mark.parametrize("case", BRUTE_AVG_POOL, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor_override", [None, 3])
def test_avg_pool2d_brute(case, count_include_pad, divisor_override):
    k, s, p, _, ceil_mode, H, W = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, H, W))
    kk, ss = ref.pair(k), ref.pair(k if s is None else s)
    expected = brute_avg_pool2d(
        x, kk, ss, ref.pair(p), ceil_mode, count_include_pad, divisor_override
    )
    actual = ref.avg_pool2d(x, k, s, p, ceil_mode, count_include_pad, divisor_override)
    assert_close_scaled(actual, expected, kk[0] * kk[1])


# ======================================================================================
# scipy.signal.correlate2d for single-channel convolution
# ======================================================================================


@pytest.mark.parametrize(
    ("shape", "kshape", "stride", "dilation"),
    [
        ((9, 7), (3, 3), 1, 1),
        ((10, 11), (4, 2), 1, 1),
        ((12, 9), (3, 2), (2, 3), 1),
        ((13, 12), (3, 3), 1, (2, 3)),
        ((11, 11), (2, 3), 2, 2),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_scipy(shape, kshape, stride, dilation, dtype):
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    w = rng.standard_normal(kshape)
    (sh, sw), (dh, dw) = ref.pair(stride), ref.pair(dilation)
    wd = np.zeros(((kshape[0] - 1) * dh + 1, (kshape[1] - 1) * dw + 1))
    wd[::dh, ::dw] = w  # dilated kernel
    expected = signal.correlate2d(x, wd, mode="valid")[::sh, ::sw]
    actual = ref.conv2d(
        x[None, None].astype(dtype), w[None, None].astype(dtype), None, stride, 0, dilation
    )
    assert_close_scaled(actual[0, 0], expected, w.size)


# ======================================================================================
# Finite differences (float64): <g, f(x+eps v) - f(x-eps v)> / 2eps == <backward(g), v>
# ======================================================================================


def fd_check(f, x, grad_out, analytic, eps=1e-3, rtol=1e-7, seed=5):
    """All ops here are linear (or piecewise linear with a stable argmax), so central
    differences are exact up to rounding."""
    v = np.random.default_rng(seed).standard_normal(x.shape)
    numeric = np.sum(grad_out * (f(x + eps * v) - f(x - eps * v))) / (2 * eps)
    exact = np.sum(analytic * v)
    assert abs(numeric - exact) <= rtol * max(1.0, abs(exact)), (numeric, exact)


CONV_FD = [  # (N, C, H, W, K, R, S, stride, padding, dilation, groups)
    (2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1),
    (2, 4, 8, 9, 4, 3, 2, (2, 3), (1, 0), (1, 2), 2),
    (1, 3, 8, 8, 6, 2, 2, 1, "same", 1, 3),
    (2, 2, 9, 8, 2, 4, 3, 1, "same", (1, 2), 1),
    (1, 2, 8, 8, 2, 3, 3, 2, 0, 1, 1),  # last input row/col never read: zero gradient
    (1, 2, 7, 6, 4, 5, 1, 1, "valid", 1, 2),
]


@pytest.mark.parametrize("case", CONV_FD, ids=lambda c: "-".join(map(str, c)))
def test_conv2d_backward_fd(case):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = case
    rng = np.random.default_rng(6)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C // groups, R, S))
    y = ref.conv2d(x, w, None, stride, padding, dilation, groups)
    g = rng.standard_normal(y.shape)
    gx = ref.conv2d_input(x.shape, w, g, stride, padding, dilation, groups)
    gw = ref.conv2d_weight(x, w.shape, g, stride, padding, dilation, groups)
    assert gx.shape == x.shape
    assert gw.shape == w.shape
    fd_check(lambda t: ref.conv2d(t, w, None, stride, padding, dilation, groups), x, g, gx)
    fd_check(lambda t: ref.conv2d(x, t, None, stride, padding, dilation, groups), w, g, gw)


@pytest.mark.parametrize("case", BRUTE_POOL, ids=lambda c: "-".join(map(str, c)))
def test_max_pool2d_backward_fd(case):
    k, s, p, d, ceil_mode, H, W = case
    rng = np.random.default_rng(7)
    x = rng.permutation(2 * 3 * H * W).reshape(2, 3, H, W).astype(np.float64)  # distinct
    y, idx = ref.max_pool2d(x, k, s, p, d, ceil_mode, return_indices=True)
    g = rng.standard_normal(y.shape)
    gx = ref.max_pool2d_backward(g, idx, x.shape)
    fd_check(lambda t: ref.max_pool2d(t, k, s, p, d, ceil_mode), x, g, gx)


@pytest.mark.parametrize("case", BRUTE_AVG_POOL, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize(
    ("count_include_pad", "divisor_override"), [(True, None), (False, None), (True, 5)]
)
def test_avg_pool2d_backward_fd(case, count_include_pad, divisor_override):
    k, s, p, _, ceil_mode, H, W = case
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 2, H, W))
    args = (k, s, p, ceil_mode, count_include_pad, divisor_override)
    y = ref.avg_pool2d(x, *args)
    g = rng.standard_normal(y.shape)
    gx = ref.avg_pool2d_backward(g, x.shape, *args)
    fd_check(lambda t: ref.avg_pool2d(t, *args), x, g, gx)


def test_linear_backward_fd():
    rng = np.random.default_rng(9)
    x, w, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((6, 5)), rng.standard_normal(6)
    g = rng.standard_normal((3, 4, 6))
    g2, x2 = g.reshape(-1, 6), x.reshape(-1, 5)
    fd_check(lambda t: ref.linear(t, w, b), x, g, ref.gemm(g2, w).reshape(x.shape))
    fd_check(lambda t: ref.linear(x, t, b), w, g, ref.gemm(g2, x2, trans_a=True))
    fd_check(lambda t: ref.linear(x, w, t), b, g, g2.sum(0))


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_backward_fd(trans_a, trans_b):
    """The gradients of gemm, themselves written as gemms with the other transposes."""
    rng = np.random.default_rng(10)
    M, K, N, alpha, beta = 4, 5, 3, 1.5, -0.5
    a = rng.standard_normal((K, M) if trans_a else (M, K))
    b = rng.standard_normal((N, K) if trans_b else (K, N))
    c = rng.standard_normal((M, N))
    g = rng.standard_normal((M, N))
    kw = dict(alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)
    if trans_a:  # d op(a) = alpha g op(b)^T
        ga = ref.gemm(b, g, alpha=alpha, trans_a=trans_b, trans_b=True)
    else:
        ga = ref.gemm(g, b, alpha=alpha, trans_b=not trans_b)
    if trans_b:  # d op(b) = alpha op(a)^T g
        gb = ref.gemm(g, a, alpha=alpha, trans_a=True, trans_b=trans_a)
    else:
        gb = ref.gemm(a, g, alpha=alpha, trans_a=not trans_a)
    fd_check(lambda t: ref.gemm(t, b, c, **kw), a, g, ga)
    fd_check(lambda t: ref.gemm(a, t, c, **kw), b, g, gb)
    fd_check(lambda t: ref.gemm(a, b, t, **kw), c, g, beta * g)


# ======================================================================================
# Helpers, dtypes, argument forms
# ======================================================================================


def test_helpers():
    assert ref.pair(3) == (3, 3)
    assert ref.pair((2, 5)) == (2, 5)
    assert ref.pair([4]) == (4, 4)
    assert ref.pair(np.int64(2)) == (2, 2)
    assert ref.conv_output_size(7, 3, 2, 1, 1) == 4
    assert ref.conv_output_size(6, 2, 1, (0, 1), 1) == 6
    assert ref.same_padding(3) == ((1, 1), (1, 1))
    assert ref.same_padding((4, 2), (1, 2)) == ((1, 2), (1, 1))
    assert ref.same_padding((2, 5), (2, 1)) == ((1, 1), (2, 2))
    assert ref.conv_padding("valid", 3) == ((0, 0), (0, 0))
    assert ref.conv_padding((1, 2), 3) == ((1, 1), (2, 2))
    # ceil_mode: 5 -> (5+0-2-1)/2 = 1 -> ceil 1+1 = 2 ... window 2 starts at 2 < 5: kept
    assert ref.pool_output_size(5, 2, 2, 0, 1, False) == 2
    assert ref.pool_output_size(5, 2, 2, 0, 1, True) == 3
    # window that would start in the right padding is dropped
    assert ref.pool_output_size(4, 2, 2, 1, 1, True) == 3
    assert brute_pool_out(4, 2, 2, 1, 1, True) == 3
    for args in [(6, 3, 2, 1, 1, True), (7, 2, 3, 1, 2, True), (9, 4, 3, 2, 1, False)]:
        assert ref.pool_output_size(*args) == brute_pool_out(*args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_preserved_and_unbatched(dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 6, 5)).astype(dtype)
    w = rng.standard_normal((4, 3, 2, 2)).astype(dtype)
    y = ref.conv2d(x, w, np.ones(4, dtype), 1, "same")
    assert y.dtype == dtype
    assert y.shape == (4, 6, 5)
    np.testing.assert_array_equal(y, ref.conv2d(x[None], w, np.ones(4, dtype), 1, "same")[0])
    gx = ref.conv2d_input(x.shape, w, y, 1, "same")
    gw = ref.conv2d_weight(x, w.shape, y, 1, "same")
    assert gx.dtype == gw.dtype == dtype
    assert gx.shape == x.shape
    assert gw.shape == w.shape
    m, i = ref.max_pool2d(x, 2, return_indices=True)
    assert m.dtype == dtype
    assert i.dtype == np.int64
    assert m.shape == (3, 3, 2)
    assert ref.max_pool2d_backward(m, i, x.shape).dtype == dtype
    a = ref.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    assert a.dtype == dtype
    assert a.ndim == 3
    ga = ref.avg_pool2d_backward(a, x.shape, 3, 2, 1, True, False)
    assert ga.dtype == dtype
    assert ga.shape == x.shape
    mat = x.reshape(3, 30)
    assert ref.gemm(mat, mat, mat[:, :3], alpha=2.0, beta=0.5, trans_b=True).dtype == dtype
    assert ref.matmul(mat, mat.T).dtype == dtype
    assert ref.linear(mat, mat, mat[:, 0]).dtype == dtype
    assert ref.linear(mat[0], mat).shape == (3,)


def test_non_contiguous_inputs():
    rng = np.random.default_rng(12)
    base = rng.standard_normal((7, 2, 12, 3)).transpose(1, 3, 0, 2)[:, :, :, ::2]  # 2,3,7,6
    x = np.ascontiguousarray(base)
    w = rng.standard_normal((4, 3, 3, 3)).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(
        ref.conv2d(base, w, None, 2, 1), ref.conv2d(x, np.ascontiguousarray(w), None, 2, 1)
    )
    np.testing.assert_array_equal(ref.max_pool2d(base, 3, 2, 1), ref.max_pool2d(x, 3, 2, 1))
    np.testing.assert_array_equal(ref.avg_pool2d(base, 3, 2, 1), ref.avg_pool2d(x, 3, 2, 1))


def test_max_pool_nan_and_inf_rules():
    x = np.array([[[[1.0, np.nan, 7.0], [np.nan, 5.0, 2.0], [3.0, 3.0, 0.0]]]])
    out, idx = ref.max_pool2d(x, 2, 1, return_indices=True)
    assert np.isnan(out[0, 0, 0, 0])
    assert idx[0, 0, 0, 0] == 3
    assert np.isnan(out[0, 0, 0, 1])
    assert idx[0, 0, 0, 1] == 1
    assert out[0, 0, 1, 1] == 5.0
    assert idx[0, 0, 1, 1] == 4
    x = np.full((1, 1, 3, 3), -np.inf)
    out, idx = ref.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert np.all(out == -np.inf)
    np.testing.assert_array_equal(idx[0, 0], [[0, 1], [3, 4]])  # first in-bounds element
    x = np.array([[[[-0.0, 0.0, 2.0, 2.0]]]])
    out, idx = ref.max_pool2d(x, (1, 2), 2, return_indices=True)
    assert np.signbit(out[0, 0, 0, 0])
    assert idx[0, 0, 0, 0] == 0
    assert idx[0, 0, 0, 1] == 2


# ======================================================================================
# PyTorch, on generated argument combinations
# ======================================================================================


@contextlib.contextmanager
def quiet():
    """Silence torch's UserWarnings (e.g. 'same' with even kernels) under -W error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _maybe_pair(rng, a, b):
    return int(a) if a == b and rng.random() < 0.6 else (int(a), int(b))


def gen_conv_cases(n, seed=100):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        kind = ("dense", "grouped", "depthwise", "multiplier")[i % 4]
        cg = int(rng.integers(1, 4))
        if kind == "dense":
            G, C, K = 1, cg, int(rng.integers(1, 5))
        elif kind == "grouped":
            G, C, K = 2, 2 * cg, 2 * int(rng.integers(1, 3))
        elif kind == "depthwise":
            C = int(rng.integers(1, 5))
            G, K = C, C
        else:
            C = int(rng.integers(1, 4))
            G, K = C, C * int(rng.integers(2, 4))
        R, S = (int(v) for v in rng.integers(1, 6, 2))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2))
        mode = ("int", "pair", "same", "valid")[int(rng.integers(0, 4))]
        if mode == "same":
            stride = 1
            padding = "same"
        else:
            stride = _maybe_pair(rng, *rng.integers(1, 4, 2))
            padding = {
                "int": int(rng.integers(0, 3)),
                "pair": tuple(int(v) for v in rng.integers(0, 3, 2)),
                "valid": "valid",
            }[mode]
        H = (R - 1) * dh + 1 + int(rng.integers(0, 6))
        W = (S - 1) * dw + 1 + int(rng.integers(0, 6))
        cases.append(
            dict(
                N=int(rng.integers(1, 3)),
                C=C,
                H=H,
                W=W,
                K=K,
                R=R,
                S=S,
                stride=stride,
                padding=padding,
                dilation=_maybe_pair(rng, dh, dw),
                groups=G,
                bias=bool(rng.random() < 0.5),
                dtype=DTYPES[i % 2],
                unbatched=(i % 7 == 3),
            )
        )
    return cases


def _case_id(c):
    return "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items())


@pytest.mark.parametrize("case", gen_conv_cases(60), ids=_case_id)
def test_conv2d_vs_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    c = case
    rng = np.random.default_rng(13)
    xshape = (c["C"], c["H"], c["W"]) if c["unbatched"] else (c["N"], c["C"], c["H"], c["W"])
    x = rng.standard_normal(xshape).astype(c["dtype"])
    w = rng.standard_normal((c["K"], c["C"] // c["groups"], c["R"], c["S"])).astype(c["dtype"])
    b = rng.standard_normal(c["K"]).astype(c["dtype"]) if c["bias"] else None
    args = (c["stride"], c["padding"], c["dilation"], c["groups"])

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    with quiet():
        yt = F.conv2d(xt, wt, None if b is None else torch.tensor(b), *args)
        g = rng.standard_normal(tuple(yt.shape)).astype(c["dtype"])
        yt.backward(torch.tensor(g))
    y = ref.conv2d(x, w, b, *args)
    assert y.dtype == c["dtype"]
    k_fwd = c["C"] // c["groups"] * c["R"] * c["S"]
    assert_close_scaled(y, yt.detach().numpy(), k_fwd, err_msg="conv2d")
    gx = ref.conv2d_input(x.shape, w, g, *args)
    k_in = c["K"] // c["groups"] * c["R"] * c["S"]
    assert_close_scaled(gx, xt.grad.numpy(), k_in, err_msg="conv2d_input")
    gw = ref.conv2d_weight(x, w.shape, g, *args)
    k_w = g[..., 0, 0].size // c["K"] * g.shape[-2] * g.shape[-1]
    assert_close_scaled(gw, wt.grad.numpy(), k_w, err_msg="conv2d_weight")


@pytest.mark.parametrize(
    ("xshape", "wshape", "stride", "padding", "dilation", "groups"),
    [
        ((2, 4, 8, 8), (6, 2, 3, 3), 2, 0, 1, 2),  # input taller than the output implies
        ((1, 3, 9, 10), (3, 1, 2, 3), (3, 2), (1, 0), (2, 1), 3),
        ((1, 3, 9, 7), (2, 3, 3, 1), (2, 2), 1, 1, 1),
    ],
)
def test_torch_nn_grad_api(xshape, wshape, stride, padding, dilation, groups):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(14)
    x, w = rng.standard_normal(xshape), rng.standard_normal(wshape)
    args = (stride, padding, dilation, groups)
    y = ref.conv2d(x, w, None, *args)
    g = rng.standard_normal(y.shape)
    with quiet():
        gx_t = torch.nn.grad.conv2d_input(xshape, torch.tensor(w), torch.tensor(g), *args)
        gw_t = torch.nn.grad.conv2d_weight(torch.tensor(x), wshape, torch.tensor(g), *args)
    assert_close_scaled(ref.conv2d_input(xshape, w, g, *args), gx_t.numpy(), 20)
    assert_close_scaled(ref.conv2d_weight(x, wshape, g, *args), gw_t.numpy(), 200)
    if xshape == (2, 4, 8, 8):
        assert not ref.conv2d_input(xshape, w, g, *args)[:, :, 7].any()


def gen_pool_cases(n, seed, max_pool):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        kh, kw = (int(v) for v in rng.integers(1, 5, 2))
        ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2)) if max_pool else (1, 1)
        stride = None if rng.random() < 0.2 else _maybe_pair(rng, *rng.integers(1, 4, 2))
        H = max(1, (kh - 1) * dh + 1 - 2 * ph + int(rng.integers(0, 6)))
        W = max(1, (kw - 1) * dw + 1 - 2 * pw + int(rng.integers(0, 6)))
        case = dict(
            N=int(rng.integers(1, 3)),
            C=int(rng.integers(1, 4)),
            H=H,
            W=W,
            kernel_size=_maybe_pair(rng, kh, kw),
            stride=stride,
            padding=_maybe_pair(rng, ph, pw),
            ceil_mode=bool(rng.random() < 0.5),
            dtype=DTYPES[i % 2],
            unbatched=(i % 5 == 2),
        )
        if max_pool:
            case.update(dilation=_maybe_pair(rng, dh, dw), special=("ties", "nan", "inf")[i % 3])
        else:
            case.update(
                count_include_pad=bool(rng.random() < 0.5),
                divisor_override=None if rng.random() < 0.6 else int(rng.integers(1, kh * kw + 2)),
            )
        cases.append(case)
    return cases


def _pool_input(c, rng, special="none"):
    shape = (c["N"], c["C"], c["H"], c["W"])
    if special == "none":
        x = rng.standard_normal(shape)
    else:
        x = rng.integers(-2, 3, size=shape).astype(np.float64)  # ties everywhere
    if special == "nan":
        x[rng.random(shape) < 0.15] = np.nan
    if special == "inf":
        x[rng.random(shape) < 0.5] = -np.inf
        x[rng.random(shape) < 0.05] = np.inf
    x = x.astype(c["dtype"])
    return x[0] if c["unbatched"] else x


@pytest.mark.parametrize("case", gen_pool_cases(45, 200, max_pool=True), ids=_case_id)
def test_max_pool2d_vs_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    c = case
    rng = np.random.default_rng(15)
    x = _pool_input(c, rng, c["special"])
    args = (c["kernel_size"], c["stride"], c["padding"], c["dilation"], c["ceil_mode"])
    xt = torch.tensor(x, requires_grad=True)
    with quiet():
        yt, it = F.max_pool2d(xt, *args, return_indices=True)
        g = rng.standard_normal(tuple(yt.shape)).astype(c["dtype"])
        yt.backward(torch.tensor(g))
    y, idx = ref.max_pool2d(x, *args, return_indices=True)
    assert y.dtype == c["dtype"]
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(y, yt.detach().numpy())  # exact, NaN and signs included
    np.testing.assert_array_equal(idx, it.numpy())
    np.testing.assert_array_equal(ref.max_pool2d(x, *args), y)
    kh, kw = ref.pair(c["kernel_size"])
    gx = ref.max_pool2d_backward(g, idx, x.shape)
    assert_close_scaled(gx, xt.grad.numpy(), kh * kw, err_msg="max_pool2d_backward")


def test_max_pool2d_empty_window_vs_torch():
    """H=W=1, k=2, p=1, d=2: the only window reads rows/cols -1 and 1, neither in bounds.
    PyTorch returns -inf and index h0*W + w0 with h0 = w0 = 1 (= 2, outside the plane)."""
    torch = pytest.importorskip("torch")
    x = np.array([[[[5.0]]]])
    y, idx = ref.max_pool2d(x, 2, 1, 1, 2, return_indices=True)
    yt, it = torch.nn.functional.max_pool2d(torch.tensor(x), 2, 1, 1, 2, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    assert y[0, 0, 0, 0] == -np.inf
    assert idx[0, 0, 0, 0] == 2
    assert not ref.max_pool2d_backward(np.ones_like(y), idx, x.shape).any()


@pytest.mark.parametrize("case", gen_pool_cases(45, 300, max_pool=False), ids=_case_id)
def test_avg_pool2d_vs_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    c = case
    rng = np.random.default_rng(16)
    x = _pool_input(c, rng)
    args = (
        c["kernel_size"],
        c["stride"],
        c["padding"],
        c["ceil_mode"],
        c["count_include_pad"],
        c["divisor_override"],
    )
    xt = torch.tensor(x, requires_grad=True)
    with quiet():
        yt = F.avg_pool2d(xt, *args)
        g = rng.standard_normal(tuple(yt.shape)).astype(c["dtype"])
        yt.backward(torch.tensor(g))
    y = ref.avg_pool2d(x, *args)
    assert y.dtype == c["dtype"]
    kh, kw = ref.pair(c["kernel_size"])
    assert_close_scaled(y, yt.detach().numpy(), kh * kw, err_msg="avg_pool2d")
    gx = ref.avg_pool2d_backward(g, x.shape, *args)
    assert gx.dtype == c["dtype"]
    assert_close_scaled(gx, xt.grad.numpy(), kh * kw, err_msg="avg_pool2d_backward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize(
    ("alpha", "beta", "nan_c"),
    [(1.0, 0.0, False), (0.5, 0.0, True), (1.0, 1.0, False), (-2.0, 0.25, False)],
)
def test_gemm_vs_torch(dtype, trans_a, trans_b, alpha, beta, nan_c):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(17)
    M, K, N = 5, 7, 4
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    c = np.full((M, N), np.nan, dtype) if nan_c else rng.standard_normal((M, N)).astype(dtype)
    c_before = c.copy()
    out = ref.gemm(a, b, c, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)
    ta, tb = torch.tensor(a), torch.tensor(b)
    expected = torch.addmm(
        torch.tensor(c), ta.T if trans_a else ta, tb.T if trans_b else tb, beta=beta, alpha=alpha
    ).numpy()
    assert out.dtype == dtype
    assert out is not c
    assert not np.isnan(out).any() or not nan_c
    np.testing.assert_array_equal(c, c_before)
    assert_close_scaled(out, expected, K + 1)
    mm = ref.matmul(a.T if trans_a else a, b.T if trans_b else b)
    assert_close_scaled(
        mm, (ta.T if trans_a else ta).numpy() @ (tb.T if trans_b else tb).numpy(), K
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6,), (3, 6), (2, 3, 6)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_vs_torch(dtype, shape, bias):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(18)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((4, 6)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype) if bias else None
    y = ref.linear(x, w, b)
    yt = torch.nn.functional.linear(
        torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b)
    ).numpy()
    assert y.dtype == dtype
    assert_close_scaled(y, yt, 7)
