"""The functional ops behind the breadth layers -- conv_transpose2d (+ input and weight
gradients), conv1d (+ gradients), max_pool1d / avg_pool1d (+ backward), interpolate
(+ backward), pixel_shuffle / pixel_unshuffle, group_norm, layer_norm, instance_norm --
against the NumPy reference and against torch over their argument space, and their
validation: a TypeError or ValueError naming the argument before any kernel runs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._checks import int_pair

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _same_draws_in_any_order():
    """Each test draws the same arrays whether it runs alone or after others."""
    global RNG
    RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def assert_close(actual, expected, tol, what=""):
    """max |actual - expected| within tol of the largest |expected|."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: {actual.shape} vs {expected.shape}"
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    error = float(np.abs(actual - expected).max(initial=0.0))
    assert error <= tol * scale, f"{what}: error {error:.3g} > {tol:g} x {scale:.3g}"


def torch_grads(fn, *arrays):
    """torch's output of fn(*tensors) and the gradients of sum(out * g) wrt every array."""
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    g = np.random.default_rng(1).standard_normal(tuple(out.shape)).astype(arrays[0].dtype)
    out.backward(torch.tensor(g))
    return out.detach().numpy(), g, [t.grad.numpy() for t in tensors]


# ======================================================================================
# conv_transpose2d
# ======================================================================================


def _transpose_cases():
    """(stride, padding, output_padding, dilation, groups, input hw) with a valid output."""
    cases = []
    for stride, padding, out_pad, dilation, groups in itertools.product(
        [1, 2, (2, 3)], [0, 1, (2, 1)], [0, 1], [1, 2], [1, 2]
    ):
        s, p, d = (int_pair(v, "") for v in (stride, padding, dilation))
        if any(out_pad >= max(si, di) for si, di in zip(s, d)):
            continue
        for hw in ((3, 4), (1, 1)):
            out = [
                (n - 1) * si - 2 * pi + di * 2 + out_pad + 1 for n, si, pi, di in zip(hw, s, p, d)
            ]
            if min(out) >= 1:
                cases.append((stride, padding, out_pad, dilation, groups, hw))
    return cases


TRANSPOSE_CASES = _transpose_cases()


@pytest.mark.parametrize(
    ("stride", "padding", "output_padding", "dilation", "groups", "hw"), TRANSPOSE_CASES
)
def test_conv_transpose2d_and_its_gradients_match_reference_and_torch(
    stride, padding, output_padding, dilation, groups, hw
):
    x, w, b = rand(2, 4, *hw), rand(4, 6 // groups, 3, 3), rand(6)
    args = (stride, padding, output_padding, groups, dilation)
    y = fastconv.conv_transpose2d(x, w, b, *args)
    assert_close(y, reference.conv_transpose2d(x, w, b, *args), 1e-12, "forward vs reference")
    g = rand(*y.shape)
    grad_x = fastconv.conv_transpose2d_input(x.shape, w, g, *args)
    grad_w = fastconv.conv_transpose2d_weight(x, w.shape, g, *args)
    # the adjoint's gradients are the convolution's passes (the reference's)
    (sh, sw), (ph, pw) = (int_pair(v, "") for v in (stride, padding))
    over = [o // s for o, s in zip((output_padding,) * 2, (sh, sw))]
    x_over = np.pad(x, ((0, 0), (0, 0), (0, over[0]), (0, over[1])))
    ref_gx = reference.conv2d(g, w, None, stride, padding, dilation, groups)[:, :, : hw[0], : hw[1]]
    ref_gw = reference.conv2d_weight(g, w.shape, x_over, stride, padding, dilation, groups)
    assert_close(grad_x, ref_gx, 1e-12, "input gradient vs reference")
    assert_close(grad_w, ref_gw, 1e-12, "weight gradient vs reference")
    torch = pytest.importorskip("torch")
    ty, tg, (tgx, tgw, tgb) = torch_grads(
        lambda a, c, e: torch.nn.functional.conv_transpose2d(a, c, e, *args), x, w, b
    )
    assert_close(y, ty, 1e-12, "forward vs torch")
    assert_close(fastconv.conv_transpose2d_input(x.shape, w, tg, *args), tgx, 1e-12, "grad x")
    assert_close(fastconv.conv_transpose2d_weight(x, w.shape, tg, *args), tgw, 1e-12, "grad w")
    assert_close(fastconv.conv2d_bias_grad(tg), tgb, 1e-12, "grad b")


@pytest.mark.parametrize(
    ("n", "c_in", "c_out", "k", "stride", "padding", "hw"),
    [(4, 32, 16, 4, 1, 0, (1, 1)), (4, 16, 8, 4, 2, 1, (4, 4)), (2, 16, 8, 2, 2, 0, (5, 6))],
    ids=["dcgan_projection", "dcgan_upsample", "unet_decoder"],
)
def test_conv_transpose2d_float32_within_the_conv_bound(n, c_in, c_out, k, stride, padding, hw):
    """float32 against the float64 reference: within c * K * eps of the largest value,
    K = c_in * k * k the longest reduction (c = 4)."""
    x, w = rand(n, c_in, *hw), rand(c_in, c_out, k, k)
    truth = reference.conv_transpose2d(x, w, None, stride, padding)
    y = fastconv.conv_transpose2d(x.astype(np.float32), w.astype(np.float32), None, stride, padding)
    assert y.dtype == np.float32
    bound = 4 * c_in * k * k * np.finfo(np.float32).eps
    assert_close(y, truth, bound, "float32 forward")
    g = rand(*y.shape)
    gx = fastconv.conv_transpose2d_input(
        x.shape, w.astype(np.float32), g.astype(np.float32), stride, padding
    )
    assert_close(gx, reference.conv2d(g, w, None, stride, padding), bound, "float32 input grad")


def test_conv_transpose2d_unbatched_and_empty_batches():
    x, w = rand(3, 2, 3), rand(3, 4, 3, 3)
    y = fastconv.conv_transpose2d(x, w, None, 2, 1)
    assert_close(y, fastconv.conv_transpose2d(x[None], w, None, 2, 1)[0], 0.0)
    assert fastconv.conv_transpose2d(np.zeros((0, 3, 2, 3)), w, None, 2).shape == (0, 4, 5, 7)
    empty_grad = fastconv.conv_transpose2d_weight(
        np.zeros((0, 3, 2, 3)), w.shape, np.zeros((0, 4, 5, 7)), 2
    )
    np.testing.assert_array_equal(empty_grad, 0.0)


# ======================================================================================
# conv1d and 1-D pooling
# ======================================================================================

CONV1D_CASES = [
    # (c_in, c_out, k, stride, padding, dilation, groups, length)
    (4, 6, 3, 1, 0, 1, 1, 9),
    (4, 6, 3, 2, 1, 1, 2, 10),
    (3, 4, 4, 1, "same", 2, 1, 7),
    (3, 4, 5, 1, "valid", 1, 1, 8),
    (4, 4, 3, (1,), (2,), (3,), 4, 10),
    (2, 3, 48, 2, 23, 1, 1, 60),  # wav2letter's first layer, shrunk
    (4, 4, 3, 1, 8, 4, 1, 32),  # a TCN's dilated layer
]


@pytest.mark.parametrize("case", CONV1D_CASES, ids=[str(c) for c in CONV1D_CASES])
def test_conv1d_and_its_gradients_match_reference_and_torch(case):
    c_in, c_out, k, stride, padding, dilation, groups, length = case
    x, w, b = rand(2, c_in, length), rand(c_out, c_in // groups, k), rand(c_out)
    args = (stride, padding, dilation, groups)
    y = fastconv.conv1d(x, w, b, *args)
    assert_close(y, reference.conv1d(x, w, b, *args), 1e-12, "forward vs reference")
    assert_close(fastconv.conv1d(x[1], w, b, *args), y[1], 0.0, "unbatched")
    torch = pytest.importorskip("torch")
    ty, g, (tgx, tgw, _) = torch_grads(
        lambda a, c, e: torch.nn.functional.conv1d(a, c, e, *args), x, w, b
    )
    assert_close(y, ty, 1e-12, "forward vs torch")
    assert_close(fastconv.conv1d_input(x.shape, w, g, *args), tgx, 1e-12, "input gradient")
    assert_close(fastconv.conv1d_weight(x, w.shape, g, *args), tgw, 1e-12, "weight gradient")


def test_strides_past_the_input_cost_nothing():
    """A stride that changes no output (one-position dims of a transposed conv, a 1-D
    stride past the last window) is brought down before the kernels, which size their
    work by it: 2**31 - 1 runs like a small stride and gives the reference's values."""
    huge = 2**31 - 1
    x, w = rand(2, 3, 3, 1), rand(3, 1, 4, 1)
    args = ((2, huge), 0, (0, 0), 1, 1)
    y = fastconv.conv_transpose2d(x, w, None, *args)
    assert_close(y, reference.conv_transpose2d(x, w, None, *args), 1e-12)
    g = rand(*y.shape)
    ref_gw = reference.conv2d_weight(g, w.shape, x, (2, huge))
    assert_close(fastconv.conv_transpose2d_weight(x, w.shape, g, *args), ref_gw, 1e-12)
    assert_close(
        fastconv.conv_transpose2d_input(x.shape, w, g, *args),
        reference.conv2d(g, w, None, (2, huge)),
        1e-12,
    )
    x1, w1 = rand(2, 3, 10), rand(4, 3, 3)
    y1 = fastconv.conv1d(x1, w1, None, huge, 1)
    assert y1.shape == (2, 4, 1)
    assert_close(y1, reference.conv1d(x1, w1, None, huge, 1), 1e-12)
    g1 = rand(*y1.shape)
    x4, w4, g4 = x1[:, :, None], w1[:, :, None], g1[:, :, None]
    ref_gx = reference.conv2d_input(x4.shape, w4, g4, (1, huge), (0, 1))[:, :, 0]
    assert_close(fastconv.conv1d_input(x1.shape, w1, g1, huge, 1), ref_gx, 1e-12)
    ref_gw = reference.conv2d_weight(x4, w4.shape, g4, (1, huge), (0, 1))[:, :, 0]
    assert_close(fastconv.conv1d_weight(x1, w1.shape, g1, huge, 1), ref_gw, 1e-12)


@pytest.mark.parametrize(
    ("k", "stride", "padding", "length"),
    [(48, 2, 23, 60), (16, 2, "valid", 41), (32, 4, 3, 50), (24, 3, 0, 30)],
)
def test_strided_long_kernels_input_gradient_runs_phase_split(
    monkeypatch, k, stride, padding, length
):
    """Kernels of >= 8 taps per stride take the phase split (a stride-1 input gradient on
    stride x the channels): the same values as the strided problem, in float32 too; a
    non-finite weight keeps the strided problem, whose spec it follows."""
    assert k // stride >= fastconv.functional.PHASE_SPLIT_MIN_TAPS
    strides_run = []
    real = fastconv.functional.conv2d_input

    def recording(size, weight, g, stride=1, *args, **kwargs):
        strides_run.append(int_pair(stride, "stride"))
        return real(size, weight, g, stride, *args, **kwargs)

    monkeypatch.setattr(fastconv.functional, "conv2d_input", recording)
    x_shape, w = (2, 3, length), rand(4, 3, k)
    out_len = fastconv.conv1d(rand(*x_shape), w, None, stride, padding).shape[2]
    g = rand(2, 4, out_len)
    rows = (0, padding) if padding != "valid" else 0
    spec = reference.conv2d_input(
        (2, 3, 1, length), w[:, :, None], g[:, :, None], (1, stride), rows
    )
    grad = fastconv.conv1d_input(x_shape, w, g, stride, padding)
    assert strides_run == [(1, 1)]
    assert_close(grad, spec[:, :, 0], 1e-12, "float64")
    assert_close(fastconv.conv1d_input(x_shape[1:], w, g[0], stride, padding), grad[0], 1e-12)
    w32, g32 = w.astype(np.float32), g.astype(np.float32)
    grad32 = fastconv.conv1d_input(x_shape, w32, g32, stride, padding)
    assert grad32.dtype == np.float32
    assert_close(grad32, spec[:, :, 0], 4 * 4 * k * np.finfo(np.float32).eps, "float32")
    w[0, 0, 0] = np.inf
    strides_run.clear()
    grad = fastconv.conv1d_input(x_shape, w, g, stride, padding)
    assert strides_run == [(1, stride)]
    spec = reference.conv2d_input(
        (2, 3, 1, length), w[:, :, None], g[:, :, None], (1, stride), rows
    )
    np.testing.assert_allclose(grad, spec[:, :, 0], rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize(
    "args",
    [(3,), (3, 2, 1), (4, 3, 2, 2, True), (2, 1, 0, 3), ((3,), (2,), (1,), (1,), True)],
    ids=str,
)
def test_max_pool1d_values_indices_and_backward_match_torch(args):
    torch = pytest.importorskip("torch")
    x = RNG.permutation(2 * 3 * 11).reshape(2, 3, 11).astype(np.float64)
    y, idx = fastconv.max_pool1d(x, *args, return_indices=True)
    ty, tidx = torch.nn.functional.max_pool1d(torch.tensor(x), *args, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    assert idx.dtype == np.int64
    _, g, (tgx,) = torch_grads(lambda a: torch.nn.functional.max_pool1d(a, *args), x)
    np.testing.assert_array_equal(fastconv.max_pool1d_backward(g, idx, x.shape), tgx)


@pytest.mark.parametrize(
    "args", [(3,), (3, 2, 1), (4, 3, 2, True, False), (2, 1, 1, False, False)], ids=str
)
def test_avg_pool1d_and_backward_match_torch(args):
    torch = pytest.importorskip("torch")
    x = rand(2, 3, 11)
    ty, g, (tgx,) = torch_grads(lambda a: torch.nn.functional.avg_pool1d(a, *args), x)
    assert_close(fastconv.avg_pool1d(x, *args), ty, 1e-12)
    assert_close(fastconv.avg_pool1d_backward(g, x.shape, *args), tgx, 1e-12)


# ======================================================================================
# interpolate, pixel shuffle
# ======================================================================================

INTERPOLATE_CASES = [
    ((2, 3, 5, 7), dict(scale_factor=2)),
    ((2, 3, 5, 7), dict(size=(3, 11))),
    ((2, 3, 5, 7), dict(scale_factor=(2.1, 0.5))),  # an output twice the input's height
    ((2, 3, 5, 7), dict(size=(9, 13), mode="nearest-exact")),
    ((2, 3, 5, 7), dict(scale_factor=1.7, mode="bilinear")),
    ((2, 3, 5, 7), dict(size=(9, 4), mode="bilinear", align_corners=True)),
    ((2, 3, 5, 7), dict(size=(1, 1), mode="bilinear", align_corners=True)),
    ((2, 3, 5, 7), dict(scale_factor=(0.6, 2.3), mode="bilinear")),
    ((2, 3, 5, 7), dict(scale_factor=(0.6, 2.3), mode="bilinear", recompute_scale_factor=True)),
    ((2, 3, 5, 7), dict(size=(5, 7), mode="bilinear")),
    ((2, 3, 6), dict(scale_factor=2.5, mode="linear")),
    ((2, 3, 6), dict(size=13, mode="linear", align_corners=True)),
    ((2, 3, 6), dict(scale_factor=0.5)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("shape", "kwargs"), INTERPOLATE_CASES, ids=str)
def test_interpolate_and_backward_match_reference_and_torch(shape, kwargs, dtype):
    x = rand(*shape, dtype=dtype)
    y = fastconv.interpolate(x, **kwargs)
    assert y.dtype == dtype
    # float32: the source coordinates and weights are rounded to float32 (as PyTorch
    # rounds them), up to an ulp of the input size in each weight
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert_close(y, reference.interpolate(x, **kwargs), tol, "forward vs reference")
    g = rand(*y.shape, dtype=dtype)
    grad = fastconv.interpolate_backward(g, x.shape, **kwargs)
    assert grad.dtype == dtype
    # the backward is the forward's adjoint: <interpolate(x), g> == <x, backward(g)>
    assert float((y * g).sum()) == pytest.approx(float((x * grad).sum()), rel=tol, abs=tol)
    torch = pytest.importorskip("torch")
    ty, tg, (tgx,) = torch_grads(lambda a: torch.nn.functional.interpolate(a, **kwargs), x)
    assert_close(y, ty, tol, "forward vs torch")
    assert_close(fastconv.interpolate_backward(tg, x.shape, **kwargs), tgx, tol, "backward")


def test_pixel_shuffle_matches_torch_and_unshuffle_inverts_it():
    torch = pytest.importorskip("torch")
    x = rand(2, 1, 18, 3, 4)  # extra leading dims are batch dims
    y = fastconv.pixel_shuffle(x, 3)
    np.testing.assert_array_equal(y, torch.nn.functional.pixel_shuffle(torch.tensor(x), 3))
    np.testing.assert_array_equal(fastconv.pixel_unshuffle(y, 3), x)
    z = rand(2, 6, 4)
    np.testing.assert_array_equal(
        fastconv.pixel_unshuffle(z[None], 2)[0],
        torch.nn.functional.pixel_unshuffle(torch.tensor(z), 2).numpy(),
    )


# ======================================================================================
# group, layer and instance norm
# ======================================================================================


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_norms_match_reference_and_torch(dtype):
    x = (rand(3, 6, 4, 5) * 3 + 1).astype(dtype)
    w, b = rand(6, dtype=dtype), rand(6, dtype=dtype)
    lw, lb = rand(4, 5, dtype=dtype), rand(4, 5, dtype=dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    mean, var = rand(6, dtype=dtype), RNG.uniform(0.5, 2, 6).astype(dtype)
    results = {
        "group_norm": (fastconv.group_norm(x, 3, w, b), reference.group_norm(x, 3, w, b)),
        "layer_norm": (
            fastconv.layer_norm(x, (4, 5), lw, lb),
            reference.layer_norm(x, (4, 5), lw, lb),
        ),
        "instance_norm_eval": (
            fastconv.instance_norm(x, mean, var, w, b, use_input_stats=False),
            reference.instance_norm(x, mean, var, w, b, use_input_stats=False),
        ),
    }
    ours, theirs = mean.copy(), var.copy()
    ref_mean, ref_var = mean.copy(), var.copy()
    results["instance_norm_train"] = (
        fastconv.instance_norm(x, ours, theirs, w, b, momentum=0.3),
        reference.instance_norm(x, ref_mean, ref_var, w, b, momentum=0.3),
    )
    for name, (fast, ref) in results.items():
        assert fast.dtype == dtype, name
        assert_close(fast, ref, tol, name)
    assert_close(ours, ref_mean, tol, "running_mean")
    assert_close(theirs, ref_var, tol, "running_var")
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    t = {k: torch.tensor(v) for k, v in dict(x=x, w=w, b=b, lw=lw, lb=lb).items()}
    assert_close(results["group_norm"][0], tf.group_norm(t["x"], 3, t["w"], t["b"]), tol)
    expected = tf.layer_norm(t["x"], (4, 5), t["lw"], t["lb"])
    assert_close(results["layer_norm"][0], expected, tol)
    t_mean, t_var = torch.tensor(mean), torch.tensor(var)
    expected = tf.instance_norm(t["x"], t_mean, t_var, t["w"], t["b"], True, 0.3)
    assert_close(results["instance_norm_train"][0], expected, tol)
    assert_close(ours, t_mean, tol, "running_mean vs torch")


# ======================================================================================
# Validation: named arguments, before any kernel runs
# ======================================================================================

X4, W_T, X3, W1 = (
    np.zeros((2, 4, 3, 3)),
    np.zeros((4, 3, 3, 3)),
    np.zeros((2, 4, 9)),
    np.zeros((6, 4, 3)),
)

BAD_CALLS = [
    # (op, args, kwargs, exception, regex)
    ("conv_transpose2d", (X4, W_T), dict(output_padding=2, stride=2), ValueError, "output_padding"),
    ("conv_transpose2d", (X4, W_T), dict(stride=0), ValueError, "^stride must be positive"),
    ("conv_transpose2d", (X4, W_T), dict(padding=-1), ValueError, "^padding must be non-neg"),
    ("conv_transpose2d", (X4, W_T), dict(groups=3), ValueError, "groups=3 must divide the input"),
    ("conv_transpose2d", (X4, np.zeros((5, 3, 3, 3))), {}, ValueError, "^weight .* expects 5"),
    ("conv_transpose2d", (X4, W_T), dict(padding=3), ValueError, "padding removes every output"),
    ("conv_transpose2d", (X4, W_T, np.zeros(4)), {}, ValueError, "^bias must be 1-D with 3"),
    ("conv_transpose2d", (X4, W_T.astype(np.float32)), {}, TypeError, "same dtype"),
    ("conv_transpose2d", (X4.tolist(), W_T), {}, TypeError, "^input must be a numpy.ndarray"),
    ("conv_transpose2d", (X4, W_T[0]), {}, ValueError, "^weight must be 4-D"),
    ("conv_transpose2d", (X4, W_T), dict(dilation=1.5), TypeError, "^dilation must be an int"),
    (
        "conv_transpose2d_input",
        ((2, 4, 3, 3), W_T, np.zeros((2, 3, 4, 5))),
        {},
        ValueError,
        r"^grad_output has shape \(2, 3, 4, 5\), expected \(2, 3, 5, 5\)",
    ),
    (
        "conv_transpose2d_weight",
        (X4, (4, 3, 3), np.zeros((2, 3, 5, 5))),
        {},
        ValueError,
        "^weight_size must have 4 entries",
    ),
    ("conv1d", (X3, W1), dict(stride=(1, 1)), ValueError, "^stride must be an int or a 1-tuple"),
    ("conv1d", (X3, W1), dict(padding="full"), ValueError, "^padding must be an int, 'same'"),
    ("conv1d", (X3, W1), dict(padding="same", stride=2), ValueError, "not supported for strided"),
    ("conv1d", (X3, W1), dict(groups=3), ValueError, "^groups=3 must divide the input"),
    ("conv1d", (X3, W1), dict(dilation=5), ValueError, "^input of length 9 .* shorter"),
    ("conv1d", (X4, W1), {}, ValueError, "^input must be 2-D or 3-D"),
    ("conv1d", (X3, X4), {}, ValueError, "^weight must be 3-D"),
    ("conv1d_input", ((2, 4, 9), W1, np.zeros((2, 6, 8))), {}, ValueError, "^grad_output has"),
    ("conv1d_weight", (X3, (6, 4), np.zeros((2, 6, 7))), {}, ValueError, "^weight_size must"),
    ("max_pool1d", (X3, 3), dict(padding=2), ValueError, "^padding 2 must be at most half"),
    ("max_pool1d", (X3, 0), {}, ValueError, "^kernel_size must be positive"),
    ("max_pool1d", (X3, 12), {}, ValueError, "^input of length 9 is too small"),
    ("max_pool1d", (np.zeros((2, 0, 9)), 2), {}, ValueError, "^input must have non-zero C"),
    ("avg_pool1d", (X3, (3, 3)), {}, ValueError, "^kernel_size must be an int or a 1-tuple"),
    ("avg_pool1d_backward", (np.zeros((2, 4, 2)), (2, 4, 9), 3), {}, ValueError, "^grad_output"),
    (
        "max_pool1d_backward",
        (np.zeros((2, 4, 3)), np.zeros((2, 4, 3)), (2, 4, 9)),
        {},
        TypeError,
        "^indices must have dtype int64",
    ),
    (
        "max_pool1d_backward",
        (np.zeros((2, 4, 3)), np.ma.masked_array(np.zeros((2, 4, 3), np.int64)), (2, 4, 9)),
        {},
        TypeError,
        "^indices is a numpy.ma.MaskedArray",
    ),
    ("interpolate", (X4,), dict(scale_factor=2, mode="cubic"), ValueError, "^mode must be one of"),
    ("interpolate", (X4,), {}, ValueError, "exactly one of size and scale_factor"),
    ("interpolate", (X4,), dict(size=2, scale_factor=2), ValueError, "exactly one of size"),
    ("interpolate", (X3,), dict(size=4, mode="bilinear"), ValueError, "bilinear.* needs a 4-D"),
    ("interpolate", (X4,), dict(size=4, align_corners=True), ValueError, "^align_corners can"),
    ("interpolate", (X4,), dict(scale_factor=-1.0), ValueError, "^scale_factor must be positive"),
    ("interpolate", (X4,), dict(scale_factor="2"), TypeError, "^scale_factor must be a number"),
    ("interpolate", (X4,), dict(size=(2, 2, 2)), ValueError, "^size must have 2 entries"),
    ("interpolate", (X4,), dict(scale_factor=0.1), ValueError, "output spatial sizes must be"),
    ("interpolate", (X4,), dict(size=4, antialias=True), ValueError, "^antialias=True"),
    (
        "interpolate",
        (X4,),
        dict(size=4, recompute_scale_factor=True),
        ValueError,
        "^recompute_scale_factor is not meaningful",
    ),
    ("interpolate_backward", (X4, (2, 4, 2, 2)), dict(size=4), ValueError, "^grad_output has"),
    ("pixel_shuffle", (X4, 3), {}, ValueError, r"^input channels \(4\) must be divisible by"),
    ("pixel_shuffle", (X4, 0), {}, ValueError, "^upscale_factor must be positive"),
    ("pixel_unshuffle", (X4, 2), {}, ValueError, r"^input height \(3\) and width \(3\) must"),
    ("pixel_unshuffle", (X3[0], 1), {}, ValueError, "^input must have at least 3 dims"),
    ("group_norm", (X4, 3), {}, ValueError, r"^num_groups=3 must divide the input channels"),
    ("group_norm", (X4, 2, np.ones(3)), {}, ValueError, r"^weight has shape \(3,\)"),
    ("layer_norm", (X4, (3, 4)), {}, ValueError, r"does not end in normalized_shape \(3, 4\)"),
    ("layer_norm", (X4, 3, np.ones(4)), {}, ValueError, r"^weight has shape \(4,\)"),
    ("instance_norm", (X4, np.zeros(4)), {}, ValueError, "^running_mean and running_var"),
    ("instance_norm", (X4,), dict(use_input_stats=False), ValueError, "needs running_mean"),
    ("instance_norm", (np.zeros((2, 4, 1, 1)),), {}, ValueError, "more than 1 spatial"),
    ("instance_norm", (X4, None, None, np.ones(5)), {}, ValueError, r"^weight has shape \(5,\)"),
]


@pytest.mark.parametrize(
    ("op", "args", "kwargs", "error", "message"),
    BAD_CALLS,
    ids=[f"{c[0]}-{c[4][:30]}" for c in BAD_CALLS],
)
def test_bad_arguments_are_named_before_any_kernel_runs(
    no_backend, op, args, kwargs, error, message
):
    with pytest.raises(error, match=message):
        getattr(fastconv, op)(*args, **kwargs)


# ======================================================================================
# fastconv.torch: Conv1d converts
# ======================================================================================


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding=2, dilation=2, groups=2),
        dict(padding="same"),
        dict(stride=2, padding=3, padding_mode="reflect"),
    ],
    ids=str,
)
def test_fastconv_torch_converts_conv1d_with_the_same_values_and_gradients(kwargs):
    torch = pytest.importorskip("torch")
    import fastconv.torch as fct

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(4, 6, 3, **kwargs), torch.nn.Tanh()).double()
    converted = fct.convert(model)
    assert type(converted[0]) is fct.Conv1d
    assert repr(converted) == repr(model)
    x = torch.randn(3, 4, 12, dtype=torch.float64)
    outputs = []
    for net in (model, converted):
        xi = x.clone().requires_grad_(True)
        y = net(xi)
        y.backward(torch.ones_like(y))
        outputs.append((y.detach(), xi.grad, net[0].weight.grad, net[0].bias.grad))
    for ours, theirs in zip(outputs[1], outputs[0]):
        assert_close(ours.numpy(), theirs.numpy(), 1e-12)
    unbatched = converted(x[0])
    assert_close(unbatched.detach().numpy(), model(x[0]).detach().numpy(), 1e-12)
