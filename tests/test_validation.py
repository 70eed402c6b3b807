"""The validation layer of ``fastconv.functional``.

Every bad input raises the stated error type -- TypeError for wrong kinds and dtypes,
ValueError for wrong values and shapes -- with the offending argument named in the
message, for every public op, *before* any backend runs: the ``no_backend`` fixture
replaces ``fastconv._C`` (and the NumPy reference ops and the CUDA backend) by objects
that raise AssertionError, so a test only passes if validation fails first.

Design decision under test (documented in ``fastconv._checks.check_array``): only
``numpy.ndarray`` tensors are accepted on the CPU; lists, tuples, scalars and other
array-likes are refused with a TypeError instead of being converted silently.

Also covered: zero-size batches, non-contiguous / unaligned inputs, unbatched (C, H, W)
inputs, and bools refused where ints are expected.

Inputs are integer-valued floats, so that every op is exact and results can be compared
bit for bit whatever the summation order.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import assert_close_scaled, run_python

import fastconv
from fastconv import _cpu, functional, reference

OPS = [
    "conv2d",
    "conv2d_input",
    "conv2d_weight",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "gemm",
    "matmul",
    "linear",
]

# The floating-point tensor arguments of each op.
ARRAY_ARGS = {
    "conv2d": ["input", "weight", "bias"],
    "conv2d_input": ["weight", "grad_output"],
    "conv2d_weight": ["input", "grad_output"],
    "max_pool2d": ["input"],
    "max_pool2d_backward": ["grad_output"],
    "avg_pool2d": ["input"],
    "avg_pool2d_backward": ["grad_output"],
    "gemm": ["a", "b", "c"],
    "matmul": ["a", "b"],
    "linear": ["input", "weight", "bias"],
}
OP_ARGS = [(op, arg) for op in OPS for arg in ARRAY_ARGS[op]]
MULTI_ARRAY_OPS = [op for op in OPS if len(ARRAY_ARGS[op]) > 1]

CONV_OPS = ["conv2d", "conv2d_input", "conv2d_weight"]
POOL_WINDOW_OPS = ["max_pool2d", "avg_pool2d", "avg_pool2d_backward"]  # take a window
AVG_OPS = ["avg_pool2d", "avg_pool2d_backward"]
SIZE_ARGS = {  # shape arguments
    "conv2d_input": "input_size",
    "conv2d_weight": "weight_size",
    "max_pool2d_backward": "input_size",
    "avg_pool2d_backward": "input_size",
}

# Geometry of the valid calls everything else perturbs.
N, C, H, W = 2, 4, 9, 8
K, R, S = 6, 3, 2  # conv weight (K, C // groups, R, S)
CONV = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2)
POOL = dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), ceil_mode=True)
M_, K_, N_ = 5, 7, 3  # gemm: op(a) is M_ x K_, op(b) is K_ x N_
OUT_FEATURES = 5

# The reference ops, kept before the no_backend fixture replaces them.
REF = {name: getattr(reference, name) for name in OPS}


def ints(shape, dtype=np.float32, seed=0, low=-3, high=4):
    """Integer-valued floats: exact sums and products, many ties."""
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, size=shape).astype(dtype)


def conv_out_hw(h=H, w=W):
    return (
        reference.conv_output_size(
            h, R, CONV["stride"][0], CONV["padding"][0], CONV["dilation"][0]
        ),
        reference.conv_output_size(
            w, S, CONV["stride"][1], CONV["padding"][1], CONV["dilation"][1]
        ),
    )


def max_pool_kwargs():
    return dict(POOL, dilation=(1, 2))


def good_kwargs(op, dtype=np.float32, n=N):
    """Keyword arguments of a valid call of ``op`` (fresh, C-contiguous arrays)."""
    x = ints((n, C, H, W), dtype, 1)
    if op in CONV_OPS:
        weight = ints((K, C // CONV["groups"], R, S), dtype, 2)
        grad_output = ints((n, K, *conv_out_hw()), dtype, 3)
        if op == "conv2d":
            return dict(input=x, weight=weight, bias=ints((K,), dtype, 4), **CONV)
        if op == "conv2d_input":
            return dict(input_size=(n, C, H, W), weight=weight, grad_output=grad_output, **CONV)
        return dict(input=x, weight_size=weight.shape, grad_output=grad_output, **CONV)
    if op == "max_pool2d":
        return dict(input=x, return_indices=True, **max_pool_kwargs())
    if op == "max_pool2d_backward":
        # Valid indices from the reference, so the fixture that blocks every backend
        # does not get in the way of building the call.
        out, indices = REF["max_pool2d"](x, return_indices=True, **max_pool_kwargs())
        return dict(grad_output=ints(out.shape, dtype, 5), indices=indices, input_size=(n, C, H, W))
    if op == "avg_pool2d":
        return dict(input=x, count_include_pad=False, divisor_override=None, **POOL)
    if op == "avg_pool2d_backward":
        out = REF["avg_pool2d"](x, count_include_pad=False, **POOL)
        return dict(
            grad_output=ints(out.shape, dtype, 6),
            input_size=(n, C, H, W),
            count_include_pad=False,
            divisor_override=None,
            **POOL,
        )
    if op == "gemm":
        return dict(
            a=ints((K_, M_), dtype, 7),
            b=ints((K_, N_), dtype, 8),
            c=ints((M_, N_), dtype, 9),
            alpha=2.0,
            beta=-1.0,
            trans_a=True,
        )
    if op == "matmul":
        return dict(a=ints((M_, K_), dtype, 7), b=ints((K_, N_), dtype, 8))
    if op == "linear":
        return dict(
            input=ints((n, 3, K_), dtype, 10),
            weight=ints((OUT_FEATURES, K_), dtype, 11),
            bias=ints((OUT_FEATURES,), dtype, 12),
        )
    raise AssertionError(op)


def call(op, kwargs):
    return getattr(fastconv, op)(**kwargs)


def copy_kwargs(kwargs):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}


def named(arg):
    """A regex that finds the argument name ``arg`` in an error message."""
    if len(arg) == 1:  # a, b, c: not the English article
        return rf"(^{arg}\b|\b{arg}=|\({arg}\))"
    return rf"\b{re.escape(arg)}\b"


def as_list(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


def assert_same_results(actual, expected):
    actual, expected = as_list(actual), as_list(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert isinstance(a, np.ndarray)
        assert a.dtype == e.dtype
        assert a.shape == e.shape
        np.testing.assert_array_equal(a, e, strict=True)


# --------------------------------------------------------------------------- fixtures


class _NoNative:
    """Stands in for the CPU backend: reaching it is a test failure. The one-step plain
    calls run for real: declining a call (None) is how they pass it to validation, and
    running one counts as reaching the backend (an invalid call must never run)."""

    def __getattr__(self, name):
        if name.endswith("_plain"):
            real = getattr(_cpu, name)

            def declining(*args):
                if real(*args) is not None:
                    raise AssertionError(
                        f"fastconv._cpu.{name} was reached before validation failed"
                    )
                return None

            return declining
        raise AssertionError(f"fastconv._cpu.{name} was reached before validation failed")


def _forbidden(name):
    def run(*args, **kwargs):
        raise AssertionError(f"backend op {name} was reached before validation failed")

    return run


@pytest.fixture
def no_backend(monkeypatch):
    """Every backend raises AssertionError: a ValueError/TypeError must come first."""
    monkeypatch.setattr(functional, "_cpu", _NoNative())
    monkeypatch.setattr(functional, "_cuda_backend", _forbidden("cuda"))
    for name in OPS:  # the reference ops double as CPU backends for some ops
        monkeypatch.setattr(reference, name, _forbidden(f"reference.{name}"))


@pytest.fixture(params=["blocked", "real"])
def backend(request):
    """Run a check with every backend blocked, then again with the real one."""
    if request.param == "blocked":
        request.getfixturevalue("no_backend")
    return request.param


# --------------------------------------------------------------------------- sanity


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_good_call_matches_reference(op, dtype):
    """The call every test below perturbs is valid and correct."""
    kwargs = good_kwargs(op, dtype)
    expected = REF[op](**copy_kwargs(kwargs))
    actual = call(op, kwargs)
    actual, expected = as_list(actual), as_list(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype
        assert a.shape == e.shape
        if op == "avg_pool2d_backward":  # divisions, then sums in another order
            assert_close_scaled(a, e, k=6)
        else:
            np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("op", OPS)
def test_no_backend_fixture_blocks_every_op(no_backend, op):
    """The fixture really stops each op at its backend (else the tests prove nothing)."""
    with pytest.raises(AssertionError, match="before validation failed"):
        call(op, good_kwargs(op))


# --------------------------------------------------------------------------- dtypes and kinds

BAD_DTYPES = [
    np.int8,
    np.int32,
    np.int64,
    np.uint8,
    np.bool_,
    np.float16,
    np.complex64,
    np.complex128,
]
if np.dtype(np.longdouble).itemsize > 8:
    BAD_DTYPES.append(np.longdouble)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("op", "arg"), OP_ARGS)
def test_non_floating_dtype_is_type_error(no_backend, op, arg, dtype):
    kwargs = good_kwargs(op)
    kwargs[arg] = kwargs[arg].astype(dtype)
    with pytest.raises(TypeError, match=named(arg)):
        call(op, kwargs)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", OPS)
def test_all_arrays_of_a_bad_dtype_is_type_error(no_backend, op, dtype):
    kwargs = good_kwargs(op)
    for arg in ARRAY_ARGS[op]:
        kwargs[arg] = kwargs[arg].astype(dtype)
    with pytest.raises(TypeError, match="dtype"):
        call(op, kwargs)


@pytest.mark.parametrize("base", [np.float32, np.float64])
@pytest.mark.parametrize("op", MULTI_ARRAY_OPS)
def test_mixed_dtypes_are_type_error(no_backend, op, base):
    other = np.float64 if base == np.float32 else np.float32
    for arg in ARRAY_ARGS[op]:
        kwargs = good_kwargs(op, base)
        kwargs[arg] = kwargs[arg].astype(other)
        with pytest.raises(TypeError, match="dtype") as info:
            call(op, kwargs)
        info.match(named(arg))


def _non_arrays(x):
    """(description, value) pairs of things that are not numpy arrays."""
    yield "list", x.tolist()
    yield "tuple", tuple(x.tolist())
    yield "python float", 1.0
    yield "python int", 1
    yield "numpy scalar", x.dtype.type(1)
    yield "memoryview", memoryview(np.ascontiguousarray(x))
    yield "object", object()
    yield "str", "1.0"


@pytest.mark.parametrize(("op", "arg"), OP_ARGS)
def test_non_arrays_are_type_error(no_backend, op, arg):
    """Lists, tuples, scalars and other array-likes are refused, never converted."""
    for _what, value in _non_arrays(good_kwargs(op)[arg]):
        kwargs = good_kwargs(op)
        kwargs[arg] = value
        with pytest.raises(TypeError, match=named(arg)):
            call(op, kwargs)


@pytest.mark.parametrize(("op", "arg"), OP_ARGS)
def test_cpu_torch_tensors_are_type_error(no_backend, op, arg):
    torch = pytest.importorskip("torch")
    kwargs = good_kwargs(op)
    kwargs[arg] = torch.from_numpy(kwargs[arg])
    with pytest.raises(TypeError, match=named(arg)):
        call(op, kwargs)


# --------------------------------------------------------------------------- ndim


def _wrong_ndims(op, arg, x):
    """Arrays of a wrong rank for argument ``arg`` of ``op``, built from the valid ``x``."""
    if x.ndim == 4:  # NCHW tensors; a 3-D CHW tensor is valid except for a conv weight
        yield x[None]
        yield x.reshape(x.shape[0], -1)
        yield x.ravel()
        yield np.array(1, dtype=x.dtype)
        if arg == "weight":
            yield x[0]
    elif x.ndim == 2:  # matrices
        yield x.ravel()
        yield x[None]
        yield np.array(1, dtype=x.dtype)
    elif x.ndim == 1:  # bias
        yield x[None]
        yield x[:, None]
        yield np.array(1, dtype=x.dtype)
    elif x.ndim == 3:  # linear input (..., in_features): only 0-D is wrong
        yield np.array(1, dtype=x.dtype)
    else:
        raise AssertionError(x.shape)


@pytest.mark.parametrize(("op", "arg"), OP_ARGS)
def test_wrong_ndim_is_value_error(no_backend, op, arg):
    for bad in _wrong_ndims(op, arg, good_kwargs(op)[arg]):
        kwargs = good_kwargs(op)
        kwargs[arg] = bad
        if op == "max_pool2d_backward":
            kwargs["indices"] = np.zeros(bad.shape, dtype=np.int64)
        with pytest.raises(ValueError, match=named(arg)):
            call(op, kwargs)


@pytest.mark.parametrize("op", ["conv2d_input", "max_pool2d_backward", "avg_pool2d_backward"])
def test_size_length_must_match_grad_output_rank(no_backend, op):
    size_arg = SIZE_ARGS[op]
    kwargs = good_kwargs(op)
    kwargs[size_arg] = kwargs[size_arg][1:]  # 3 entries for a 4-D grad_output
    with pytest.raises(ValueError, match=f"{size_arg}|grad_output"):
        call(op, kwargs)
    kwargs = good_kwargs(op)
    kwargs[size_arg] = (*kwargs[size_arg], 1)  # 5 entries
    with pytest.raises(ValueError, match=f"{size_arg}|grad_output"):
        call(op, kwargs)


def test_conv2d_weight_input_and_grad_output_ranks_must_agree(no_backend):
    kwargs = good_kwargs("conv2d_weight")
    kwargs["input"] = kwargs["input"][0]  # (C, H, W) with a 4-D grad_output
    with pytest.raises(ValueError, match="grad_output|input"):
        call("conv2d_weight", kwargs)
    kwargs = good_kwargs("conv2d_weight")
    kwargs["grad_output"] = kwargs["grad_output"][0]
    with pytest.raises(ValueError, match="grad_output"):
        call("conv2d_weight", kwargs)


@pytest.mark.parametrize("op", ["conv2d_weight"])
def test_weight_size_must_have_four_entries(no_backend, op):
    for bad in [(K, C // 2, R), (K, C // 2, R, S, 1), ()]:
        kwargs = good_kwargs(op)
        kwargs["weight_size"] = bad
        with pytest.raises(ValueError, match="weight_size"):
            call(op, kwargs)


@pytest.mark.parametrize("op", list(SIZE_ARGS))
def test_size_arguments_must_be_tuples_of_ints(no_backend, op):
    size_arg = SIZE_ARGS[op]
    good = good_kwargs(op)[size_arg]
    for bad in [np.array(good), 5, None, tuple(float(v) for v in good)]:
        kwargs = good_kwargs(op)
        kwargs[size_arg] = bad
        with pytest.raises(TypeError, match=size_arg):
            call(op, kwargs)
    kwargs = good_kwargs(op)
    kwargs[size_arg] = (*good[:-1], -good[-1])
    with pytest.raises(ValueError, match=size_arg):
        call(op, kwargs)


# --------------------------------------------------------------------------- channels, groups, bias


def test_conv2d_channel_and_group_mismatch(no_backend):
    cases = [
        dict(groups=3),  # 3 does not divide C=4
        dict(groups=4, weight=ints((K, 1, R, S))),  # 4 does not divide K=6
        dict(groups=2, weight=ints((K, 1, R, S))),  # 1*2 != C=4
        dict(groups=1),  # weight (K, 2, R, S) expects 2 channels, input has 4
        dict(groups=2, input=ints((N, 6, H, W))),  # weight expects 4, input has 6
    ]
    for change in cases:
        kwargs = good_kwargs("conv2d")
        kwargs.update(change)
        with pytest.raises(ValueError, match="channels") as info:
            call("conv2d", kwargs)
        info.match("groups|weight|input")


def test_conv2d_input_channel_and_group_mismatch(no_backend):
    for change in [
        dict(input_size=(N, 5, H, W)),
        dict(groups=3),
        dict(groups=1),
        dict(input_size=(N, 2, H, W)),
    ]:
        kwargs = good_kwargs("conv2d_input")
        kwargs.update(change)
        with pytest.raises(ValueError, match="channels") as info:
            call("conv2d_input", kwargs)
        info.match("groups|weight|input_size")


def test_conv2d_weight_channel_and_group_mismatch(no_backend):
    for change in [
        dict(weight_size=(K, 3, R, S)),
        dict(groups=3),
        dict(groups=1),
        dict(weight_size=(5, 2, R, S)),
    ]:
        kwargs = good_kwargs("conv2d_weight")
        kwargs.update(change)
        with pytest.raises(ValueError, match="channels") as info:
            call("conv2d_weight", kwargs)
        info.match("groups|weight_size|input")


@pytest.mark.parametrize("op", ["conv2d", "linear"])
def test_bias_of_wrong_length(no_backend, op):
    length = good_kwargs(op)["bias"].shape[0]
    for bad in [length - 1, length + 1, 0, 1]:
        kwargs = good_kwargs(op)
        kwargs["bias"] = ints((bad,))
        with pytest.raises(ValueError, match="bias"):
            call(op, kwargs)


# --------------------------------------------------------------------------- window arguments

NON_POSITIVE = [0, -1, (0, 1), (1, 0), (-2, 2), [1, 0], (0, 0)]
PARAM_OPS = {
    "stride": [*CONV_OPS, *POOL_WINDOW_OPS],
    "dilation": [*CONV_OPS, "max_pool2d"],
    "groups": CONV_OPS,
    "kernel_size": POOL_WINDOW_OPS,
}
PARAM_CASES = [(p, op) for p, ops in PARAM_OPS.items() for op in ops]


@pytest.mark.parametrize(("param", "op"), PARAM_CASES)
def test_non_positive_parameter_is_value_error(no_backend, param, op):
    for value in NON_POSITIVE:
        if param == "groups" and not isinstance(value, int):
            continue  # groups is a single int: a pair is a type error, tested below
        kwargs = good_kwargs(op)
        kwargs[param] = value
        with pytest.raises(ValueError, match=param):
            call(op, kwargs)


@pytest.mark.parametrize("op", CONV_OPS)
def test_groups_must_be_an_int(no_backend, op):
    for value in [(1, 1), 2.0, "2", None]:
        kwargs = good_kwargs(op)
        kwargs["groups"] = value
        with pytest.raises(TypeError, match="groups"):
            call(op, kwargs)


@pytest.mark.parametrize(("param", "op"), [(p, op) for p, op in PARAM_CASES if p != "groups"])
def test_pair_parameter_of_wrong_length_is_value_error(no_backend, param, op):
    for value in [(), (1,), (1, 1, 1)]:
        if param == "stride" and value == ():
            continue  # stride=() means "default", as in PyTorch
        kwargs = good_kwargs(op)
        kwargs[param] = value
        with pytest.raises(ValueError, match=param):
            call(op, kwargs)


@pytest.mark.parametrize("op", CONV_OPS)
def test_zero_sized_conv_kernel_is_value_error(no_backend, op):
    for shape in [(K, C // 2, 0, S), (K, C // 2, R, 0), (0, C // 2, R, S)]:
        kwargs = good_kwargs(op)
        if op == "conv2d_weight":
            kwargs["weight_size"] = shape
            name = "weight_size"
        else:
            kwargs["weight"] = np.zeros(shape, np.float32)
            name = "weight"
            if op == "conv2d":
                kwargs["bias"] = None
        with pytest.raises(ValueError, match=name):
            call(op, kwargs)


@pytest.mark.parametrize("op", [*CONV_OPS, *POOL_WINDOW_OPS])
def test_negative_padding_is_value_error(no_backend, op):
    for value in [-1, (0, -1), (-1, 0), (-3, -3)]:
        kwargs = good_kwargs(op)
        kwargs["padding"] = value
        with pytest.raises(ValueError, match="padding"):
            call(op, kwargs)


POOL_PADDING_TOO_LARGE = [
    # (kernel_size, padding, dilation): PyTorch's rule is padding <= kernel_size // 2,
    # compared with the kernel size itself, not with the dilated extent.
    (3, 2, 1),
    ((3, 2), (1, 2), 1),
    ((2, 3), (2, 1), 1),
    (1, 1, 1),
    (2, 2, 3),
    (5, 3, 2),
    ((4, 5), (3, 2), 1),
]


@pytest.mark.parametrize(
    ("op", "kernel_size", "padding", "dilation"),
    [
        (op, *case)
        for op in POOL_WINDOW_OPS
        for case in POOL_PADDING_TOO_LARGE
        if op == "max_pool2d" or case[2] == 1  # average pooling has no dilation
    ],
)
def test_pool_padding_above_half_kernel_is_value_error(
    no_backend, op, kernel_size, padding, dilation
):
    kwargs = good_kwargs(op)
    kwargs.update(kernel_size=kernel_size, padding=padding, stride=1)
    if op == "max_pool2d":
        kwargs["dilation"] = dilation
    with pytest.raises(ValueError, match="padding"):
        call(op, kwargs)


def test_pool_padding_rule_is_pytorchs():
    """fastconv accepts exactly the (kernel, padding, dilation) PyTorch accepts."""
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 1, 23, 23), np.float32)
    t = torch.from_numpy(x)
    for k in range(1, 6):
        for p in range(0, 5):
            for d in range(1, 4):
                try:
                    torch.nn.functional.max_pool2d(t, k, 1, p, d)
                    torch_ok = True
                except RuntimeError:
                    torch_ok = False
                if torch_ok:
                    fastconv.max_pool2d(x, k, 1, p, d)
                else:
                    with pytest.raises(ValueError, match="padding"):
                        fastconv.max_pool2d(x, k, 1, p, d)
            try:
                torch.nn.functional.avg_pool2d(t, k, 1, p)
                torch_ok = True
            except RuntimeError:
                torch_ok = False
            if torch_ok:
                fastconv.avg_pool2d(x, k, 1, p)
            else:
                with pytest.raises(ValueError, match="padding"):
                    fastconv.avg_pool2d(x, k, 1, p)


@pytest.mark.parametrize("op", CONV_OPS)
def test_same_padding_with_stride_is_value_error(no_backend, op):
    for stride in [2, (1, 2), (2, 1), (3, 3)]:
        kwargs = good_kwargs(op)
        kwargs.update(padding="same", stride=stride)
        with pytest.raises(ValueError, match="same") as info:
            call(op, kwargs)
        info.match("stride")


@pytest.mark.parametrize("op", CONV_OPS)
def test_unknown_padding_string_is_value_error(no_backend, op):
    for value in ["SAME", "Valid", "full", "", "same ", "causal"]:
        kwargs = good_kwargs(op)
        kwargs["padding"] = value
        with pytest.raises(ValueError, match="padding"):
            call(op, kwargs)


@pytest.mark.parametrize("op", POOL_WINDOW_OPS)
def test_padding_strings_are_refused_by_pooling(no_backend, op):
    """Pooling takes int padding only (PyTorch raises a TypeError too)."""
    for value in ["same", "valid", "full"]:
        kwargs = good_kwargs(op)
        kwargs["padding"] = value
        with pytest.raises(TypeError, match="padding"):
            call(op, kwargs)


@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize(
    ("padding", "stride"), [("valid", 2), ("valid", (1, 3)), ("same", 1), ("same", (1, 1))]
)
def test_valid_and_same_padding_strings_are_accepted(op, padding, stride):
    """'valid' works with any stride, 'same' with stride 1 (even kernels pad right/bottom)."""
    conv = good_kwargs("conv2d")
    expected = REF["conv2d"](
        conv["input"], conv["weight"], None, stride, padding, CONV["dilation"], CONV["groups"]
    )
    kwargs = good_kwargs(op)
    kwargs.update(padding=padding, stride=stride)
    if op == "conv2d":
        kwargs["bias"] = None
        np.testing.assert_array_equal(call(op, kwargs), expected)
        return
    kwargs["grad_output"] = ints(expected.shape)
    result = call(op, kwargs)
    assert result.shape == (conv["input"].shape if op == "conv2d_input" else conv["weight"].shape)


# --------------------------------------------------------------------------- output size


def test_conv_output_size_below_one_is_value_error(no_backend):
    for h, w, dilation in [(2, W, 1), (H, 1, 1), (5, W, 3), (H, 3, (1, 3))]:
        kwargs = good_kwargs("conv2d")
        kwargs.update(input=ints((N, C, h, w)), padding=0, dilation=dilation)
        with pytest.raises(ValueError, match=named("input")):
            call("conv2d", kwargs)

        kwargs = good_kwargs("conv2d_weight")
        kwargs.update(input=ints((N, C, h, w)), padding=0, dilation=dilation)
        with pytest.raises(ValueError, match=named("input")):
            call("conv2d_weight", kwargs)

        kwargs = good_kwargs("conv2d_input")
        kwargs.update(input_size=(N, C, h, w), padding=0, dilation=dilation)
        with pytest.raises(ValueError, match="input_size"):
            call("conv2d_input", kwargs)


@pytest.mark.parametrize("op", POOL_WINDOW_OPS)
def test_pool_output_size_below_one_is_value_error(no_backend, op):
    for h, w, kernel_size, dilation in [
        (2, W, 3, 1),
        (H, 1, (1, 2), 1),
        (4, 4, 5, 1),
        (5, 5, 3, 3),
    ]:
        if dilation != 1 and op != "max_pool2d":
            continue
        kwargs = good_kwargs(op)
        kwargs.update(kernel_size=kernel_size, padding=0, stride=1, ceil_mode=False)
        if op == "max_pool2d":
            kwargs["dilation"] = dilation
        if op == "avg_pool2d_backward":
            kwargs["input_size"] = (N, C, h, w)
            kwargs["grad_output"] = ints((N, C, 1, 1))
            name = "input_size"
        else:
            kwargs["input"] = ints((N, C, h, w))
            name = "input"
        with pytest.raises(ValueError, match=named(name)):
            call(op, kwargs)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool_input_with_empty_plane_is_value_error(no_backend, op):
    for shape in [(N, 0, H, W), (N, C, 0, W), (N, C, H, 0), (C, 0, W)]:
        kwargs = good_kwargs(op)
        kwargs["input"] = np.zeros(shape, np.float32)
        with pytest.raises(ValueError, match="input"):
            call(op, kwargs)


# --------------------------------------------------------------------------- divisor_override


@pytest.mark.parametrize("op", AVG_OPS)
def test_divisor_override_zero_is_value_error(no_backend, op):
    for zero in [0, np.int64(0), np.int32(0)]:
        kwargs = good_kwargs(op)
        kwargs["divisor_override"] = zero
        with pytest.raises(ValueError, match="divisor_override"):
            call(op, kwargs)


@pytest.mark.parametrize("op", AVG_OPS)
def test_divisor_override_must_be_an_int(no_backend, op):
    for value in [True, np.bool_(True), 2.0, 1.5, "2", (2, 2)]:
        kwargs = good_kwargs(op)
        kwargs["divisor_override"] = value
        with pytest.raises(TypeError, match="divisor_override"):
            call(op, kwargs)


# --------------------------------------------------------------------------- gradient shapes


def _bumped_shapes(shape):
    """Shapes that differ from ``shape`` in one dimension."""
    for axis in range(len(shape)):
        for delta in (-1, 1):
            if shape[axis] + delta >= 1:
                bad = list(shape)
                bad[axis] += delta
                yield tuple(bad)


@pytest.mark.parametrize("op", ["conv2d_input", "conv2d_weight", "avg_pool2d_backward"])
def test_grad_output_of_wrong_shape_is_value_error(no_backend, op):
    shape = good_kwargs(op)["grad_output"].shape
    for bad in _bumped_shapes(shape):
        kwargs = good_kwargs(op)
        kwargs["grad_output"] = ints(bad)
        with pytest.raises(ValueError, match="grad_output"):
            call(op, kwargs)


def test_max_pool2d_backward_grad_output_must_match_input_size(no_backend):
    kwargs = good_kwargs("max_pool2d_backward")
    shape = kwargs["grad_output"].shape
    for bad_size in [(N + 1, C, H, W), (N, C - 1, H, W), (1, C, H, W)]:
        kwargs = good_kwargs("max_pool2d_backward")
        kwargs["input_size"] = bad_size
        with pytest.raises(ValueError, match="grad_output|input_size"):
            call("max_pool2d_backward", kwargs)
    assert shape[:2] == (N, C)


# --------------------------------------------------------------------------- max-pool indices


def _indices_of_wrong_shape(indices):
    yield from (np.zeros(s, np.int64) for s in _bumped_shapes(indices.shape))
    yield indices[:1]  # broadcastable is not enough
    yield indices.reshape(-1, *indices.shape[2:])
    yield indices[None]
    yield indices.ravel()


def test_max_pool_indices_of_wrong_shape(backend):
    for bad in _indices_of_wrong_shape(good_kwargs("max_pool2d_backward")["indices"]):
        kwargs = good_kwargs("max_pool2d_backward")
        kwargs["indices"] = bad
        with pytest.raises(ValueError, match="indices"):
            call("max_pool2d_backward", kwargs)


def test_max_pool_indices_of_wrong_dtype(backend):
    for dtype in [np.int32, np.int16, np.uint64, np.uint32, np.float64, np.float32, np.bool_]:
        kwargs = good_kwargs("max_pool2d_backward")
        kwargs["indices"] = kwargs["indices"].astype(dtype)
        with pytest.raises(TypeError, match="indices"):
            call("max_pool2d_backward", kwargs)
    for value in [good_kwargs("max_pool2d_backward")["indices"].tolist(), 0, None]:
        kwargs = good_kwargs("max_pool2d_backward")
        kwargs["indices"] = value
        with pytest.raises(TypeError, match="indices"):
            call("max_pool2d_backward", kwargs)


OUT_OF_RANGE = [
    ((0, 0, 0, 0), -1),
    ((N - 1, C - 1, -1, -1), H * W),  # the very last index, one past the plane
    ((1, 2, 1, 0), H * W + 5),  # would land in the next plane
    ((0, 1, 0, 1), -(H * W)),  # would land in the previous plane
    ((1, 0, 2, 1), 2**40),
    ((0, 3, 1, 1), np.iinfo(np.int64).max),
    ((1, 1, 0, 0), np.iinfo(np.int64).min),
]


@pytest.mark.parametrize(("where", "value"), OUT_OF_RANGE)
def test_max_pool_indices_out_of_range(backend, where, value):
    """Indices address memory: one bad entry anywhere must be caught before any write."""
    kwargs = good_kwargs("max_pool2d_backward")
    kwargs["indices"][where] = value
    before = copy_kwargs(kwargs)
    with pytest.raises(ValueError, match="indices"):
        call("max_pool2d_backward", kwargs)
    for name in ("grad_output", "indices"):
        np.testing.assert_array_equal(kwargs[name], before[name])


def test_max_pool_indices_out_of_range_unbatched_and_non_contiguous(backend):
    kwargs = good_kwargs("max_pool2d_backward")
    indices = kwargs["indices"][0].copy()
    indices[-1, -1, -1] = H * W
    with pytest.raises(ValueError, match="indices"):
        fastconv.max_pool2d_backward(kwargs["grad_output"][0], indices, (C, H, W))
    reversed_indices = kwargs["indices"].copy()[..., ::-1]
    reversed_indices[0, 0, 0, 0] = -1  # the first element in memory order is fine
    with pytest.raises(ValueError, match="indices"):
        fastconv.max_pool2d_backward(kwargs["grad_output"], reversed_indices, (N, C, H, W))


def test_max_pool_indices_into_empty_input_size(backend):
    kwargs = good_kwargs("max_pool2d_backward")
    kwargs["input_size"] = (N, C, 0, W)
    with pytest.raises(ValueError, match="indices|input_size"):
        call("max_pool2d_backward", kwargs)


# --------------------------------------------------------------------------- GEMM shapes


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "trans_a", "trans_b"),
    [
        ((5, 7), (6, 3), False, False),
        ((5, 7), (7, 3), True, False),  # op(a) is 7x5
        ((5, 7), (7, 3), False, True),  # op(b) is 3x7
        ((7, 5), (3, 6), True, True),
        ((5, 0), (1, 3), False, False),
    ],
)
def test_gemm_inner_dimension_mismatch(no_backend, a_shape, b_shape, trans_a, trans_b):
    with pytest.raises(ValueError, match="inner") as info:
        fastconv.gemm(ints(a_shape), ints(b_shape), trans_a=trans_a, trans_b=trans_b)
    info.match(r"\(a\)")


@pytest.mark.parametrize(
    "c_shape",
    [
        (N_, M_),
        (M_, N_ + 1),
        (M_ + 1, N_),
        (N_,),
        (1, N_),
        (M_, 1),
        (M_ * N_,),
        (M_, N_, 1),
        (1, M_, N_),
    ],
)
def test_gemm_c_of_wrong_shape(no_backend, c_shape):
    kwargs = good_kwargs("gemm")
    kwargs["c"] = ints(c_shape)
    with pytest.raises(ValueError, match=named("c")):
        call("gemm", kwargs)


def test_matmul_and_linear_inner_dimension_mismatch(no_backend):
    with pytest.raises(ValueError, match="inner"):
        fastconv.matmul(ints((M_, K_)), ints((K_ + 1, N_)))
    with pytest.raises(ValueError, match="inner"):
        fastconv.matmul(ints((M_, K_)), ints((M_, K_)))
    with pytest.raises(ValueError, match=named("input")):
        fastconv.linear(ints((4, K_)), ints((OUT_FEATURES, K_ + 1)))
    with pytest.raises(ValueError, match=named("input")):
        fastconv.linear(ints((4, K_)), ints((K_, OUT_FEATURES)))


# --------------------------------------------------------------------------- bools are not ints

BOOL_CASES = [
    *[(op, "stride", v) for op in [*CONV_OPS, *POOL_WINDOW_OPS] for v in (True, (1, True))],
    *[
        (op, "padding", v)
        for op in [*CONV_OPS, *POOL_WINDOW_OPS]
        for v in (False, (np.bool_(1), 0))
    ],
    *[(op, "dilation", v) for op in [*CONV_OPS, "max_pool2d"] for v in (True, (True, 1))],
    *[(op, "groups", True) for op in CONV_OPS],
    *[(op, "kernel_size", v) for op in POOL_WINDOW_OPS for v in (True, (3, True))],
    *[(op, "divisor_override", v) for op in AVG_OPS for v in (True, np.bool_(True))],
]


@pytest.mark.parametrize(("op", "param", "value"), BOOL_CASES)
def test_bools_are_not_ints(no_backend, op, param, value):
    kwargs = good_kwargs(op)
    kwargs[param] = value
    with pytest.raises(TypeError, match=param):
        call(op, kwargs)


@pytest.mark.parametrize("op", list(SIZE_ARGS))
def test_bools_in_size_arguments_are_type_error(no_backend, op):
    size_arg = SIZE_ARGS[op]
    kwargs = good_kwargs(op)
    kwargs[size_arg] = (*kwargs[size_arg][:-1], True)
    with pytest.raises(TypeError, match=size_arg):
        call(op, kwargs)


@pytest.mark.parametrize(("op", "param"), [(op, p) for p, ops in PARAM_OPS.items() for op in ops])
def test_floats_are_not_ints(no_backend, op, param):
    for value in [2.0, np.float32(2), (2.0, 1), "2", None if param != "stride" else 1.5]:
        kwargs = good_kwargs(op)
        kwargs[param] = value
        with pytest.raises(TypeError, match=param):
            call(op, kwargs)


def test_numpy_integers_are_accepted():
    kwargs = good_kwargs("conv2d")
    expected = call("conv2d", copy_kwargs(kwargs))
    kwargs.update(
        stride=(np.int64(2), np.int32(1)),
        padding=np.int8(1),
        dilation=(np.uint8(1), np.int64(2)),
        groups=np.int16(2),
    )
    assert_same_results(call("conv2d", kwargs), expected)
    kwargs = good_kwargs("avg_pool2d")
    expected = call("avg_pool2d", copy_kwargs(kwargs))
    kwargs.update(kernel_size=(np.int64(3), np.int32(2)), stride=[np.int64(2), 1])
    assert_same_results(call("avg_pool2d", kwargs), expected)


# --------------------------------------------------------------------------- zero-size batches


def _expected_empty(op, dtype):
    """Shapes (and exact values, where defined) of each op on a zero-size batch."""
    oh, ow = conv_out_hw()
    if op == "conv2d":
        return [np.zeros((0, K, oh, ow), dtype)]
    if op == "conv2d_input":
        return [np.zeros((0, C, H, W), dtype)]
    if op == "conv2d_weight":
        return [np.zeros((K, C // CONV["groups"], R, S), dtype)]  # a sum over nothing
    pool_out = good_kwargs("max_pool2d_backward")["grad_output"].shape[2:]
    avg_out = good_kwargs("avg_pool2d_backward")["grad_output"].shape[2:]
    if op == "max_pool2d":
        return [np.zeros((0, C, *pool_out), dtype), np.zeros((0, C, *pool_out), np.int64)]
    if op in ("max_pool2d_backward", "avg_pool2d_backward"):
        return [np.zeros((0, C, H, W), dtype)]
    if op == "avg_pool2d":
        return [np.zeros((0, C, *avg_out), dtype)]
    if op == "linear":
        return [np.zeros((0, 3, OUT_FEATURES), dtype)]
    raise AssertionError(op)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", [op for op in OPS if op not in ("gemm", "matmul")])
def test_zero_size_batch(op, dtype):
    kwargs = good_kwargs(op, dtype, n=0)
    assert_same_results(call(op, kwargs), _expected_empty(op, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_size_linear_variants(dtype):
    weight, bias = ints((OUT_FEATURES, K_), dtype), ints((OUT_FEATURES,), dtype)
    for shape in [(0, K_), (2, 0, K_), (0, 0, K_)]:
        for b in (None, bias):
            out = fastconv.linear(np.zeros(shape, dtype), weight, b)
            assert_same_results(out, np.zeros((*shape[:-1], OUT_FEATURES), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_size_gemm_and_matmul(dtype):
    a, b = ints((M_, K_), dtype), ints((K_, N_), dtype)
    assert_same_results(fastconv.matmul(a[:0], b), np.zeros((0, N_), dtype))
    assert_same_results(fastconv.matmul(a, b[:, :0]), np.zeros((M_, 0), dtype))
    assert_same_results(fastconv.gemm(a[:0], b), np.zeros((0, N_), dtype))
    assert_same_results(fastconv.gemm(a.T[:, :0], b, trans_a=True), np.zeros((0, N_), dtype))
    # K == 0: op(a) @ op(b) is a sum over nothing.
    assert_same_results(fastconv.matmul(a[:, :0], b[:0]), np.zeros((M_, N_), dtype))
    assert_same_results(fastconv.gemm(a[:, :0], b[:0], alpha=3.0), np.zeros((M_, N_), dtype))
    c = ints((M_, N_), dtype, 5)
    expected = 2 * c
    assert_same_results(fastconv.gemm(a[:, :0], b[:0], c.copy(), beta=2.0), expected)
    # beta == 0 never reads c, even when it holds NaN.
    c_nan = np.full((M_, N_), np.nan, dtype)
    assert_same_results(fastconv.gemm(a[:, :0], b[:0], c_nan, beta=0.0), np.zeros((M_, N_), dtype))


# --------------------------------------------------------------------------- layouts


def _relayout(x, kind):
    """The values of ``x`` in a different memory layout (a view where possible)."""
    if not isinstance(x, np.ndarray) or x.ndim == 0:
        return x
    if kind == "step":
        big = np.zeros([2 * s + 1 for s in x.shape], x.dtype)
        if x.dtype.kind == "f":
            big.fill(np.nan)  # reading a skipped element shows up as NaN
        view = big[tuple(slice(1, None, 2) for _ in x.shape)]
        view[...] = x
        return view
    if kind == "transpose":  # last two axes swapped in memory
        if x.ndim < 2:
            return x[::1]
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -1, -2)), -1, -2)
    if kind == "negative":
        flip = tuple(slice(None, None, -1) for _ in x.shape)
        return x[flip].copy()[flip]
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "readonly":
        y = x.copy()
        y.flags.writeable = False
        return y
    if kind == "unaligned":
        buffer = np.zeros(x.nbytes + 1, np.uint8)
        view = np.frombuffer(buffer.data, dtype=x.dtype, count=x.size, offset=1)
        view = view.reshape(x.shape)
        view.flags.writeable = True
        view[...] = x
        assert not view.flags.aligned or x.itemsize == 1
        return view
    raise AssertionError(kind)


LAYOUTS = ["step", "transpose", "negative", "fortran", "unaligned", "readonly"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_inputs_give_the_same_results(op, layout, dtype):
    kwargs = good_kwargs(op, dtype)
    expected = call(op, copy_kwargs(kwargs))
    strided = {k: _relayout(v, layout) for k, v in kwargs.items()}
    untouched = {k: v.copy() for k, v in strided.items() if isinstance(v, np.ndarray)}
    actual = call(op, strided)
    assert_same_results(actual, expected)
    for name, before in untouched.items():
        if op == "gemm" and name == "c" and layout != "readonly":
            # a writable c is written in place, whatever its layout
            assert actual is strided["c"]
            continue
        np.testing.assert_array_equal(strided[name], before, strict=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_one_argument_at_a_time(op, layout):
    kwargs = good_kwargs(op)
    expected = call(op, copy_kwargs(kwargs))
    names = [k for k, v in kwargs.items() if isinstance(v, np.ndarray)]
    for name in names:
        mixed = copy_kwargs(kwargs)
        mixed[name] = _relayout(mixed[name], layout)
        assert_same_results(call(op, mixed), expected)


def test_gemm_c_aliasing_an_input():
    """c given as a view of a: the result is still op(a) @ op(b) computed from the old a."""
    a = ints((M_, M_), np.float64, 1)
    b = ints((M_, M_), np.float64, 2)
    expected = 2.0 * a @ b - a
    out = fastconv.gemm(a, b, a, alpha=2.0, beta=-1.0)
    assert out is a
    np.testing.assert_array_equal(out, expected)


def test_gemm_read_only_c_is_not_written():
    kwargs = good_kwargs("gemm")
    c = kwargs["c"]
    c.flags.writeable = False
    before = c.copy()
    expected = call("gemm", {**copy_kwargs(kwargs), "c": before.copy()})
    out = call("gemm", kwargs)
    assert out is not c
    np.testing.assert_array_equal(c, before)
    np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------- unbatched


def _unbatched_kwargs(op, kwargs):
    """The first sample of a batched call as an unbatched (C, H, W) call."""
    out = dict(kwargs)
    for name in ("input", "grad_output", "indices"):
        if name in out and isinstance(out[name], np.ndarray):
            out[name] = out[name][0]
    if op in SIZE_ARGS and SIZE_ARGS[op] == "input_size":
        out["input_size"] = out["input_size"][1:]
    return out


@pytest.mark.parametrize("op", [op for op in OPS if op not in ("gemm", "matmul", "linear")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unbatched_chw_inputs(op, dtype):
    batched = good_kwargs(op, dtype, n=1)
    expected = as_list(call(op, copy_kwargs(batched)))
    actual = as_list(call(op, _unbatched_kwargs(op, batched)))
    if op == "conv2d_weight":  # the weight gradient has no batch dimension
        assert_same_results(actual, expected)
        return
    assert_same_results(actual, [e[0] for e in expected])
    assert all(a.ndim == 3 for a in actual)


def test_linear_one_dimensional_input():
    kwargs = good_kwargs("linear")
    expected = fastconv.linear(kwargs["input"][:1, 0], kwargs["weight"], kwargs["bias"])
    actual = fastconv.linear(kwargs["input"][0, 0], kwargs["weight"], kwargs["bias"])
    assert_same_results(actual, expected[0])


# --------------------------------------------------------------------------- huge values

HUGE = 2**70  # no C++ int64 holds it


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _grad_output_shape(op, kwargs):
    """grad_output shape that fits the (possibly huge) window of a backward call."""
    if op in ("conv2d_input", "conv2d_weight"):
        weight_shape = kwargs["weight_size"] if op == "conv2d_weight" else kwargs["weight"].shape
        hw = [
            reference.conv_output_size(size, k, s, p, d)
            for size, k, s, p, d in zip(
                (H, W),
                weight_shape[-2:],
                _pair(kwargs["stride"]),
                _pair(kwargs["padding"]),
                _pair(kwargs["dilation"]),
            )
        ]
        return (N, K, *hw)
    stride = kwargs["stride"] if kwargs["stride"] is not None else kwargs["kernel_size"]
    hw = [
        reference.pool_output_size(size, k, s, p, 1, kwargs["ceil_mode"])
        for size, k, s, p in zip(
            (H, W), _pair(kwargs["kernel_size"]), _pair(stride), _pair(kwargs["padding"])
        )
    ]
    return (N, C, *hw)


@pytest.mark.parametrize(
    ("op", "param", "change"),
    [
        *[(op, "stride", dict(stride=HUGE)) for op in [*CONV_OPS, *POOL_WINDOW_OPS]],
        *[(op, "stride", dict(stride=(1, 2**63))) for op in [*CONV_OPS, *POOL_WINDOW_OPS]],
        ("max_pool2d", "dilation", dict(kernel_size=1, padding=0, dilation=HUGE)),
        ("conv2d", "dilation", dict(weight=ints((K, C // 2, 1, 1)), padding=0, dilation=HUGE)),
        *[
            (
                op,
                "kernel_size|padding",
                dict(kernel_size=HUGE, padding=HUGE // 2, stride=1, dilation=1),
            )
            for op in POOL_WINDOW_OPS
        ],
        *[
            (op, "divisor_override", dict(divisor_override=v))
            for op in AVG_OPS
            for v in (HUGE, -HUGE, 2**63)
        ],
    ],
)
def test_parameters_beyond_int64_are_value_error(no_backend, op, param, change):
    """Values the kernels cannot represent are refused by validation, naming the argument
    (today they reach the native module, whose int64 conversion raises RuntimeError)."""
    kwargs = good_kwargs(op)
    kwargs.update(change)
    if "dilation" in kwargs and op in AVG_OPS:
        del kwargs["dilation"]
    if op in ("conv2d_input", "conv2d_weight", "avg_pool2d_backward"):
        kwargs["grad_output"] = ints(_grad_output_shape(op, kwargs))
    with pytest.raises(ValueError, match=param):
        call(op, kwargs)


_HUGE_WINDOW_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a bad_alloc, not the OOM killer
import numpy as np
import fastconv
fastconv.set_num_threads(2)
x = np.zeros((1, 1, 1, 1), np.float32)
try:
    result = {call}
except (ValueError, MemoryError) as exc:
    print("raised", type(exc).__name__, exc)
else:
    print("result", np.asarray(result).ravel().tolist())
"""


@pytest.mark.parametrize(
    "call_text",
    [
        "fastconv.max_pool2d(x, (2**32, 2**32), padding=(2**31, 2**31))",
        "fastconv.max_pool2d(x, (2**31 - 1, 1), padding=(2**30 - 1, 0))",
        "fastconv.avg_pool2d(x, (2**32, 1), padding=(2**31, 0))",
        "fastconv.avg_pool2d(x, (2**31 - 1, 1), padding=(2**30 - 1, 0))",
        "fastconv.avg_pool2d_backward(x, (1, 1, 1, 1), (2**32, 1), padding=(2**31, 0))",
    ],
)
def test_huge_pooling_windows_fail_cleanly(call_text):
    """A window far larger than the input (legal: padding <= kernel // 2, output 1x1) must
    give the right answer or a clean ValueError/MemoryError -- never crash the interpreter.
    PyTorch refuses these sizes (they overflow its int32 window arguments)."""
    child = run_python(_HUGE_WINDOW_CHILD.format(call=call_text), timeout=60)
    assert child.returncode == 0, (
        f"{call_text} killed the interpreter (exit status {child.returncode}): "
        f"{child.stderr[-500:]}"
    )
    assert child.stdout.startswith(("raised", "result [0.0]")), child.stdout + child.stderr
