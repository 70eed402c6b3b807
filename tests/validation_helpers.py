"""The valid calls that the validation tests perturb, one per public op.

``good_kwargs(op)`` builds the keyword arguments of a valid call of ``op`` (fresh,
C-contiguous arrays of integer-valued floats, so that every op is exact) from the
geometry constants below; ``call`` runs it. ``OPS`` lists the ops, ``ARRAY_ARGS`` their
floating-point tensor arguments and ``SIZE_ARGS`` their shape arguments; ``REF`` keeps
the reference ops from before the ``no_backend`` fixture replaces them; ``named`` builds
the regex that finds an argument's name in an error message.
"""

from __future__ import annotations

import re

import numpy as np

import fastconv
from fastconv import reference

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
