"""The implementations fastconv is measured against.

* ``numpy``: what a NumPy user would write, vectorised rather than looped. For
  convolution that is im2col (a strided view, one copy) and one batched ``np.matmul``
  per group (OpenBLAS); for GEMM ``np.matmul``; for pooling ``fastconv.reference``.
* ``torch``: PyTorch CPU (when installed) on tensors that share the NumPy arrays'
  memory, so no copy is timed; the gradients through the ``aten`` backward ops that
  autograd itself runs.
* ``cython`` and ``numba``: the ladder's peers, what a Python user would write instead
  of a C++ extension (``ladder.py``, ``peers_cython.py``, ``peers_numba.py``).

The calls here return zero-argument callables: the timing loop calls them as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..geometry import conv_output_size

__all__ = [
    "ALL_IMPLS",
    "IMPLS",
    "numpy_conv2d",
    "numpy_conv2d_input",
    "numpy_conv2d_weight",
    "numpy_conv_call",
    "torch_conv_call",
    "torch_or_none",
    "torch_pool_call",
]

# The implementations a run has by default, in report order.
IMPLS = ("fastconv", "numpy", "torch")
# And every implementation a case can have: the ladder's Cython and Numba peers
# (``ladder.py``) run only when asked for.
ALL_IMPLS = (*IMPLS, "cython", "numba")


def torch_or_none():
    """PyTorch if it is installed, else None (the torch peer is then left out)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# =========================================================================== NumPy conv


def _im2col(x: np.ndarray, r: int, s: int, stride: int, pad: int, dilation: int = 1):
    """(N, C*R*S, OH*OW) columns of ``x`` (N, C, H, W), plus (OH, OW)."""
    n, c, h, w = x.shape
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = conv_output_size(h, r, stride, pad, dilation)
    ow = conv_output_size(w, s, stride, pad, dilation)
    sn, sc, sh, sw = x.strides
    view = np.lib.stride_tricks.as_strided(
        x,
        (n, c, r, s, oh, ow),
        (sn, sc, sh * dilation, sw * dilation, sh * stride, sw * stride),
        writeable=False,
    )
    return view.reshape(n, c * r * s, oh * ow), (oh, ow)


def numpy_conv2d(x, w, stride=1, pad=0, groups=1, dilation=1):
    """conv2d as im2col + one batched matmul per group (OpenBLAS): the NumPy peer."""
    n, c = x.shape[:2]
    k, cg, r, s = w.shape
    cols, (oh, ow) = _im2col(x, r, s, stride, pad, dilation)
    cols = cols.reshape(n, groups, cg * r * s, oh * ow)
    out = np.matmul(w.reshape(groups, k // groups, cg * r * s), cols)
    return out.reshape(n, k, oh, ow)


def numpy_conv2d_input(input_shape, w, gy, stride=1, pad=0, groups=1, dilation=1):
    """conv2d_input as matmul + col2im (R*S strided slice additions): the NumPy peer."""
    n, c, h, wd = input_shape
    k, cg, r, s = w.shape
    oh, ow = gy.shape[2:]
    wt = w.reshape(groups, k // groups, cg * r * s).transpose(0, 2, 1)
    gcols = np.matmul(wt, gy.reshape(n, groups, k // groups, oh * ow))
    gcols = gcols.reshape(n, c, r, s, oh, ow)
    gx = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), dtype=gy.dtype)
    for i in range(r):
        for j in range(s):
            hi, wj = i * dilation, j * dilation
            gx[
                :,
                :,
                hi : hi + stride * (oh - 1) + 1 : stride,
                wj : wj + stride * (ow - 1) + 1 : stride,
            ] += gcols[:, :, i, j]
    return gx[:, :, pad : pad + h, pad : pad + wd]


def numpy_conv2d_weight(x, weight_shape, gy, stride=1, pad=0, groups=1, dilation=1):
    """conv2d_weight as im2col + batched matmul summed over the batch: the NumPy peer."""
    n = x.shape[0]
    k, cg, r, s = weight_shape
    cols, (oh, ow) = _im2col(x, r, s, stride, pad, dilation)
    cols = cols.reshape(n, groups, cg * r * s, oh * ow)
    g = gy.reshape(n, groups, k // groups, oh * ow)
    return np.matmul(g, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(weight_shape)


def numpy_conv_call(direction, x, w, gy, stride, pad, groups) -> Callable[[], Any]:
    """The NumPy peer of one conv ``direction`` (fwd | dx | dw), ready to call."""
    if direction == "fwd":
        return lambda: numpy_conv2d(x, w, stride, pad, groups)
    if direction == "dx":
        return lambda: numpy_conv2d_input(x.shape, w, gy, stride, pad, groups)
    return lambda: numpy_conv2d_weight(x, w.shape, gy, stride, pad, groups)


# =========================================================================== PyTorch


def torch_conv_call(direction, x, w, gy, stride, pad, groups) -> Callable[[], Any]:
    """PyTorch's conv of one ``direction`` (fwd | dx | dw), ready to call: the forward
    through ``torch.nn.functional.conv2d``, both gradients through
    ``aten.convolution_backward`` asked for that one gradient only."""
    import torch

    xt, wt, gyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(gy)
    if direction == "fwd":
        conv = torch.nn.functional.conv2d
        return lambda: conv(xt, wt, None, stride, pad, 1, groups)
    aten = torch.ops.aten
    mask = [direction == "dx", direction == "dw", False]
    pick = 0 if direction == "dx" else 1
    return lambda: aten.convolution_backward(
        gyt, xt, wt, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], groups, mask
    )[pick]


def torch_pool_call(op, direction, x, gy, indices, kernel, stride, pad) -> Callable[[], Any]:
    """PyTorch's ``op`` (max_pool2d | avg_pool2d) forward, or its ``aten`` backward
    (``direction`` dx; max pooling uses the forward's ``indices``), ready to call."""
    import torch

    xt, gyt = torch.from_numpy(x), torch.from_numpy(gy)
    if direction == "fwd":
        fn = getattr(torch.nn.functional, op)
        return lambda: fn(xt, kernel_size=kernel, stride=stride, padding=pad)
    aten = torch.ops.aten
    k2, s2, p2 = [kernel] * 2, [stride] * 2, [pad] * 2
    if op == "max_pool2d":
        it = torch.from_numpy(indices)
        return lambda: aten.max_pool2d_with_indices_backward(gyt, xt, k2, s2, p2, [1, 1], False, it)
    return lambda: aten.avg_pool2d_backward(gyt, xt, k2, s2, p2, False, True, None)
