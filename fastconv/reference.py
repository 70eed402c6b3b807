"""NumPy reference implementation of every fastconv op: the executable spec.

Every function takes NumPy arrays and returns a new NumPy array of the input dtype
(float32 stays float32, float64 stays float64).  Layouts are NCHW; a 3-D (C, H, W) input
is a batch of one and gives a 3-D result, as in PyTorch.  Arguments are assumed valid
(``fastconv.functional`` validates them); every PyTorch argument form is accepted:
sizes, strides, paddings and dilations are an int or an (h, w) pair.

Notation used in the docstrings: ``sh, sw`` strides, ``ph, pw`` paddings, ``dh, dw``
dilations, ``R x S`` (conv) or ``kh x kw`` (pool) kernel sizes, ``G`` groups,
``Cg = C // G`` input and ``Kg = K // G`` output channels per group, ``g = k // Kg`` the
group of output channel ``k``.  Reads outside the input are zero for convolution and
average pooling and are skipped for max pooling.

The code is vectorised but follows the formulas literally: convolution is a sum over the
R*S kernel offsets of strided slices of the padded input (or a contraction over sliding
windows), pooling is a scan over the kh*kw window offsets in row-major order.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

# The window arithmetic (re-exported: part of the spec's vocabulary).
from .geometry import conv_output_size, conv_padding, pair, pool_output_size, same_padding

__all__ = [
    "BatchNormSaved",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "conv1d",
    "conv2d",
    "conv2d_input",
    "conv2d_weight",
    "conv_output_size",
    "conv_padding",
    "conv_transpose2d",
    "gemm",
    "group_norm",
    "instance_norm",
    "interpolate",
    "layer_norm",
    "linear",
    "matmul",
    "max_pool2d",
    "max_pool2d_backward",
    "pair",
    "pool_output_size",
    "same_padding",
]


def _batched(x):
    """View a 3-D (C, H, W) array as (1, C, H, W); returns (array4d, was_unbatched)."""
    x = np.asarray(x)
    return (x[None], True) if x.ndim == 3 else (x, False)


def _unbatch(y, unbatched):
    return y[0] if unbatched else y


def _strided(a, start_h, start_w, step_h, step_w, n_h, n_w):
    """``a[..., start_h + i*step_h, start_w + j*step_w]`` for i < n_h, j < n_w (a view)."""
    return a[
        ...,
        start_h : start_h + step_h * (n_h - 1) + 1 : step_h,
        start_w : start_w + step_w * (n_w - 1) + 1 : step_w,
    ]


def _windows(xp, kernel, stride, dilation, out_hw):
    """Read-only view ``win[..., i, j, r, s] = xp[..., i*sh + r*dh, j*sw + s*dw]``."""
    (R, S), (sh, sw), (dh, dw), (OH, OW) = kernel, stride, dilation, out_hw
    v = np.lib.stride_tricks.sliding_window_view(
        xp, ((R - 1) * dh + 1, (S - 1) * dw + 1), axis=(-2, -1)
    )
    return v[..., : (OH - 1) * sh + 1 : sh, : (OW - 1) * sw + 1 : sw, ::dh, ::dw]


def _pad_hw(x, pads, value=0.0):
    """Pad the last two dims by ``((top, bottom), (left, right))``; negative = crop."""
    (t, b), (l, r) = pads
    x = x[..., max(-t, 0) : x.shape[-2] - max(-b, 0), max(-l, 0) : x.shape[-1] - max(-r, 0)]
    widths = [(0, 0)] * (x.ndim - 2) + [(max(t, 0), max(b, 0)), (max(l, 0), max(r, 0))]
    return np.pad(x, widths, constant_values=value)


# --------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------


def _ieee(op):
    """Run ``op`` with IEEE arithmetic and no warnings: Inf * 0 is NaN and overflow is Inf,
    as in PyTorch (and in the kernels), which do not warn either."""

    @functools.wraps(op)
    def quiet(*args, **kwargs):
        with np.errstate(invalid="ignore", over="ignore"):
            return op(*args, **kwargs)

    return quiet


def _tensordot(a, b, axes):
    """``np.tensordot``, with IEEE products when an operand is not finite: BLAS may skip
    the products of a zero (0 * Inf would be 0 there, not NaN), so those go through
    einsum's own loops."""
    if np.isfinite(a).all() and np.isfinite(b).all():
        return np.tensordot(a, b, axes=axes)
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    a_sub = [next(letters) for _ in range(a.ndim)]
    b_sub = [next(letters) for _ in range(b.ndim)]
    for i, j in zip(*axes):
        b_sub[j] = a_sub[i]
    out = [c for i, c in enumerate(a_sub) if i not in axes[0]]
    out += [c for j, c in enumerate(b_sub) if j not in axes[1]]
    return np.einsum(f"{''.join(a_sub)},{''.join(b_sub)}->{''.join(out)}", a, b)


def _tap_reads(in_size, out_size, stride, offset):
    """The outputs ``o`` whose tap reads input ``o * stride + offset`` inside [0, in_size),
    as (output slice, input slice); both empty when the tap reads only padding."""
    first = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = min(out_size, (in_size - 1 - offset) // stride + 1) if offset < in_size else 0
    if first >= last:
        return None
    start = first * stride + offset
    return slice(first, last), slice(start, start + (last - first - 1) * stride + 1, stride)


def _taps(x_hw, out_hw, kernel, stride, dilation, pads):
    """(r, s, output rows, output cols, input rows, input cols) of every kernel tap that
    reads the input for some output: the rectangle of outputs it reads, and what it reads.
    A tap on padding contributes nothing -- it is not a zero times the weight -- so an Inf
    weight next to padding gives Inf, as in PyTorch, and padding costs nothing."""
    for r in range(kernel[0]):
        rows = _tap_reads(x_hw[0], out_hw[0], stride[0], r * dilation[0] - pads[0][0])
        for s in range(kernel[1]):
            cols = _tap_reads(x_hw[1], out_hw[1], stride[1], s * dilation[1] - pads[1][0])
            if rows is not None and cols is not None:
                yield r, s, rows[0], cols[0], rows[1], cols[1]


@_ieee
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    input (N, C, H, W), weight (K, Cg, R, S), bias (K,) or None ->
    output (N, K, OH, OW) with ``OH = conv_output_size(H, R, sh, (pt, pb), dh)``::

        out[n, k, i, j] = bias[k] + sum_{c < Cg, r < R, s < S : the tap is inside the input}
            in[n, g*Cg + c, i*sh - pt + r*dh, j*sw - pl + s*dw] * w[k, c, r, s]

    where ``(pt, pb), (pl, pr) = conv_padding(padding, (R, S), dilation)``.
    """
    x, unbatched = _batched(input)
    weight = np.asarray(weight)
    N, C, H, W = x.shape
    K, Cg, R, S = weight.shape
    stride, dilation = pair(stride), pair(dilation)
    pads = conv_padding(padding, (R, S), dilation)
    OH = conv_output_size(H, R, stride[0], pads[0], dilation[0])
    OW = conv_output_size(W, S, stride[1], pads[1], dilation[1])
    Kg = K // groups
    out = np.zeros((N, K, OH, OW), dtype=x.dtype)
    for r, s, out_rows, out_cols, in_rows, in_cols in _taps(
        (H, W), (OH, OW), (R, S), stride, dilation, pads
    ):
        for g in range(groups):
            xs = x[:, g * Cg : (g + 1) * Cg, in_rows, in_cols]  # N, Cg, h, w
            # A canonical layout: BLAS rounds differently for transposed operands, and
            # the spec must not depend on how the caller's arrays are strided.
            w_tap = np.ascontiguousarray(weight[g * Kg : (g + 1) * Kg, :, r, s])  # Kg, Cg
            y = _tensordot(w_tap, xs, axes=([1], [1]))  # Kg, N, h, w
            out[:, g * Kg : (g + 1) * Kg, out_rows, out_cols] += y.transpose(1, 0, 2, 3)
    if bias is not None:
        out += np.asarray(bias, dtype=x.dtype)[:, None, None]
    return _unbatch(out, unbatched)


@_ieee
def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of ``conv2d`` w.r.t. its input, as ``torch.nn.grad.conv2d_input``.

    ``input_size`` is (N, C, H, W) or (C, H, W); grad_output is (N, K, OH, OW).  The adjoint
    of the conv2d formula (sum over every (k, i, j, r, s) that reads input pixel (h, w))::

        gin[n, g*Cg + c, h, w] = sum_{k in group g, r, s, i, j :
                                      i*sh - pt + r*dh = h, j*sw - pl + s*dw = w}
                                 gout[n, k, i, j] * w[k, c, r, s]

    H may exceed what OH implies; input pixels that no window reads get zero gradient.
    """
    unbatched = len(input_size) == 3
    go, _ = _batched(grad_output)
    weight = np.asarray(weight)
    N, C, H, W = (1, *input_size) if unbatched else tuple(input_size)
    K, Cg, R, S = weight.shape
    _, _, OH, OW = go.shape
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    (pt, pb), (pl, pr) = conv_padding(padding, (R, S), (dh, dw))
    Kg = K // groups
    # Padded-input buffer, large enough for every window position that grad_output has.
    Hp = max(H + pt + pb, (OH - 1) * sh + (R - 1) * dh + 1)
    Wp = max(W + pl + pr, (OW - 1) * sw + (S - 1) * dw + 1)
    gxp = np.zeros((N, C, Hp, Wp), dtype=go.dtype)
    for g in range(groups):
        go_g = go[:, g * Kg : (g + 1) * Kg]  # N, Kg, OH, OW
        w_g = weight[g * Kg : (g + 1) * Kg]  # Kg, Cg, R, S
        cols = _tensordot(go_g, w_g, axes=([1], [0]))  # N, OH, OW, Cg, R, S
        cols = cols.transpose(0, 3, 4, 5, 1, 2)  # N, Cg, R, S, OH, OW
        buf = gxp[:, g * Cg : (g + 1) * Cg]
        for r in range(R):
            for s in range(S):
                _strided(buf, r * dh, s * dw, sh, sw, OH, OW)[...] += cols[:, :, r, s]
    gx = gxp[:, :, pt : pt + H, pl : pl + W]
    return _unbatch(np.ascontiguousarray(gx), unbatched)


@_ieee
def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of ``conv2d`` w.r.t. its weight, as ``torch.nn.grad.conv2d_weight``.

    ``weight_size`` is (K, Cg, R, S); a reduction over the batch and the output pixels
    whose tap reads the input (a tap on padding contributes nothing)::

        gw[k, c, r, s] = sum_{n, i < OH, j < OW : the tap is inside the input}
            gout[n, k, i, j] * in[n, g*Cg + c, i*sh - pt + r*dh, j*sw - pl + s*dw]
    """
    x, _ = _batched(input)
    go, _ = _batched(grad_output)
    K, Cg, R, S = tuple(weight_size)
    _, _, OH, OW = go.shape
    stride, dilation = pair(stride), pair(dilation)
    pads = conv_padding(padding, (R, S), dilation)
    Kg = K // groups
    gw = np.zeros((K, Cg, R, S), dtype=x.dtype)
    for r, s, out_rows, out_cols, in_rows, in_cols in _taps(
        x.shape[-2:], (OH, OW), (R, S), stride, dilation, pads
    ):
        for g in range(groups):
            go_g = go[:, g * Kg : (g + 1) * Kg, out_rows, out_cols]  # N, Kg, h, w
            xs = x[:, g * Cg : (g + 1) * Cg, in_rows, in_cols]  # N, Cg, h, w
            gw[g * Kg : (g + 1) * Kg, :, r, s] = _tensordot(go_g, xs, axes=([0, 2, 3], [0, 2, 3]))
    return gw


# --------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------


def _pool_args(kernel_size, stride, padding, dilation=1):
    kernel = pair(kernel_size)
    if stride is None or (not isinstance(stride, (int, np.integer)) and len(stride) == 0):
        stride = kernel
    return kernel, pair(stride), pair(padding), pair(dilation)


def _pool_geometry(H, W, kernel, stride, padding, dilation, ceil_mode):
    """Output size and the (top, bottom), (left, right) padding that covers every window."""
    out, pads = [], []
    for size, k, s, p, d in zip((H, W), kernel, stride, padding, dilation):
        o = pool_output_size(size, k, s, p, d, ceil_mode)
        out.append(o)
        pads.append((p, (o - 1) * s + (k - 1) * d + 1 - size - p))  # after may be < 0: crop
    return tuple(out), tuple(pads)


def max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d`` (PyTorch's CPU rule, exactly).

    Window of output (i, j): rows ``h = i*sh - ph + r*dh`` (r < kh), cols
    ``w = j*sw - pw + s*dw`` (s < kw); positions outside [0, H) x [0, W) are skipped.
    The window is scanned row-major starting from ``best = -inf``, and an element is taken
    when ``v > best or isnan(v)``.  Hence: the first maximum wins ties, a NaN anywhere in
    the window gives NaN (the *last* NaN in scan order supplies the index), and an all -inf
    window gives -inf with the index of its first in-bounds element.  PyTorch initialises
    the index as ``h0*W + w0`` with ``h0, w0`` the first in-bounds row/col at or after
    the window start (reached in steps of the dilation); that value is kept even when the
    window has no in-bounds element at all.

    indices: int64 flat index ``h*W + w`` into each (H, W) plane.
    """
    x, unbatched = _batched(input)
    N, C, H, W = x.shape
    kernel, stride, padding, dilation = _pool_args(kernel_size, stride, padding, dilation)
    (OH, OW), pads = _pool_geometry(H, W, kernel, stride, padding, dilation, ceil_mode)
    xp = _pad_hw(x, pads, value=-np.inf)
    flat = _pad_hw(np.arange(H * W, dtype=np.int64).reshape(H, W), pads, value=-1)

    # Initial index: first in-bounds row/col of each window (PyTorch's h0*W + w0).
    first = []
    for n_out, s, p, d in zip((OH, OW), stride, padding, dilation):
        start = np.arange(n_out, dtype=np.int64) * s - p
        first.append(np.where(start < 0, start + (-start + d - 1) // d * d, start))
    best_idx = np.broadcast_to(first[0][:, None] * W + first[1][None, :], (N, C, OH, OW))
    best = np.full((N, C, OH, OW), -np.inf, dtype=x.dtype)

    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    for r in range(kh):
        for s in range(kw):
            v = _strided(xp, r * dh, s * dw, sh, sw, OH, OW)
            idx = _strided(flat, r * dh, s * dw, sh, sw, OH, OW)
            take = (idx >= 0) & ((v > best) | np.isnan(v))
            best = np.where(take, v, best)
            best_idx = np.where(take, idx, best_idx)
    out = _unbatch(best, unbatched)
    if return_indices:
        return out, _unbatch(np.ascontiguousarray(best_idx, dtype=np.int64), unbatched)
    return out


def max_pool2d_backward(grad_output, indices, input_size):
    """Gradient of ``max_pool2d`` w.r.t. its input: scatter-add into zeros of input_size.

    ``gin[n, c].flat[indices[n, c, i, j]] += gout[n, c, i, j]`` (repeated indices add up).
    Indices outside [0, H*W) (only possible for a window with no in-bounds element) are
    ignored.
    """
    unbatched = len(input_size) == 3
    go, _ = _batched(grad_output)
    idx, _ = _batched(indices)
    N, C, H, W = (1, *input_size) if unbatched else tuple(input_size)
    gin = np.zeros((N * C, H * W), dtype=go.dtype)
    planes = np.arange(N * C).reshape(N, C, 1, 1)
    ok = (idx >= 0) & (idx < H * W)
    np.add.at(gin, (np.broadcast_to(planes, idx.shape)[ok], idx[ok]), go[ok])
    return _unbatch(gin.reshape(N, C, H, W), unbatched)


def _avg_divisor(H, W, out_hw, kernel, stride, padding, count_include_pad, divisor_override):
    """Per-output divisor (OH, OW), PyTorch's rule; 0 marks a window with no input pixel.

    Per dim: ``start = i*s - p``, ``end = min(start + k, size + p)``; the padded pool size
    is ``(end - start)`` (window clipped to [-p, size + p)); the valid count uses the window
    clipped to [0, size).  divisor = divisor_override, else padded pool size if
    count_include_pad, else the valid count.
    """
    padded, valid = [], []
    for n_out, size, k, s, p in zip(out_hw, (H, W), kernel, stride, padding):
        start = np.arange(n_out, dtype=np.int64) * s - p
        end = np.minimum(start + k, size + p)
        padded.append(end - start)
        valid.append(np.minimum(end, size) - np.maximum(start, 0))
    n_valid = np.outer(valid[0], valid[1])
    empty = (valid[0][:, None] <= 0) | (valid[1][None, :] <= 0)
    if divisor_override is not None:
        div = np.full(n_valid.shape, int(divisor_override), dtype=np.int64)
    elif count_include_pad:
        div = np.outer(padded[0], padded[1])
    else:
        div = n_valid
    return np.where(empty, 0, div)


def avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``::

        out[n, c, i, j] = (1 / divisor[i, j]) * sum_{r < kh, s < kw, (h, w) in bounds}
                          in[n, c, h = i*sh - ph + r, w = j*sw - pw + s]

    with the divisor of ``_avg_divisor``; a window with no in-bounds pixel gives 0.
    The sum runs over the window row-major, like PyTorch's CPU kernel.
    """
    x, unbatched = _batched(input)
    N, C, H, W = x.shape
    kernel, stride, padding, _ = _pool_args(kernel_size, stride, padding)
    (OH, OW), pads = _pool_geometry(H, W, kernel, stride, padding, (1, 1), ceil_mode)
    xp = _pad_hw(x, pads, value=0.0)
    total = np.zeros((N, C, OH, OW), dtype=x.dtype)
    for r in range(kernel[0]):
        for s in range(kernel[1]):
            total += _strided(xp, r, s, stride[0], stride[1], OH, OW)
    div = _avg_divisor(H, W, (OH, OW), kernel, stride, padding, count_include_pad, divisor_override)
    out = np.divide(total, div.astype(x.dtype), out=np.zeros_like(total), where=div != 0)
    return _unbatch(out, unbatched)


def avg_pool2d_backward(
    grad_output,
    input_size,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    """Gradient of ``avg_pool2d`` w.r.t. its input.

    The adjoint of the forward sum, with the same per-output divisor::

        gin[n, c, h, w] = sum_{(i, j) whose window contains (h, w)}
                          gout[n, c, i, j] / divisor[i, j]

    ``ceil_mode`` only decides the output size, which is read from grad_output here.
    """
    unbatched = len(input_size) == 3
    go, _ = _batched(grad_output)
    N, C, H, W = (1, *input_size) if unbatched else tuple(input_size)
    kernel, stride, padding, _ = _pool_args(kernel_size, stride, padding)
    _, _, OH, OW = go.shape
    div = _avg_divisor(H, W, (OH, OW), kernel, stride, padding, count_include_pad, divisor_override)
    delta = np.divide(go, div.astype(go.dtype), out=np.zeros_like(go), where=div != 0)
    # Gradient w.r.t. the padded input, then crop the padding away.
    (pt, pl), (sh, sw) = padding, stride
    Hp = max(pt + H, (OH - 1) * sh + kernel[0])
    Wp = max(pl + W, (OW - 1) * sw + kernel[1])
    gp = np.zeros((N, C, Hp, Wp), dtype=go.dtype)
    for r in range(kernel[0]):
        for s in range(kernel[1]):
            _strided(gp, r, s, sh, sw, OH, OW)[...] += delta
    return _unbatch(np.ascontiguousarray(gp[:, :, pt : pt + H, pl : pl + W]), unbatched)


# --------------------------------------------------------------------------------------
# Matrix products
# --------------------------------------------------------------------------------------


def gemm(a, b, c=None, *, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """General matrix multiply: ``alpha * op(a) @ op(b) + beta * c`` as a new array.

    ``op(x) = x.T`` if the matching ``trans_*`` flag is set.  When ``beta == 0`` (or c is
    None) c is not read at all, so NaN/inf in c do not propagate (BLAS and torch.addmm rule).
    """
    a, b = np.asarray(a), np.asarray(b)
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    out = np.matmul(opa, opb)
    if alpha != 1:
        out *= out.dtype.type(alpha)
    if c is not None and beta != 0:
        out += out.dtype.type(beta) * np.asarray(c, dtype=out.dtype)
    return out


def matmul(a, b):
    """Plain 2-D matrix product: ``out[i, j] = sum_k a[i, k] * b[k, j]``."""
    return np.matmul(np.asarray(a), np.asarray(b))


def linear(input, weight, bias=None):
    """``torch.nn.functional.linear``: ``out[..., o] = sum_i in[..., i] * w[o, i] + bias[o]``.

    input is (in_features,) or (..., in_features); weight is (out_features, in_features).
    """
    x, weight = np.asarray(input), np.asarray(weight)
    out = np.matmul(x, weight.T)
    if bias is not None:
        out = out + np.asarray(bias, dtype=out.dtype)
    return out


# --------------------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------------------


class BatchNormSaved(NamedTuple):
    """What batch_norm keeps for its backward pass (``return_saved=True``)."""

    xhat: np.ndarray  # the normalised input, (N, C, S) with S = H*W (or 1)
    invstd: np.ndarray  # 1 / sqrt(var + eps) per channel
    batch_statistics: bool  # normalised by the batch's statistics (True) or running ones


def batch_norm(
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    *,
    return_saved=False,
):
    """Batch normalisation over N and the spatial dims (torch.nn.functional.batch_norm).

    ``input`` is (N, C, ...). With ``training`` (or without running statistics) each
    channel is normalised by the batch's mean and biased variance, and the running
    statistics, when given, move in place toward the batch's:
    ``running = (1 - momentum) * running + momentum * batch`` (the unbiased variance).
    Otherwise the running statistics normalise. Then ``out = xhat * weight + bias``.
    """
    x = np.asarray(input)
    n, c = x.shape[:2]
    rows = x.reshape(n, c, -1).astype(np.float64)
    batch_statistics = training or running_mean is None
    if batch_statistics:
        mean = rows.mean(axis=(0, 2))
        var = ((rows - mean[None, :, None]) ** 2).mean(axis=(0, 2))
        if training and running_mean is not None:
            count = rows.shape[0] * rows.shape[2]
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * count / (count - 1)
    else:
        mean = np.asarray(running_mean, np.float64)
        var = np.asarray(running_var, np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (rows - mean[None, :, None]) * invstd[None, :, None]
    out = xhat
    if weight is not None:
        out = out * np.asarray(weight, np.float64)[None, :, None]
    if bias is not None:
        out = out + np.asarray(bias, np.float64)[None, :, None]
    out = out.astype(x.dtype).reshape(x.shape)
    if not return_saved:
        return out
    return out, BatchNormSaved(xhat.astype(x.dtype), invstd.astype(x.dtype), batch_statistics)


def batch_norm_backward(grad_output, saved, weight=None, *, input_grad=True):
    """Gradients of batch_norm: ``(grad_input, grad_weight, grad_bias)``.

    ``grad_bias = sum g`` and ``grad_weight = sum g * xhat`` over N and the spatial dims;
    ``grad_input = (g - mean(g) - xhat * mean(g * xhat)) * weight * invstd`` with batch
    statistics, ``g * weight * invstd`` with running ones. ``grad_input`` is None unless
    ``input_grad``.
    """
    xhat = saved.xhat.astype(np.float64)
    g = np.asarray(grad_output).reshape(xhat.shape).astype(np.float64)
    grad_bias = g.sum(axis=(0, 2))
    grad_weight = (g * xhat).sum(axis=(0, 2))
    grad_input = None
    if input_grad:
        scale = saved.invstd.astype(np.float64)
        if weight is not None:
            scale = scale * np.asarray(weight, np.float64)
        if saved.batch_statistics:
            g = (
                g
                - g.mean(axis=(0, 2))[None, :, None]
                - xhat * (g * xhat).mean(axis=(0, 2))[None, :, None]
            )
        grad_input = (g * scale[None, :, None]).astype(saved.xhat.dtype)
        grad_input = grad_input.reshape(np.shape(grad_output))
    dtype = saved.xhat.dtype
    return grad_input, grad_weight.astype(dtype), grad_bias.astype(dtype)


# --------------------------------------------------------------------------------------
# Transposed and 1-D convolution
# --------------------------------------------------------------------------------------


@_ieee
def conv_transpose2d(
    input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    """2-D transposed convolution, as ``torch.nn.functional.conv_transpose2d``.

    input (N, C, H, W), weight (C, Kg, R, S), bias (K,) with ``K = Kg * G`` -> output
    (N, K, OH, OW), ``OH = (H - 1)*sh - 2*ph + dh*(R - 1) + oph + 1``. Every input pixel
    spreads over the kernel's taps (the adjoint of conv2d's gather)::

        out[n, g*Kg + k, i*sh - ph + r*dh, j*sw - pw + s*dw] +=
            in[n, g*Cg + c, i, j] * w[g*Cg + c, k, r, s]

    summed over every (c, i, j, r, s) whose target lies inside the output.
    """
    x, unbatched = _batched(input)
    weight = np.asarray(weight)
    N, C, H, W = x.shape
    _, Kg, R, S = weight.shape
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = (
        pair(stride),
        pair(padding),
        pair(output_padding),
        pair(dilation),
    )
    OH = (H - 1) * sh - 2 * ph + dh * (R - 1) + oph + 1
    OW = (W - 1) * sw - 2 * pw + dw * (S - 1) + opw + 1
    Cg = C // groups
    out = np.zeros((N, Kg * groups, OH, OW), dtype=x.dtype)
    for r in range(R):
        # the input rows i whose target row i*sh - ph + r*dh lies in [0, OH)
        rows = _tap_reads(OH, H, sh, r * dh - ph)
        for s in range(S):
            cols = _tap_reads(OW, W, sw, s * dw - pw)
            if rows is None or cols is None:
                continue
            (in_rows, out_rows), (in_cols, out_cols) = rows, cols
            for g in range(groups):
                xs = x[:, g * Cg : (g + 1) * Cg, in_rows, in_cols]  # N, Cg, h, w
                w_tap = np.ascontiguousarray(weight[g * Cg : (g + 1) * Cg, :, r, s])  # Cg, Kg
                y = _tensordot(w_tap, xs, axes=([0], [1]))  # Kg, N, h, w
                out[:, g * Kg : (g + 1) * Kg, out_rows, out_cols] += y.transpose(1, 0, 2, 3)
    if bias is not None:
        out += np.asarray(bias, dtype=x.dtype)[:, None, None]
    return _unbatch(out, unbatched)


@_ieee
def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D cross-correlation, as ``torch.nn.functional.conv1d``.

    input (N, C, L) or (C, L), weight (K, Cg, T), bias (K,) -> output (N, K, OL) with
    ``OL = conv_output_size(L, T, stride, (pl, pr), dilation)``::

        out[n, k, i] = bias[k] + sum_{c < Cg, t < T : the tap is inside the input}
            in[n, g*Cg + c, i*stride - pl + t*dilation] * w[k, c, t]

    ``padding`` is an int, a 1-tuple, 'valid' or 'same' (the odd pixel goes right).
    """
    x = np.asarray(input)
    unbatched = x.ndim == 2
    x = x[None] if unbatched else x
    weight = np.asarray(weight)
    N, C, L = x.shape
    K, Cg, T = weight.shape
    stride, dilation = _one(stride), _one(dilation)
    if isinstance(padding, str):
        (_, _), (pl, pr) = conv_padding(padding, (1, T), (1, dilation))
    else:
        pl = pr = _one(padding)
    OL = conv_output_size(L, T, stride, (pl, pr), dilation)
    Kg = K // groups
    out = np.zeros((N, K, OL), dtype=x.dtype)
    for t in range(T):
        reads = _tap_reads(L, OL, stride, t * dilation - pl)
        if reads is None:
            continue
        out_cols, in_cols = reads
        for g in range(groups):
            xs = x[:, g * Cg : (g + 1) * Cg, in_cols]  # N, Cg, l
            w_tap = np.ascontiguousarray(weight[g * Kg : (g + 1) * Kg, :, t])  # Kg, Cg
            out[:, g * Kg : (g + 1) * Kg, out_cols] += _tensordot(
                w_tap, xs, axes=([1], [1])
            ).transpose(1, 0, 2)
    if bias is not None:
        out += np.asarray(bias, dtype=x.dtype)[:, None]
    return out[0] if unbatched else out


def _one(value):
    """An int or a 1-sequence of ints, as an int."""
    return int(value[0]) if isinstance(value, (tuple, list)) else int(value)


# --------------------------------------------------------------------------------------
# Group, layer and instance normalisation
# --------------------------------------------------------------------------------------


def _standardize(values, axes, eps):
    """(values - mean) / sqrt(var + eps) over ``axes``, in float64 (biased variance)."""
    mean = values.mean(axis=axes, keepdims=True)
    var = ((values - mean) ** 2).mean(axis=axes, keepdims=True)
    return (values - mean) / np.sqrt(var + eps)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Group normalisation, as ``torch.nn.functional.group_norm``: input (N, C, *).

    Each sample's channels fall into ``num_groups`` groups of C / num_groups; each group
    (its channels and spatial positions together) is standardised by its own mean and
    biased variance, then ``out[:, c] = xhat[:, c] * weight[c] + bias[c]``.
    """
    x = np.asarray(input)
    n, c = x.shape[:2]
    groups = x.reshape(n, num_groups, -1).astype(np.float64)
    xhat = _standardize(groups, axes=2, eps=eps).reshape(n, c, -1)
    if weight is not None:
        xhat = xhat * np.asarray(weight, np.float64)[:, None]
    if bias is not None:
        xhat = xhat + np.asarray(bias, np.float64)[:, None]
    return xhat.reshape(x.shape).astype(x.dtype)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalisation, as ``torch.nn.functional.layer_norm``.

    The trailing dims ``normalized_shape`` of each sample are standardised together
    (mean and biased variance), then ``out = xhat * weight + bias`` elementwise, with
    weight and bias of shape ``normalized_shape``.
    """
    x = np.asarray(input)
    shape = (
        tuple(normalized_shape)
        if isinstance(normalized_shape, (tuple, list))
        else (normalized_shape,)
    )
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    out = _standardize(x.astype(np.float64), axes=axes, eps=eps)
    if weight is not None:
        out = out * np.asarray(weight, np.float64)
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return out.astype(x.dtype)


def instance_norm(
    input,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    """Instance normalisation, as ``torch.nn.functional.instance_norm``: input (N, C, *).

    With ``use_input_stats`` each sample's channel is standardised by its own mean and
    biased variance; running statistics, when given, move in place toward the samples'
    average: ``running_mean = (1 - momentum) * running_mean + momentum * mean_n(mean)``
    and likewise the variance with each sample's unbiased variance. Otherwise the running
    statistics standardise. Then ``out[:, c] = xhat[:, c] * weight[c] + bias[c]``.
    """
    x = np.asarray(input)
    n, c = x.shape[:2]
    rows = x.reshape(n, c, -1).astype(np.float64)
    if use_input_stats:
        xhat = _standardize(rows, axes=2, eps=eps)
        if running_mean is not None:
            count = rows.shape[2]
            mean = rows.mean(axis=2).mean(axis=0)
            var = rows.var(axis=2).mean(axis=0) * count / (count - 1)
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var
    else:
        mean = np.asarray(running_mean, np.float64)[:, None]
        var = np.asarray(running_var, np.float64)[:, None]
        xhat = (rows - mean) / np.sqrt(var + eps)
    if weight is not None:
        xhat = xhat * np.asarray(weight, np.float64)[:, None]
    if bias is not None:
        xhat = xhat + np.asarray(bias, np.float64)[:, None]
    return xhat.reshape(x.shape).astype(x.dtype)


# --------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------


def _source(out_size, in_size, scale, mode, align_corners):
    """Along one axis: the float source coordinate of each output index, as PyTorch's CPU
    kernels compute it (nearest modes in float32, whatever the dtype)."""
    dst = np.arange(out_size)
    if mode.startswith("nearest"):
        f32 = np.float32
        ratio = f32(1.0 / scale) if scale is not None else f32(in_size) / f32(out_size)
        offset = f32(0.5) if mode == "nearest-exact" else f32(0)
        return (dst.astype(f32) + offset) * ratio
    if align_corners:
        ratio = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        return ratio * dst
    ratio = 1.0 / scale if scale is not None else in_size / out_size
    return np.maximum(ratio * (dst + 0.5) - 0.5, 0.0)


def interpolate(
    input,
    size=None,
    scale_factor=None,
    mode="nearest",
    align_corners=None,
    recompute_scale_factor=None,
):
    """Resampling, as ``torch.nn.functional.interpolate``, for (N, C, L) and (N, C, H, W).

    Output size: ``size``, or ``floor(in * scale_factor)`` per spatial dim. Along each
    spatial dim, output index j reads the source coordinate ``src(j)``:

    - ``nearest``: ``floor(j * ratio)``, ``nearest-exact``: ``floor((j + 0.5) * ratio)``
      (clamped to in - 1), ``ratio = 1 / scale_factor`` when a scale factor is given (and
      not recomputed), else ``in / out``; an output twice the input reads ``j // 2`` and
      one as large as the input reads ``j``;
    - ``linear`` / ``bilinear``: ``src = j * (in - 1) / (out - 1)`` with ``align_corners``,
      else ``max((j + 0.5) * ratio - 0.5, 0)``; the output is ``(1 - f) * x[floor(src)] +
      f * x[floor(src) + 1]`` with ``f = src - floor(src)`` (the last index repeats at
      the edge); bilinear interpolates along the width, then along the height.
    """
    x = np.asarray(input)
    spatial = x.shape[2:]
    if size is not None:
        out = tuple(size) if isinstance(size, (tuple, list)) else (size,) * len(spatial)
        scales = (None,) * len(spatial)
    else:
        factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,)
        factors = tuple(factors) * len(spatial) if len(factors) == 1 else tuple(factors)
        out = tuple(int(np.floor(n * float(f))) for n, f in zip(spatial, factors))
        scales = (None,) * len(spatial) if recompute_scale_factor else factors
    result = x
    for axis in range(x.ndim - 1, 1, -1):  # width first
        n_in, n_out, scale = spatial[axis - 2], out[axis - 2], scales[axis - 2]
        if mode.startswith("nearest"):
            if mode == "nearest" and n_out in (n_in, 2 * n_in):
                src = np.arange(n_out) * n_in // n_out
            else:
                src = np.floor(_source(n_out, n_in, scale, mode, False)).astype(np.int64)
            result = np.take(result, np.minimum(src, n_in - 1), axis=axis)
            continue
        if n_out == n_in:
            continue
        src = _source(n_out, n_in, scale, mode, bool(align_corners)).astype(x.dtype)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = np.clip(src - lo, 0, 1).astype(x.dtype)
        shape = [1] * x.ndim
        shape[axis] = n_out
        frac = frac.reshape(shape)
        result = (1 - frac) * np.take(result, lo, axis=axis) + frac * np.take(result, hi, axis=axis)
    return np.ascontiguousarray(result, dtype=x.dtype)
