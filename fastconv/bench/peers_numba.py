"""The Numba peer: what a numerical Python programmer would write with Numba instead of
a C++ extension -- direct loops compiled by ``@njit(parallel=True, fastmath=True)``,
``prange`` over outputs that no two iterations share:

* forward: one task per (image, output channel) plane;
* input gradient: one task per (image, input channel) plane, scattered into a private
  zero-padded plane and cropped;
* weight gradient: one task per (output channel, input channel) filter, each tap summed
  over the batch and the output plane;
* max pooling forward and backward: one task per (image, channel) plane.

Inputs are zero-padded once (in a parallel loop) so the inner loops carry no bounds
tests; the innermost loop runs along an output row, which LLVM vectorises. Max pooling
is compiled without ``fastmath``: it would let LLVM drop the NaN test of PyTorch's rule
(a NaN in the window wins), and pooling has no sums for it to reorder.

Compiled on first use (``cache=True`` keeps the machine code for later processes);
``warm_up()`` compiles every kernel for float32 so that no timing ever includes the
compiler. Square kernels, strides and paddings, as the benchmark cases have them.

Numba's own ``workqueue`` threading layer runs the loops unless ``NUMBA_THREADING_LAYER``
says otherwise: with the ``omp`` layer (its default here) the idle workers of a second
OpenMP runtime kept spinning beside PyTorch's and made the torch conv timed next up to
10x slower (resnet_3x3_56 forward, batch 2, 1 thread: 9.6 -> 108 ms).
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

from ..functional import get_num_threads
from ..geometry import conv_output_size, pair, pool_output_size

__all__ = [
    "conv2d",
    "conv2d_input",
    "conv2d_weight",
    "max_pool2d",
    "max_pool2d_backward",
    "threading_layer",
    "warm_up",
]

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_LOOPS = dict(parallel=True, fastmath=True, cache=True)


@njit(**_LOOPS)
def _padded(x, pad):
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    for task in prange(n * c):
        b, ch = task // c, task % c
        for y in range(h):
            for xo in range(w):
                out[b, ch, y + pad, xo + pad] = x[b, ch, y, xo]
    return out


@njit(**_LOOPS)
def _conv2d(xp, w, stride, dilation, groups, oh, ow):
    n = xp.shape[0]
    k, cg, r, s = w.shape
    k_per_group = k // groups
    span = stride * (ow - 1) + 1  # the input columns one output row reads, per tap
    out = np.empty((n, k, oh, ow), dtype=xp.dtype)
    for task in prange(n * k):
        b, o = task // k, task % k
        c0 = (o // k_per_group) * cg
        row = np.empty(ow, dtype=xp.dtype)  # private: LLVM need not fear aliasing with xp
        for y in range(oh):
            row[:] = 0
            for c in range(cg):
                for i in range(r):
                    src = xp[b, c0 + c, y * stride + i * dilation]
                    for j in range(s):
                        wv = w[o, c, i, j]
                        start = j * dilation
                        # A contiguous slice has a layout LLVM vectorises; a strided one not.
                        if stride == 1:
                            taps = src[start : start + ow]
                            for xo in range(ow):
                                row[xo] += wv * taps[xo]
                        else:
                            strided = src[start : start + span : stride]
                            for xo in range(ow):
                                row[xo] += wv * strided[xo]
            out[b, o, y] = row
    return out


@njit(**_LOOPS)
def _conv2d_input(gy, w, stride, dilation, groups, pad, h, wd):
    n, k, oh, ow = gy.shape
    cg, r, s = w.shape[1], w.shape[2], w.shape[3]
    channels = cg * groups
    k_per_group = k // groups
    gx = np.empty((n, channels, h, wd), dtype=gy.dtype)
    for task in prange(n * channels):
        b, c = task // channels, task % channels
        g, cl = c // cg, c % cg
        plane = np.zeros((h + 2 * pad, wd + 2 * pad), dtype=gy.dtype)
        for o in range(g * k_per_group, (g + 1) * k_per_group):
            for i in range(r):
                for j in range(s):
                    wv = w[o, cl, i, j]
                    start = j * dilation
                    for y in range(oh):
                        dst = plane[y * stride + i * dilation]
                        src = gy[b, o, y]
                        if stride == 1:
                            taps = dst[start : start + ow]
                            for xo in range(ow):
                                taps[xo] += wv * src[xo]
                        else:
                            for xo in range(ow):
                                dst[start + xo * stride] += wv * src[xo]
        for y in range(h):
            for xo in range(wd):
                gx[b, c, y, xo] = plane[y + pad, xo + pad]
    return gx


@njit(**_LOOPS)
def _conv2d_weight(xp, gy, stride, dilation, groups, r, s, zero):
    n, k, oh, ow = gy.shape
    cg = xp.shape[1] // groups
    k_per_group = k // groups
    span = stride * (ow - 1) + 1  # the input columns one output row reads, per tap
    gw = np.empty((k, cg, r, s), dtype=gy.dtype)
    for task in prange(k * cg):
        o, cl = task // cg, task % cg
        c = (o // k_per_group) * cg + cl
        for i in range(r):
            for j in range(s):
                acc = zero  # the input's dtype: float32 sums vectorise twice as wide
                start = j * dilation
                for b in range(n):
                    for y in range(oh):
                        src = xp[b, c, y * stride + i * dilation]
                        g = gy[b, o, y]
                        if stride == 1:
                            taps = src[start : start + ow]
                            for xo in range(ow):
                                acc += g[xo] * taps[xo]
                        else:
                            strided = src[start : start + span : stride]
                            for xo in range(ow):
                                acc += g[xo] * strided[xo]
                gw[o, cl, i, j] = acc
    return gw


@njit(parallel=True, cache=True)
def _max_pool2d(x, kh, kw, sh, sw, ph, pw, oh, ow, want_indices):
    n, c, h, w = x.shape
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    indices = np.empty((n, c, oh, ow) if want_indices else (0, 0, 0, 0), dtype=np.int64)
    for task in prange(n * c):
        b, ch = task // c, task % c
        for y in range(oh):
            h0 = y * sh - ph
            h_first, h_end = max(h0, 0), min(h0 + kh, h)
            for xo in range(ow):
                w0 = xo * sw - pw
                w_first, w_end = max(w0, 0), min(w0 + kw, w)
                best = -np.inf
                best_index = h_first * w + w_first
                for hy in range(h_first, h_end):
                    for wx in range(w_first, w_end):
                        v = x[b, ch, hy, wx]
                        if v > best or np.isnan(v):
                            best = v
                            best_index = hy * w + wx
                out[b, ch, y, xo] = best
                if want_indices:
                    indices[b, ch, y, xo] = best_index
    return out, indices


@njit(**_LOOPS)
def _max_pool2d_backward(gy, indices, h, w):
    n, c, oh, ow = gy.shape
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    for task in prange(n * c):
        b, ch = task // c, task % c
        plane = gx[b, ch]
        plane[:] = 0
        for y in range(oh):
            for xo in range(ow):
                index = indices[b, ch, y, xo]
                if 0 <= index < h * w:
                    plane[index // w, index % w] += gy[b, ch, y, xo]
    return gx


# =========================================================================== the calls


def _use_threads(threads: int | None) -> None:
    """Numba's thread count: fastconv's unless given, at most what Numba started with."""
    wanted = threads or get_num_threads()
    numba.set_num_threads(max(1, min(wanted, numba.config.NUMBA_NUM_THREADS)))


def _maybe_padded(x, pad):
    x = np.ascontiguousarray(x)
    return _padded(x, pad) if pad else x


def conv2d(x, w, stride=1, padding=0, groups=1, dilation=1, *, threads=None):
    """conv2d without bias, as direct loops."""
    _use_threads(threads)
    h, wd = x.shape[2:]
    r = w.shape[2]
    oh = conv_output_size(h, r, stride, padding, dilation)
    ow = conv_output_size(wd, r, stride, padding, dilation)
    return _conv2d(
        _maybe_padded(x, padding), np.ascontiguousarray(w), stride, dilation, groups, oh, ow
    )


def conv2d_input(input_shape, w, gy, stride=1, padding=0, groups=1, dilation=1, *, threads=None):
    """The input gradient, as direct loops."""
    _use_threads(threads)
    h, wd = input_shape[2:]
    return _conv2d_input(
        np.ascontiguousarray(gy),
        np.ascontiguousarray(w),
        stride,
        dilation,
        groups,
        padding,
        h,
        wd,
    )


def conv2d_weight(x, weight_shape, gy, stride=1, padding=0, groups=1, dilation=1, *, threads=None):
    """The weight gradient, as direct loops."""
    _use_threads(threads)
    r, s = weight_shape[2:]
    zero = x.dtype.type(0)
    xp = _maybe_padded(x, padding)
    return _conv2d_weight(xp, np.ascontiguousarray(gy), stride, dilation, groups, r, s, zero)


def max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False, *, threads=None):
    """Max pooling (PyTorch's rule; no dilation or ceil mode), optionally with the flat
    ``h * W + w`` indices of the maxima."""
    _use_threads(threads)
    (kh, kw), (ph, pw) = pair(kernel_size), pair(padding)
    sh, sw = pair(kernel_size if stride is None else stride)
    h, w = x.shape[2:]
    oh, ow = pool_output_size(h, kh, sh, ph), pool_output_size(w, kw, sw, pw)
    out, indices = _max_pool2d(
        np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, oh, ow, return_indices
    )
    return (out, indices) if return_indices else out


def max_pool2d_backward(grad_output, indices, input_shape, *, threads=None):
    """The input gradient of max pooling: every output gradient added at its index."""
    _use_threads(threads)
    h, w = input_shape[2:]
    return _max_pool2d_backward(
        np.ascontiguousarray(grad_output), np.ascontiguousarray(indices, dtype=np.int64), h, w
    )


def threading_layer() -> str:
    """The threading layer the loops run on (the configured one before the first run)."""
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return str(numba.config.THREADING_LAYER)


def warm_up(dtype=np.float32) -> None:
    """Compile (or load from Numba's cache) every kernel for ``dtype`` 4-D arrays, with
    and without padding, so that no timed call includes the compiler."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 5, 5)).astype(dtype)
    w = rng.standard_normal((2, 2, 3, 3)).astype(dtype)
    for pad in (0, 1):
        y = conv2d(x, w, 1, pad)
        conv2d_input(x.shape, w, y, 1, pad)
        conv2d_weight(x, w.shape, y, 1, pad)
    for want in (False, True):
        max_pool2d(x, 2, return_indices=want)
    _, indices = max_pool2d(x, 2, return_indices=True)
    max_pool2d_backward(np.ones(indices.shape, dtype), indices, x.shape)
