"""The validation layer of ``fastconv.functional``: scalar and window arguments.

Every bad input raises the stated error type -- TypeError for wrong kinds and dtypes,
ValueError for wrong values and shapes -- with the offending argument named in the
message, for every public op, *before* any backend runs: the ``no_backend`` fixture
(in ``conftest.py``) replaces ``fastconv._C`` (and the NumPy reference ops and the CUDA
backend) by objects that raise AssertionError, so a test only passes if validation fails
first.

Covered here: stride, padding (and the 'same' / 'valid' strings), dilation, groups,
kernel_size, output sizes below one, divisor_override, bools refused where ints are
expected, values beyond int64, and windows far larger than the input. The tensor
arguments, zero-size batches, layouts and unbatched inputs are in
``test_validation_arrays``.

Inputs are integer-valued floats (``validation_helpers.good_kwargs``), so that every op
is exact and results can be compared bit for bit whatever the summation order.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close_scaled, run_python
from validation_helpers import (
    AVG_OPS,
    CONV,
    CONV_OPS,
    OPS,
    POOL_WINDOW_OPS,
    REF,
    SIZE_ARGS,
    C,
    H,
    K,
    N,
    R,
    S,
    W,
    as_list,
    assert_same_results,
    call,
    copy_kwargs,
    good_kwargs,
    ints,
    named,
)

import fastconv
from fastconv import reference

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
