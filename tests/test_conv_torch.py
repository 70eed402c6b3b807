"""Conv2d against two independent oracles, both in float64: PyTorch's autograd
(forward, conv2d_input, conv2d_weight and conv2d_bias_grad on a subset of the
hand-picked and generated cases, and every padding form) and finite differences
(directional derivatives along random projections for a subset of the cases, and every
entry of both gradients of one small strided, dilated, grouped convolution); also
conv2d_bias_grad against a float64 sum, on strided and unbatched gradients too. Results
are bit-exact on integer-valued data and otherwise within the tolerance scaled by the
reduction length (``conv_helpers.assert_matches``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conv_helpers import (
    DTYPES,
    GENERATED,
    HAND_CASES,
    C,
    Case,
    _strided_copy,
    assert_matches,
    f64,
    make_data,
)
from helpers import assert_close_scaled

import fastconv

# --------------------------------------------------------------------------- vs PyTorch


@pytest.fixture
def torch():
    """PyTorch on one thread: its OpenMP pool would otherwise spin against fastconv's on a
    2-core machine and slow both down."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


def torch_conv(torch, case: Case, x, w, b, gy, with_bias_grad=False):
    """Forward, grad wrt input, grad wrt weight (and bias) from PyTorch autograd in float64."""
    tx = torch.tensor(f64(x), requires_grad=True)
    tw = torch.tensor(f64(w), requires_grad=True)
    tb = None if b is None else torch.tensor(f64(b), requires_grad=with_bias_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # padding='same' with an even kernel warns
        y = torch.nn.functional.conv2d(
            tx,
            tw,
            tb,
            stride=case.stride,
            padding=case.padding,
            dilation=case.dilation,
            groups=case.groups,
        )
    y.backward(torch.tensor(f64(gy)))
    if with_bias_grad:
        return y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()
    return y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy()


TORCH_CASES = HAND_CASES[::2] + GENERATED[::4]


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_vs_torch(case, torch):
    x, w, b, gy = make_data(case)
    y, gx, gw = torch_conv(torch, case, x, w, b, gy)
    assert_matches(fastconv.conv2d(x, w, b, **case.args()), y, case.k_forward(), case, "fwd")
    assert_matches(
        fastconv.conv2d_input(case.input_shape, w, gy, **case.args()),
        gx,
        case.k_input(),
        case,
        "conv2d_input",
    )
    assert_matches(
        fastconv.conv2d_weight(x, case.weight_shape, gy, **case.args()),
        gw,
        case.k_weight(),
        case,
        "conv2d_weight",
    )


@pytest.mark.parametrize("padding", [0, 2, (1, 3), "same", "valid"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_padding_forms_vs_torch(padding, dtype, torch):
    for i, (r, s, d) in enumerate([(3, 3, 1), (2, 4, 1), (4, 3, (2, 3)), (1, 6, 2), (5, 5, 1)]):
        case = C(2, 6, 13, 12, 10, r, s, padding=padding, dilation=d, dtype=dtype, seed=100 + i)
        if min(case.out_hw()) < 1:
            continue
        x, w, b, gy = make_data(case)
        y, gx, gw = torch_conv(torch, case, x, w, b, gy)
        assert_matches(fastconv.conv2d(x, w, b, **case.args()), y, case.k_forward(), case, "fwd")
        assert_matches(
            fastconv.conv2d_input(case.input_shape, w, gy, **case.args()),
            gx,
            case.k_input(),
            case,
            "conv2d_input",
        )
        assert_matches(
            fastconv.conv2d_weight(x, case.weight_shape, gy, **case.args()),
            gw,
            case.k_weight(),
            case,
            "conv2d_weight",
        )


@pytest.mark.parametrize("case", [c._replace(bias=True) for c in TORCH_CASES[::3]], ids=str)
def test_bias_grad_vs_torch(case, torch):
    x, w, b, gy = make_data(case)
    *_, gb = torch_conv(torch, case, x, w, b, gy, with_bias_grad=True)
    got = fastconv.conv2d_bias_grad(gy)
    assert got.shape == (case.k,)
    assert_matches(got, gb, case.k_weight(), case, "conv2d_bias_grad", exact=case.ints)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_bias_grad(dtype):
    rng = np.random.default_rng(70)
    for shape in [(1, 1, 1, 1), (3, 7, 5, 9), (2, 33, 1, 40), (4, 5, 31, 17)]:
        gy = rng.standard_normal(shape).astype(dtype)
        want = gy.astype(np.float64).sum(axis=(0, 2, 3))
        k = shape[0] * shape[2] * shape[3]
        got = fastconv.conv2d_bias_grad(gy)
        assert got.dtype == gy.dtype
        assert got.shape == (shape[1],)
        assert_close_scaled(got, want, k)
        assert_close_scaled(fastconv.conv2d_bias_grad(_strided_copy(gy, rng)), want, k)
        unbatched = fastconv.conv2d_bias_grad(gy[0])  # (K, OH, OW)
        assert_close_scaled(
            unbatched, gy[0].astype(np.float64).sum(axis=(1, 2)), shape[2] * shape[3]
        )
    ints = rng.integers(-3, 4, (3, 6, 11, 13)).astype(dtype)
    np.testing.assert_array_equal(fastconv.conv2d_bias_grad(ints), ints.sum(axis=(0, 2, 3)))
    empty = fastconv.conv2d_bias_grad(np.zeros((0, 5, 3, 3), dtype))
    assert empty.shape == (5,)
    assert empty.dtype == dtype
    np.testing.assert_array_equal(empty, np.zeros(5))


# --------------------------------------------------------------------------- finite differences


FD_CASES = [c._replace(dtype="float64", ints=False) for c in HAND_CASES[::4]] + [
    c._replace(dtype="float64", ints=False) for c in GENERATED[:6]
]


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_gradients_by_finite_differences(case):
    """L(x, w) = <conv2d(x, w, b), P> for a random projection P: the directional
    derivative along random V, from central differences of fastconv.conv2d, equals
    <conv2d_input(P), V> and <conv2d_weight(P), V>."""
    x, w, b, proj = make_data(case)
    rng = np.random.default_rng(case.seed + 1)
    gx = fastconv.conv2d_input(x.shape, w, proj, **case.args())
    gw = fastconv.conv2d_weight(x, w.shape, proj, **case.args())

    def loss(xx, ww):
        return float(np.vdot(fastconv.conv2d(xx, ww, b, **case.args()), proj))

    # L is affine in x and in w, so the central difference has no truncation error and a
    # large step keeps the rounding error small; what is left is float64 rounding in L.
    h = 0.5
    loss_terms = float(np.abs(fastconv.conv2d(x, w, b, **case.args()) * proj).sum())
    for _ in range(2):
        vx = rng.standard_normal(x.shape)
        vw = rng.standard_normal(w.shape)
        fd_x = (loss(x + h * vx, w) - loss(x - h * vx, w)) / (2 * h)
        fd_w = (loss(x, w + h * vw) - loss(x, w - h * vw)) / (2 * h)
        an_x, an_w = float(np.vdot(gx, vx)), float(np.vdot(gw, vw))
        tol_x = 1e-9 * (float(np.abs(gx * vx).sum()) + loss_terms / h)
        tol_w = 1e-9 * (float(np.abs(gw * vw).sum()) + loss_terms / h)
        assert (
            abs(fd_x - an_x) <= tol_x
        ), f"{case}: d/dx finite difference {fd_x} vs conv2d_input {an_x}"
        assert (
            abs(fd_w - an_w) <= tol_w
        ), f"{case}: d/dw finite difference {fd_w} vs conv2d_weight {an_w}"


def test_gradients_elementwise_by_finite_differences():
    """Each entry of both gradients of a small strided, dilated, grouped conv."""
    case = C(
        1,
        4,
        6,
        7,
        6,
        3,
        2,
        stride=(2, 1),
        padding=(1, 2),
        dilation=(1, 2),
        groups=2,
        dtype="float64",
        seed=55,
    )
    x, w, b, proj = make_data(case)
    gx = fastconv.conv2d_input(x.shape, w, proj, **case.args())
    gw = fastconv.conv2d_weight(x, w.shape, proj, **case.args())

    def loss(xx, ww):
        return float(np.vdot(fastconv.conv2d(xx, ww, b, **case.args()), proj))

    h = 1e-4
    for grad, arg in ((gx, 0), (gw, 1)):
        fd = np.empty_like(grad)
        base = [x, w]
        for idx in np.ndindex(grad.shape):
            plus = [a.copy() for a in base]
            minus = [a.copy() for a in base]
            plus[arg][idx] += h
            minus[arg][idx] -= h
            fd[idx] = (loss(*plus) - loss(*minus)) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
