"""The public functional API: normalise and validate once, then dispatch.

Every op follows the same three steps:
1. validate and normalise the arguments (``_checks``, ``geometry``), shared by
   every backend;
2. pick the backend from the array kind: NumPy arrays run the C++ kernels through
   ``fastconv._cpu``; CUDA device arrays run ``fastconv.cuda``;
3. return an array of the same kind as the input.

Names, argument order, defaults and semantics follow ``torch.nn.functional``
and ``torch.nn.grad``. Inputs are NCHW; a 3-D (C, H, W) input is a batch of one
and gives a 3-D result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _checks as chk
from . import _cpu, autotune
from .geometry import ConvGeometry, PoolWindow, conv_padding
from .reference import BatchNormSaved

__all__ = [
    "CONV2D_ALGORITHMS",
    "CONV2D_INPUT_ALGORITHMS",
    "CONV2D_WEIGHT_ALGORITHMS",
    "BatchNormSaved",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "conv2d",
    "conv2d_algorithm",
    "conv2d_bias_grad",
    "conv2d_input",
    "conv2d_input_algorithm",
    "conv2d_weight",
    "conv2d_weight_algorithm",
    "gemm",
    "get_num_threads",
    "last_algorithms",
    "linear",
    "matmul",
    "max_pool2d",
    "max_pool2d_backward",
    "set_num_threads",
]


def set_num_threads(n: int) -> None:
    """Threads used by the CPU kernels (process-wide; default: OpenMP's default)."""
    _cpu.set_num_threads(chk.positive_int(n, "n"))


def get_num_threads() -> int:
    return _cpu.get_num_threads()


def last_algorithms() -> dict[str, str]:
    """What the calling thread's last CPU call of each conv op ran, by op name
    ('conv2d', 'conv2d_input', 'conv2d_weight'), e.g. ``{'conv2d': 'winograd'}``."""
    return _cpu.last_algorithms()


def _cuda_backend():
    from . import cuda

    return cuda


def _on_device(*arrays: Any) -> bool:
    """Which backend: all tensors must live on the same side."""
    kinds = {chk.is_device_array(a) for a in arrays if a is not None}
    if len(kinds) > 1:
        raise TypeError("arguments mix CUDA device arrays and host arrays; move them to one side")
    return kinds == {True}


def _batched(x: Any) -> tuple[Any, bool]:
    """A 4-D view of an NCHW or CHW array, and whether it was unbatched."""
    if x.ndim == 3:
        if chk.is_device_array(x):
            # a strided Numba device array cannot be reshaped in place
            return _cuda_backend().add_batch_dim(x), True
        return x.reshape((1, *x.shape)), True
    return x, False


# --------------------------------------------------------------------------- pooling


def _pool_window(kernel_size, stride, padding, dilation, ceil_mode) -> PoolWindow:
    kernel = chk.positive_pair(kernel_size, "kernel_size")
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        strides = kernel
    else:
        strides = chk.positive_pair(stride, "stride")
    pads = chk.non_negative_pair(padding, "padding")
    dilations = chk.positive_pair(dilation, "dilation")
    if kernel[0] * kernel[1] > chk.INT32_MAX:
        raise ValueError(f"kernel_size {kernel_size!r} has more than 2**31 - 1 elements")
    # PyTorch's rule compares with the kernel size itself, not the dilated extent.
    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        raise ValueError(f"padding {padding!r} must be at most half of kernel_size {kernel_size!r}")
    return PoolWindow(kernel, strides, pads, dilations, bool(ceil_mode))


def _pool_input(input: Any, name: str = "input") -> tuple[Any, bool, bool]:
    device = _on_device(input)
    chk.check_array(input, name, device=device)
    chk.check_ndim(input, name, (3, 4), "(N, C, H, W) or (C, H, W)")
    if min(input.shape[-3:]) == 0:
        raise ValueError(f"{name} must have non-zero C, H and W, got shape {tuple(input.shape)}")
    return input, device, input.ndim == 3


def _pool_output_hw(window: PoolWindow, shape: tuple[int, ...], name: str) -> tuple[int, int]:
    shape = tuple(shape)  # the CUDA simulator's shapes refuse negative indices
    out_h, out_w = window.output_size(shape[-2], shape[-1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{name} of spatial size {tuple(shape[-2:])} is too small for this pooling window: "
            f"output size would be ({out_h}, {out_w})"
        )
    return out_h, out_w


def _divisor(divisor_override: Any) -> int:
    if divisor_override is None:
        return 0
    value = chk.as_int(divisor_override, "divisor_override")
    if value == 0:
        raise ValueError("divisor_override must be non-zero")
    return value


def max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    """2-D max pooling (torch.nn.functional.max_pool2d).

    A NaN in a window wins; an all -inf window gives -inf. Indices (int64) are
    flat positions h * W + w inside each input plane, as PyTorch returns them.
    """
    out = _cpu.max_pool2d_plain(
        input, kernel_size, stride, padding, dilation, ceil_mode, return_indices
    )
    if out is not None:
        return out
    input, device, unbatched = _pool_input(input)
    window = _pool_window(kernel_size, stride, padding, dilation, ceil_mode)
    out_h, out_w = _pool_output_hw(window, input.shape, "input")
    x, _ = _batched(input)
    if device:
        out, indices = _cuda_backend().max_pool2d(x, window, (out_h, out_w))
    else:
        out, indices = _cpu.max_pool2d(x, window, (out_h, out_w), bool(return_indices))
    if unbatched:
        out = out[0]
        indices = None if indices is None else indices[0]
    return (out, indices) if return_indices else out


def max_pool2d_backward(grad_output, indices, input_size):
    """Gradient of max_pool2d wrt its input: grad_output scattered to ``indices``.

    Indices are checked to lie inside the input planes: they address memory.
    """
    device = _on_device(grad_output, indices)
    chk.check_array(grad_output, "grad_output", device=device)
    chk.check_ndim(grad_output, "grad_output", (3, 4), "(N, C, H, W) or (C, H, W)")
    size = chk.size_tuple(input_size, "input_size", (grad_output.ndim,))
    if tuple(grad_output.shape[:-2]) != size[:-2]:
        raise ValueError(
            f"grad_output has shape {tuple(grad_output.shape)}, whose leading (N, C) "
            f"dims do not match input_size {size}"
        )
    if device:
        if np.dtype(indices.dtype) != np.int64:
            raise TypeError(f"indices must have dtype int64, got {indices.dtype}")
    else:
        if not isinstance(indices, np.ndarray):
            raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
        # The range check below reads through a mask; the kernel writes to the raw values.
        chk.check_not_masked(indices, "indices")
        if indices.dtype != np.int64:
            raise TypeError(f"indices must have dtype int64, got {indices.dtype}")
    chk.check_shape(indices, tuple(grad_output.shape), "indices")
    plane = size[-1] * size[-2]
    g, unbatched = _batched(grad_output)
    idx, _ = _batched(indices)
    if device:
        result = _cuda_backend().max_pool2d_backward(g, idx, (g.shape[0], *size[-3:]))
        return result[0] if unbatched else result
    if idx.size:
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= plane:
            raise ValueError(
                f"indices must lie in [0, {plane}) (flat positions in an input plane of size "
                f"{size[-2:]}), got values in [{low}, {high}]"
            )
    grad_input = _cpu.max_pool2d_backward(g, idx, (*g.shape[:2], *size[-2:]))
    return grad_input[0] if unbatched else grad_input


def _avg_window(kernel_size, stride, padding, ceil_mode):
    return _pool_window(kernel_size, stride, padding, 1, ceil_mode)


def avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    """2-D average pooling (torch.nn.functional.avg_pool2d)."""
    input, device, unbatched = _pool_input(input)
    window = _avg_window(kernel_size, stride, padding, ceil_mode)
    divisor = _divisor(divisor_override)
    out_h, out_w = _pool_output_hw(window, input.shape, "input")
    x, _ = _batched(input)
    if device:
        out = _cuda_backend().avg_pool2d(
            x, window, (out_h, out_w), bool(count_include_pad), divisor
        )
    else:
        out = _cpu.avg_pool2d(x, window, (out_h, out_w), bool(count_include_pad), divisor)
    return out[0] if unbatched else out


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
    """Gradient of avg_pool2d wrt its input."""
    device = _on_device(grad_output)
    chk.check_array(grad_output, "grad_output", device=device)
    chk.check_ndim(grad_output, "grad_output", (3, 4), "(N, C, H, W) or (C, H, W)")
    size = chk.size_tuple(input_size, "input_size", (grad_output.ndim,))
    if min(size[-3:]) == 0:
        raise ValueError(f"input_size must have non-zero C, H and W, got {size}")
    window = _avg_window(kernel_size, stride, padding, ceil_mode)
    divisor = _divisor(divisor_override)
    out_hw = _pool_output_hw(window, size, "input_size")
    chk.check_shape(grad_output, (*size[:-2], *out_hw), "grad_output")
    g, unbatched = _batched(grad_output)
    n, c = g.shape[:2]
    h, w = size[-2:]
    if device:
        result = _cuda_backend().avg_pool2d_backward(
            g, (n, c, h, w), window, bool(count_include_pad), divisor
        )
        return result[0] if unbatched else result
    grad_input = _cpu.avg_pool2d_backward(g, (n, c, h, w), window, bool(count_include_pad), divisor)
    return grad_input[0] if unbatched else grad_input


# --------------------------------------------------------------------------- convolution


def _conv_geometry(weight_shape, stride, padding, dilation, groups) -> ConvGeometry:
    strides = chk.positive_pair(stride, "stride")
    dilations = chk.positive_pair(dilation, "dilation")
    groups = chk.positive_int(groups, "groups")
    kernel = tuple(weight_shape[-2:])
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        if padding == "same" and strides != (1, 1):
            raise ValueError(
                "padding='same' is not supported for strided convolutions (stride > 1)"
            )
        (top, bottom), (left, right) = conv_padding(padding, kernel, dilations)
    else:
        ph, pw = chk.non_negative_pair(padding, "padding")
        top, bottom, left, right = ph, ph, pw, pw
    return ConvGeometry(strides, (top, bottom, left, right), dilations, groups)


def _check_conv_shapes(
    input_shape, weight_shape, geometry: ConvGeometry, input_name: str, weight_name: str
) -> tuple[int, int]:
    """Channel/group consistency and a positive output size; returns (out_h, out_w)."""
    c_in, h, w = input_shape[-3:]
    c_out, c_per_group, kh, kw = weight_shape
    g = geometry.groups
    if c_in % g != 0:
        raise ValueError(f"groups={g} must divide the {input_name} channels ({c_in})")
    if c_out % g != 0:
        raise ValueError(f"groups={g} must divide the {weight_name} out_channels ({c_out})")
    if c_per_group * g != c_in:
        raise ValueError(
            f"{weight_name} expects {c_per_group * g} input channels "
            f"({c_per_group} per group x groups={g}), but {input_name} has {c_in}"
        )
    if min(kh, kw) <= 0 or c_out == 0:
        raise ValueError(f"{weight_name} must have non-zero sizes, got {tuple(weight_shape)}")
    out_h, out_w = geometry.output_size(h, w, (kh, kw))
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{input_name} of spatial size {(h, w)} (padded by {geometry.padding}) is smaller "
            f"than the dilated kernel: output size would be ({out_h}, {out_w})"
        )
    return out_h, out_w


def _check_bias(bias, size: int, what: str, device: bool) -> None:
    if bias is None:
        return
    chk.check_array(bias, "bias", device=device)
    if bias.ndim != 1 or bias.shape[0] != size:
        raise ValueError(
            f"bias must be 1-D with {size} entries ({what}), got shape {tuple(bias.shape)}"
        )


def _check_weight(weight, name="weight", device=False):
    chk.check_array(weight, name, device=device)
    chk.check_ndim(weight, name, (4,), "(out_channels, in_channels/groups, kH, kW)")
    return weight


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm=None):
    """2-D cross-correlation (torch.nn.functional.conv2d).

    ``algorithm`` (keyword-only, CPU) forces one of ``CONV2D_ALGORITHMS`` instead of
    the one ``conv2d_algorithm`` selects; 'pointwise_gemm' accepts only 1x1,
    stride-1, unpadded convolutions.

    out[n, k, i, j] = bias[k] + sum_{c, r, s} input[n, g*Cg + c, i*sh - pt + r*dh, j*sw - pl + s*dw]
                                              * weight[k, c, r, s],   g = k // (K / groups)
    """
    if algorithm is None and not autotune.is_enabled():
        out = _cpu.conv2d_plain(input, weight, bias, stride, padding, dilation, groups)
        if out is not None:
            return out
    device = _on_device(input, weight, bias)
    chk.check_array(input, "input", device=device)
    chk.check_ndim(input, "input", (3, 4), "(N, C, H, W) or (C, H, W)")
    _check_weight(weight, device=device)
    _check_bias(bias, weight.shape[0], "out_channels", device)
    chk.check_same_dtype(input=input, weight=weight, bias=bias)
    geometry = _conv_geometry(weight.shape, stride, padding, dilation, groups)
    out_h, out_w = _check_conv_shapes(input.shape, weight.shape, geometry, "input", "weight")
    _check_algorithm(algorithm, device)
    x, unbatched = _batched(input)
    if device:
        out = _cuda_backend().conv2d(x, weight, bias, geometry)
    elif x.shape[0] == 0:
        out = np.empty((0, weight.shape[0], out_h, out_w), dtype=x.dtype)
    else:
        if algorithm is None and autotune.is_enabled():
            x, weight = _cpu.contiguous(x), _cpu.contiguous(weight)
            algorithm = autotune.forward(x, weight, bias, geometry, (out_h, out_w))
        out = _cpu.conv2d(x, weight, bias, geometry, (out_h, out_w), algorithm)
    return out[0] if unbatched else out


def conv2d_input(
    input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *, algorithm=None
):
    """Gradient of conv2d wrt its input (torch.nn.grad.conv2d_input).

    ``algorithm`` (keyword-only, CPU) forces one of ``CONV2D_INPUT_ALGORITHMS``, the
    names ``conv2d_input_algorithm`` reports; "X (transposed)" runs forward
    algorithm X on the flipped problem (stride 1 only).
    """
    device = _on_device(weight, grad_output)
    _check_weight(weight, device=device)
    chk.check_array(grad_output, "grad_output", device=device)
    chk.check_ndim(grad_output, "grad_output", (3, 4), "(N, K, OH, OW) or (K, OH, OW)")
    chk.check_same_dtype(weight=weight, grad_output=grad_output)
    size = chk.size_tuple(input_size, "input_size", (grad_output.ndim,))
    geometry = _conv_geometry(weight.shape, stride, padding, dilation, groups)
    out_hw = _check_conv_shapes(size, weight.shape, geometry, "input_size", "weight")
    chk.check_shape(grad_output, (*size[:-3], weight.shape[0], *out_hw), "grad_output")
    _check_algorithm(algorithm, device, CONV2D_INPUT_ALGORITHMS)
    g, unbatched = _batched(grad_output)
    full_size = (g.shape[0], *size[-3:])
    if device:
        result = _cuda_backend().conv2d_input(full_size, weight, g, geometry)
    elif g.shape[0] == 0:
        result = np.zeros(full_size, dtype=g.dtype)
    else:
        if algorithm is None and autotune.is_enabled():
            weight, g = _cpu.contiguous(weight), _cpu.contiguous(g)
            algorithm = autotune.input_grad(full_size, weight, g, geometry)
        result = _cpu.conv2d_input(full_size, weight, g, geometry, algorithm)
    return result[0] if unbatched else result


def conv2d_weight(
    input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, algorithm=None
):
    """Gradient of conv2d wrt its weight (torch.nn.grad.conv2d_weight).

    ``algorithm`` (keyword-only, CPU) forces one of ``CONV2D_WEIGHT_ALGORITHMS``, the
    names ``conv2d_weight_algorithm`` reports.
    """
    device = _on_device(input, grad_output)
    chk.check_array(input, "input", device=device)
    chk.check_ndim(input, "input", (3, 4), "(N, C, H, W) or (C, H, W)")
    chk.check_array(grad_output, "grad_output", device=device)
    chk.check_ndim(grad_output, "grad_output", (input.ndim,), "same layout as input")
    chk.check_same_dtype(input=input, grad_output=grad_output)
    wsize = chk.size_tuple(weight_size, "weight_size", (4,))
    geometry = _conv_geometry(wsize, stride, padding, dilation, groups)
    out_hw = _check_conv_shapes(input.shape, wsize, geometry, "input", "weight_size")
    chk.check_shape(grad_output, (*input.shape[:-3], wsize[0], *out_hw), "grad_output")
    _check_algorithm(algorithm, device, CONV2D_WEIGHT_ALGORITHMS)
    x, _ = _batched(input)
    g, _ = _batched(grad_output)
    if device:
        return _cuda_backend().conv2d_weight(x, wsize, g, geometry)
    if x.shape[0] == 0:
        return np.zeros(wsize, dtype=x.dtype)
    if algorithm is None and autotune.is_enabled():
        x, g = _cpu.contiguous(x), _cpu.contiguous(g)
        algorithm = autotune.weight_grad(x, wsize, g, geometry)
    return _cpu.conv2d_weight(x, wsize, g, geometry, algorithm)


def conv2d_bias_grad(grad_output):
    """Gradient of conv2d wrt its bias: grad_output summed over N, H and W.

    A memory-bound reduction: NumPy's pairwise summation (accurate, vectorised)
    runs it on the CPU, the CUDA backend on the device.
    """
    device = _on_device(grad_output)
    chk.check_array(grad_output, "grad_output", device=device)
    chk.check_ndim(grad_output, "grad_output", (3, 4), "(N, K, OH, OW) or (K, OH, OW)")
    g, _ = _batched(grad_output)
    if device:
        return _cuda_backend().channel_sums(g)
    return g.sum(axis=(0, 2, 3), dtype=g.dtype)


CONV2D_ALGORITHMS = _cpu.conv2d_algorithms()
CONV2D_INPUT_ALGORITHMS = _cpu.conv2d_input_algorithms()
CONV2D_WEIGHT_ALGORITHMS = _cpu.conv2d_weight_algorithms()


def _check_algorithm(algorithm, device: bool, known: tuple[str, ...] = CONV2D_ALGORITHMS) -> None:
    """A forced CPU algorithm must exist; whether it fits the problem is checked by the
    kernel call itself, before it touches any array."""
    if algorithm is None:
        return
    if not isinstance(algorithm, str) or algorithm not in known:
        raise ValueError(f"algorithm must be None or one of {known}, got {algorithm!r}")
    if device:
        raise ValueError(
            f"algorithm={algorithm!r} chooses a CPU algorithm; CUDA arrays run the CUDA "
            "backend's own kernels (pass algorithm=None)"
        )


def conv2d_algorithm(
    input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *, dtype=np.float32
) -> str:
    """The algorithm conv2d's CPU forward pass chooses for these shapes (a pure function).

    One of ``CONV2D_ALGORITHMS``: 'pointwise_gemm' (1x1, stride 1, unpadded: a GEMM
    per image, or one across the batch on 1x1 planes), 'depthwise' (groups ==
    in_channels > 1: channel blocks on small planes, row kernels on wide ones),
    'direct' (kernels above 1x1 with at most 4 input channels per group or output rows
    at least 3 wide: an indirect GEMM whose taps point into zero-padded input rows),
    'implicit_gemm' (the general path: GEMM with im2col panels packed on the fly),
    'winograd'
    (F(4x4, 3x3) for 3x3 stride-1 ungrouped float32 layers with >= 32 channels
    and outputs at least 7x7, above 64 MFLOP).
    """
    return _conv_plan(
        "forward", input_shape, weight_shape, stride, padding, dilation, groups, dtype
    )


def _conv_plan(direction, input_shape, weight_shape, stride, padding, dilation, groups, dtype):
    in_shape = chk.size_tuple(input_shape, "input_shape", (3, 4))
    w_shape = chk.size_tuple(weight_shape, "weight_shape", (4,))
    if len(in_shape) == 3:
        in_shape = (1, *in_shape)
    geometry = _conv_geometry(w_shape, stride, padding, dilation, groups)
    out_hw = _check_conv_shapes(in_shape, w_shape, geometry, "input_shape", "weight_shape")
    return _cpu.conv2d_plan(direction, in_shape, w_shape, out_hw, geometry, np.dtype(dtype))


def conv2d_input_algorithm(
    input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *, dtype=np.float32
) -> str:
    """What conv2d_input runs on the CPU for these shapes, e.g. 'winograd (transposed)'."""
    return _conv_plan("input", input_shape, weight_shape, stride, padding, dilation, groups, dtype)


def conv2d_weight_algorithm(
    input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *, dtype=np.float32
) -> str:
    """What conv2d_weight runs on the CPU for these shapes."""
    return _conv_plan("weight", input_shape, weight_shape, stride, padding, dilation, groups, dtype)


# --------------------------------------------------------------------------- batch norm


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

    ``input`` is (N, C, ...). With ``training`` (or with no running statistics) each
    channel is normalised by the batch's mean and biased variance, and the running
    statistics, when given, are updated in place with ``momentum`` (the unbiased
    variance, as PyTorch does); otherwise the running statistics normalise. With
    ``return_saved=True`` it returns ``(out, saved)``: what batch_norm_backward needs.
    CPU (NumPy arrays) only.
    """
    chk.check_array(input, "input")
    if input.ndim < 2:
        raise ValueError(f"input must be (N, C, ...), got shape {tuple(input.shape)}")
    n, c = input.shape[:2]
    stats = {"running_mean": running_mean, "running_var": running_var}
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None")
    for name, value in {**stats, "weight": weight, "bias": bias}.items():
        if value is not None:
            chk.check_array(value, name)
            chk.check_shape(value, (c,), name)
    chk.check_same_dtype(input=input, weight=weight, bias=bias)
    for name, value in stats.items():
        if value is not None and not value.flags.writeable and training:
            raise ValueError(f"{name} must be writable: training updates it in place")
    count = input.size // max(c, 1)  # values per channel
    if training and count <= 1:
        raise ValueError(
            f"expected more than 1 value per channel when training, got input shape "
            f"{tuple(input.shape)}"
        )
    x = _cpu.contiguous(input)
    rows = x.reshape(n, c, -1)  # (N, C, S): the layout of the fused kernels
    dt = x.dtype.type
    batch_statistics = bool(training) or running_mean is None
    if batch_statistics:
        mean, var = _cpu.batch_norm_stats(rows)  # var: biased
        if training and running_mean is not None:
            running_mean *= 1.0 - momentum
            running_mean += momentum * mean
            running_var *= 1.0 - momentum
            running_var += (momentum * count / (count - 1)) * var  # unbiased
    else:
        mean = running_mean.astype(x.dtype, copy=False)
        var = running_var.astype(x.dtype, copy=False)
    invstd = np.ascontiguousarray(dt(1) / np.sqrt(var + dt(eps)), dtype=x.dtype)
    weight = None if weight is None else _cpu.contiguous(weight)
    bias = None if bias is None else _cpu.contiguous(bias)
    xhat, out = _cpu.batch_norm_apply(rows, _cpu.contiguous(mean), invstd, weight, bias)
    out = out.reshape(x.shape)
    return (out, BatchNormSaved(xhat, invstd, batch_statistics)) if return_saved else out


def batch_norm_backward(grad_output, saved, weight=None, *, input_grad=True):
    """Gradients of batch_norm: ``(grad_input, grad_weight, grad_bias)``.

    ``saved`` is what ``batch_norm(..., return_saved=True)`` returned and ``weight``
    the forward's. ``grad_weight`` and ``grad_bias`` are always computed (they cost
    one pass); ``grad_input`` is None unless ``input_grad``.
    """
    if not isinstance(saved, BatchNormSaved):
        raise TypeError("saved must be the BatchNormSaved that batch_norm(return_saved=True) gave")
    chk.check_array(grad_output, "grad_output")
    xhat = saved.xhat
    if grad_output.size != xhat.size or grad_output.shape[:2] != xhat.shape[:2]:
        raise ValueError(
            f"grad_output has shape {tuple(grad_output.shape)}, but the forward's input had "
            f"{xhat.shape[0]} x {xhat.shape[1]} x {xhat.shape[2]} values"
        )
    if weight is not None:
        chk.check_array(weight, "weight")
        chk.check_shape(weight, (xhat.shape[1],), "weight")
    chk.check_same_dtype(grad_output=grad_output, weight=weight, saved=xhat)
    g = _cpu.contiguous(grad_output).reshape(xhat.shape)
    scale = saved.invstd if weight is None else weight * saved.invstd
    grad, sum_g, sum_gx = _cpu.batch_norm_backward(
        g, xhat, _cpu.contiguous(scale), saved.batch_statistics, input_grad
    )
    grad_input = None if grad is None else grad.reshape(grad_output.shape)
    return grad_input, sum_gx, sum_g


# --------------------------------------------------------------------------- GEMM


def _check_matrix(x, name, device):
    chk.check_array(x, name, device=device)
    chk.check_ndim(x, name, (2,), "a matrix")
    return x


def gemm(a, b, c=None, *, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """alpha * op(a) @ op(b) + beta * c, op(x) = x.T when trans_x (BLAS GEMM).

    With beta == 0, c is not read (NaN in c does not propagate). The result is
    written into c when c is given and is a writable (M, N) array of the same
    dtype and kind; otherwise a new array is returned.
    """
    if c is None:
        out = _cpu.gemm_plain(a, b, alpha, trans_a, trans_b)
        if out is not None:
            return out
    device = _on_device(a, b, c)
    _check_matrix(a, "a", device)
    _check_matrix(b, "b", device)
    if c is not None:
        chk.check_array(c, "c", device=device)
    chk.check_same_dtype(a=a, b=b, c=c)
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb:
        raise ValueError(
            f"inner dimensions differ: op(a) is {m}x{k} but op(b) is {kb}x{n} "
            f"(trans_a={bool(trans_a)}, trans_b={bool(trans_b)})"
        )
    if c is not None:
        chk.check_shape(c, (m, n), "c")
    alpha, beta = float(alpha), float(beta)
    if device:
        return _cuda_backend().gemm(a, b, c, alpha, beta, bool(trans_a), bool(trans_b))
    return _cpu_gemm(a, b, c, alpha, beta, bool(trans_a), bool(trans_b))


def _cpu_gemm(a, b, c, alpha, beta, trans_a, trans_b, kernel_index=-1):
    """Allocation and aliasing rules of gemm on the CPU; kernel_index picks a micro-kernel
    of ``_cpu.gemm_kernels`` (tests and benchmarks run each), -1 the active tier's."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    a, b = _itemsize_strided(a), _itemsize_strided(b)
    if c is None:
        out = np.empty((m, n), dtype=a.dtype)
        _cpu.gemm(a, b, out, alpha, 0.0, trans_a, trans_b, kernel_index)
        return out
    writable = c.flags.writeable
    # The kernel reads A and B while writing C: never let them overlap.
    if writable and not (np.may_share_memory(c, a) or np.may_share_memory(c, b)):
        target = _itemsize_strided(c)
        if target is c:
            _cpu.gemm(a, b, c, alpha, beta, trans_a, trans_b, kernel_index)
            return c
    out = (
        np.array(c, dtype=a.dtype, order="C", copy=True)
        if beta != 0.0
        else np.empty((m, n), a.dtype)
    )
    _cpu.gemm(a, b, out, alpha, beta, trans_a, trans_b, kernel_index)
    if writable:
        c[...] = out
        return c
    return out


def _itemsize_strided(x):
    """x itself when it is aligned and its strides are whole elements (every normal view),
    else a contiguous copy."""
    if x.flags.aligned and all(s % x.itemsize == 0 for s in x.strides):
        return x
    return np.array(x, order="C")


def matmul(a, b):
    """a @ b for 2-D arrays."""
    return gemm(a, b)


def linear(input, weight, bias=None):
    """input @ weight.T + bias (torch.nn.functional.linear); input is (..., in_features)."""
    device = _on_device(input, weight, bias)
    chk.check_array(input, "input", device=device)
    _check_matrix(weight, "weight", device)
    _check_bias(bias, weight.shape[0], "out_features", device)
    chk.check_same_dtype(input=input, weight=weight, bias=bias)
    features = tuple(input.shape)[-1] if input.ndim else 0
    if input.ndim == 0 or features != weight.shape[1]:
        raise ValueError(
            f"input has {features} features in its last dim, "
            f"weight expects {weight.shape[1]} (weight is (out_features, in_features))"
        )
    rows = input if input.ndim == 2 else input.reshape(-1, features)
    if bias is None:
        out = gemm(rows, weight, trans_b=True)
    else:
        out = gemm(rows, weight, _broadcast_rows(bias, rows.shape[0]), beta=1.0, trans_b=True)
    return out.reshape(*input.shape[:-1], weight.shape[0])


def _broadcast_rows(bias, rows):
    """A fresh (rows, out_features) array holding bias in every row (GEMM's C)."""
    if chk.is_device_array(bias):
        return _cuda_backend().broadcast_rows(bias, rows)
    return np.repeat(bias[None, :], rows, axis=0)
