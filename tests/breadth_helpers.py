"""Valid keyword arguments of the functional ops behind the breadth layers (transposed and
1-D convolution, 1-D pooling, resampling, group/layer/instance norm), for the tests that
perturb one argument of every public op (``test_hardening``). Arrays are fresh float32
integer values; building them calls no fastconv op (the no_backend fixture may be on)."""

from __future__ import annotations

import numpy as np
from validation_helpers import ints


def _conv_transpose(op):
    x, weight = ints((2, 4, 3, 3), np.float32, 1), ints((4, 3, 3, 3), np.float32, 2)
    geometry = dict(stride=2, padding=1, output_padding=1, groups=1, dilation=1)
    grad_output = ints((2, 3, 6, 6), np.float32, 3)
    if op == "conv_transpose2d":
        return dict(input=x, weight=weight, bias=ints((3,), np.float32, 4), **geometry)
    if op == "conv_transpose2d_input":
        return dict(input_size=x.shape, weight=weight, grad_output=grad_output, **geometry)
    return dict(input=x, weight_size=weight.shape, grad_output=grad_output, **geometry)


def _conv1d(op):
    x, weight = ints((2, 4, 9), np.float32, 1), ints((6, 2, 3), np.float32, 2)
    geometry = dict(stride=2, padding=1, dilation=1, groups=2)
    grad_output = ints((2, 6, 5), np.float32, 3)
    if op == "conv1d":
        return dict(input=x, weight=weight, bias=ints((6,), np.float32, 4), **geometry)
    if op == "conv1d_input":
        return dict(input_size=x.shape, weight=weight, grad_output=grad_output, **geometry)
    return dict(input=x, weight_size=weight.shape, grad_output=grad_output, **geometry)


def _pool1d(op):
    x = ints((2, 4, 9), np.float32, 1)
    if op == "max_pool1d":
        return dict(input=x, kernel_size=3, stride=2, padding=1, return_indices=True)
    if op == "max_pool1d_backward":
        indices = np.zeros((2, 4, 5), np.int64)
        return dict(grad_output=ints((2, 4, 5), np.float32, 2), indices=indices, input_size=x.shape)
    if op == "avg_pool1d":
        return dict(input=x, kernel_size=3, stride=2, padding=1)
    return dict(
        grad_output=ints((2, 4, 5), np.float32, 2),
        input_size=x.shape,
        kernel_size=3,
        stride=2,
        padding=1,
    )


def _resampling(op):
    x = ints((2, 4, 3, 3), np.float32, 1)
    if op == "interpolate":
        return dict(input=x, scale_factor=2, mode="bilinear")
    if op == "interpolate_backward":
        grad_output = ints((2, 4, 6, 6), np.float32, 2)
        return dict(grad_output=grad_output, input_size=x.shape, scale_factor=2, mode="bilinear")
    if op == "pixel_shuffle":
        return dict(input=x, upscale_factor=2)
    return dict(input=ints((2, 1, 4, 6), np.float32, 1), downscale_factor=2)


def _norm(op):
    x = ints((2, 4, 3, 3), np.float32, 1)
    weight, bias = ints((4,), np.float32, 2), ints((4,), np.float32, 3)
    if op == "group_norm":
        return dict(input=x, num_groups=2, weight=weight, bias=bias)
    if op == "layer_norm":
        shape = (3, 3)
        return dict(
            input=x,
            normalized_shape=shape,
            weight=ints(shape, np.float32, 2),
            bias=ints(shape, np.float32, 3),
        )
    stats = dict(running_mean=np.zeros(4, np.float32), running_var=np.ones(4, np.float32))
    return dict(input=x, weight=weight, bias=bias, **stats)


def _activation(op):
    x = ints((2, 4, 3, 3), np.float32, 1)
    if op in ("relu", "relu6"):
        return dict(input=x)
    return dict(grad_output=ints((2, 4, 3, 3), np.float32, 2), output=np.maximum(x, 0))


_BUILDERS = {
    _conv_transpose: ["conv_transpose2d", "conv_transpose2d_input", "conv_transpose2d_weight"],
    _conv1d: ["conv1d", "conv1d_input", "conv1d_weight"],
    _pool1d: ["max_pool1d", "max_pool1d_backward", "avg_pool1d", "avg_pool1d_backward"],
    _resampling: ["interpolate", "interpolate_backward", "pixel_shuffle", "pixel_unshuffle"],
    _norm: ["group_norm", "layer_norm", "instance_norm"],
    _activation: ["relu", "relu6", "relu_backward", "relu6_backward"],
}

BREADTH_OPS = [op for ops in _BUILDERS.values() for op in ops]


def breadth_kwargs(op):
    """Keyword arguments of a valid call of ``op``, one of BREADTH_OPS."""
    for build, ops in _BUILDERS.items():
        if op in ops:
            return build(op)
    raise AssertionError(op)
