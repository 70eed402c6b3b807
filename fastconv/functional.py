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
    "INTERPOLATE_MODES",
    "BatchNormSaved",
    "avg_pool1d",
    "avg_pool1d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "conv1d",
    "conv1d_input",
    "conv1d_weight",
    "conv2d",
    "conv2d_algorithm",
    "conv2d_bias_grad",
    "conv2d_input",
    "conv2d_input_algorithm",
    "conv2d_weight",
    "conv2d_weight_algorithm",
    "conv_transpose2d",
    "conv_transpose2d_input",
    "conv_transpose2d_weight",
    "gemm",
    "get_num_threads",
    "group_norm",
    "instance_norm",
    "interpolate",
    "interpolate_backward",
    "last_algorithms",
    "layer_norm",
    "linear",
    "matmul",
    "max_pool1d",
    "max_pool1d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "pixel_shuffle",
    "pixel_unshuffle",
    "relu",
    "relu6",
    "relu6_backward",
    "relu_backward",
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
    itemsize = np.dtype(dtype).itemsize
    out_shape = (in_shape[0], w_shape[0], *out_hw)
    for name, shape in (("input_shape", in_shape), ("weight_shape", w_shape)):
        chk.check_fits_an_array(shape, itemsize, name)
    chk.check_fits_an_array(out_shape, itemsize, "the output shape")
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


# --------------------------------------------------------------------------- activations


def _clamp(input, lo, hi, inplace):
    chk.check_array(input, "input")
    x = np.asarray(input)
    if not inplace:
        return _cpu.clamp(_cpu.contiguous(x), lo, hi)
    if not x.flags.writeable:
        raise ValueError("input must be writable for inplace=True")
    if x.flags.c_contiguous and x.flags.aligned:
        return _cpu.clamp(x, lo, hi, out=x)
    x[...] = _cpu.clamp(_cpu.contiguous(x), lo, hi)
    return x


def relu(input, inplace=False):
    """max(input, 0) (torch.nn.functional.relu): NaN stays NaN; with ``inplace`` the
    result is written into ``input`` and returned. One threaded pass, CPU only."""
    return _clamp(input, 0.0, None, inplace)


def relu6(input, inplace=False):
    """min(max(input, 0), 6) (torch.nn.functional.relu6), as :func:`relu`."""
    return _clamp(input, 0.0, 6.0, inplace)


def _clamp_backward(grad_output, output, lo, hi):
    chk.check_array(grad_output, "grad_output")
    chk.check_array(output, "output")
    chk.check_same_dtype(grad_output=grad_output, output=output)
    if grad_output.shape != output.shape:
        raise ValueError(
            f"grad_output shape {tuple(grad_output.shape)} must equal the output's "
            f"{tuple(output.shape)}"
        )
    return _cpu.clamp_backward(_cpu.contiguous(grad_output), _cpu.contiguous(output), lo, hi)


def relu_backward(grad_output, output):
    """The input gradient of :func:`relu` from its ``output``: ``grad_output`` where
    output > 0 or is NaN, else 0 (PyTorch's threshold_backward)."""
    return _clamp_backward(grad_output, output, 0.0, None)


def relu6_backward(grad_output, output):
    """The input gradient of :func:`relu6` from its ``output``: ``grad_output`` strictly
    inside (0, 6), else 0, NaN included (PyTorch's hardtanh_backward)."""
    return _clamp_backward(grad_output, output, 0.0, 6.0)


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
    activation=None,
    saved_into=None,
):
    """Batch normalisation over N and the spatial dims (torch.nn.functional.batch_norm).

    ``input`` is (N, C, ...). With ``training`` (or with no running statistics) each
    channel is normalised by the batch's mean and biased variance, and the running
    statistics, when given, are updated in place with ``momentum`` (the unbiased
    variance, as PyTorch does); otherwise the running statistics normalise. With
    ``return_saved=True`` it returns ``(out, saved)``: what batch_norm_backward needs.
    ``activation`` ('relu' or 'relu6', keyword-only; a fastconv extension) clamps the
    output in the same pass: the same values as :func:`relu` of the plain output, one
    pass over the data fewer. ``saved_into`` (keyword-only, with ``return_saved``; a
    fastconv extension) is a C-contiguous array of the input's shape and dtype that the
    normalised input kept for the backward is written into, instead of a new one (a
    layer reuses its own between steps). CPU (NumPy arrays) only.
    """
    if activation not in (None, "relu", "relu6"):
        raise ValueError(f"activation must be None, 'relu' or 'relu6', got {activation!r}")
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
    # np.asarray: a subclass such as np.matrix cannot take the 3-D shape below.
    x = _cpu.contiguous(np.asarray(input))
    rows = x.reshape(n, c, -1)  # (N, C, S): the layout of the fused kernels
    dt = x.dtype.type
    batch_statistics = bool(training) or running_mean is None
    # The kernels walk all N x C rows even when they are empty (N may be 2**40).
    empty = rows.size == 0
    if batch_statistics:
        zeros = np.zeros(c, x.dtype)
        mean, var = (zeros, zeros) if empty else _cpu.batch_norm_stats(rows)  # var: biased
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
    if empty:
        xhat, out = np.empty_like(rows), np.empty_like(rows)
    else:
        xhat_out = None
        if saved_into is not None and return_saved:
            chk.check_array(saved_into, "saved_into")
            if (
                saved_into.shape != x.shape
                or saved_into.dtype != x.dtype
                or not saved_into.flags.c_contiguous
                or not saved_into.flags.writeable
                or np.may_share_memory(saved_into, x)
            ):
                raise ValueError(
                    "saved_into must be a writable C-contiguous array of the input's shape "
                    "and dtype, apart from the input"
                )
            xhat_out = saved_into.reshape(rows.shape)
        xhat, out = _cpu.batch_norm_apply(
            rows, _cpu.contiguous(mean), invstd, weight, bias, return_saved, activation, xhat_out
        )
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
    # A BatchNormSaved can be built by hand: its arrays are checked like any argument.
    xhat = chk.check_array(saved.xhat, "saved.xhat")
    chk.check_ndim(xhat, "saved.xhat", (3,), "(N, C, S), as batch_norm returns it")
    chk.check_array(saved.invstd, "saved.invstd")
    chk.check_shape(saved.invstd, (xhat.shape[1],), "saved.invstd")
    chk.check_array(grad_output, "grad_output")
    if grad_output.size != xhat.size or grad_output.shape[:2] != xhat.shape[:2]:
        raise ValueError(
            f"grad_output has shape {tuple(grad_output.shape)}, but the forward's input had "
            f"{xhat.shape[0]} x {xhat.shape[1]} x {xhat.shape[2]} values"
        )
    if weight is not None:
        chk.check_array(weight, "weight")
        chk.check_shape(weight, (xhat.shape[1],), "weight")
    chk.check_same_dtype(
        grad_output=grad_output, weight=weight, saved=xhat, **{"saved.invstd": saved.invstd}
    )
    xhat = _cpu.contiguous(np.asarray(xhat))
    g = _cpu.contiguous(np.asarray(grad_output)).reshape(xhat.shape)
    scale = saved.invstd if weight is None else weight * saved.invstd
    if xhat.size == 0:  # (the kernel would walk all N x C empty rows)
        grad = np.empty_like(g) if input_grad else None
        sum_g, sum_gx = np.zeros(xhat.shape[1], xhat.dtype), np.zeros(xhat.shape[1], xhat.dtype)
    else:
        grad, sum_g, sum_gx = _cpu.batch_norm_backward(
            g, xhat, _cpu.contiguous(scale), bool(saved.batch_statistics), bool(input_grad)
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


# --------------------------------------------------------------------------- transposed conv
#
# conv_transpose2d is the adjoint of conv2d: its forward pass is conv2d_input, its input
# gradient is conv2d and its weight gradient is conv2d_weight with the roles of input and
# grad_output swapped, all on the same kernels; a 1x1 input makes each of them one GEMM.


def _transpose_geometry(stride, padding, output_padding, groups, dilation):
    strides = chk.positive_pair(stride, "stride")
    ph, pw = chk.non_negative_pair(padding, "padding")
    out_pads = chk.non_negative_pair(output_padding, "output_padding")
    dilations = chk.positive_pair(dilation, "dilation")
    groups = chk.positive_int(groups, "groups")
    for extra, s, d in zip(out_pads, strides, dilations):
        if extra >= max(s, d):
            raise ValueError(
                f"output_padding {output_padding!r} must be smaller than either stride "
                f"{stride!r} or dilation {dilation!r}"
            )
    return ConvGeometry(strides, (ph, ph, pw, pw), dilations, groups), out_pads


def _check_transpose_shapes(input_shape, weight_shape, geometry, out_pads, input_name, weight_name):
    """Channel/group consistency and a positive output size; returns (out_h, out_w)."""
    c_in, h, w = input_shape[-3:]
    w_in, c_out_per_group, kh, kw = weight_shape
    g = geometry.groups
    if min(h, w) <= 0:
        raise ValueError(f"{input_name} must have non-zero H and W, got shape {input_shape}")
    if w_in != c_in:
        raise ValueError(
            f"{weight_name} (in_channels, out_channels/groups, kH, kW) expects {w_in} input "
            f"channels, but {input_name} has {c_in}"
        )
    if c_in % g != 0:
        raise ValueError(f"groups={g} must divide the {input_name} channels ({c_in})")
    if min(c_out_per_group, kh, kw) <= 0:
        raise ValueError(f"{weight_name} must have non-zero sizes, got {tuple(weight_shape)}")
    out_hw = tuple(
        (size - 1) * s - 2 * p + d * (k - 1) + extra + 1
        for size, s, p, d, k, extra in zip(
            (h, w), geometry.stride, geometry.padding[::2], geometry.dilation, (kh, kw), out_pads
        )
    )
    if min(out_hw) < 1:
        raise ValueError(
            f"{input_name} of spatial size {(h, w)} gives an output of size {out_hw} with "
            f"padding {geometry.padding[::2]}: the padding removes every output pixel"
        )
    return out_hw


def _overhang(out_pads, strides):
    """Input rows (columns) to add past the end so that conv2d's output-size arithmetic
    reaches all of an output that output_padding makes longer than a stride (possible when
    dilation > stride); the added rows are zeros and contribute nothing."""
    return tuple(extra // s for extra, s in zip(out_pads, strides))


def _with_overhang(x, overhang):
    if overhang == (0, 0):
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, overhang[0]), (0, overhang[1])))


def _one_position_strides(geometry, out_pads, in_hw):
    """The geometry with the stride of each one-position input dim brought down to
    output_padding + 1: it changes no output size or value there, and the conv kernels
    size their work by the stride (a stride of 2**31 - 1 would exhaust memory)."""
    strides = tuple(
        min(s, extra + 1) if size == 1 else s
        for s, extra, size in zip(geometry.stride, out_pads, in_hw)
    )
    return ConvGeometry(strides, geometry.padding, geometry.dilation, geometry.groups)


def _tap_positions(kernel, geometry, out_hw):
    """For a 1x1 input: the kernel taps that land inside the output, and where."""
    taps = []
    for k, d, p, size in zip(kernel, geometry.dilation, geometry.padding[::2], out_hw):
        position = np.arange(k) * d - p
        inside = (position >= 0) & (position < size)
        taps.append((np.flatnonzero(inside), position[inside]))
    return taps


def _single_pixel(x, geometry) -> bool:
    """A 1x1 input (a DCGAN generator's first layer): every pass is one GEMM."""
    return x.shape[-2:] == (1, 1) and geometry.groups == 1


def _transpose_forward(x, weight, geometry, out_pads, out_hw):
    n, c_in = x.shape[:2]
    c_out = weight.shape[1] * geometry.groups
    if n == 0:
        return np.zeros((0, c_out, *out_hw), dtype=x.dtype)
    if _single_pixel(x, geometry):
        kh, kw = weight.shape[2:]
        taps = gemm(x.reshape(n, c_in), _cpu.contiguous(weight).reshape(c_in, -1))
        taps = taps.reshape(n, c_out, kh, kw)
        (rows, at_rows), (cols, at_cols) = _tap_positions((kh, kw), geometry, out_hw)
        if (kh, kw) == out_hw and len(rows) == kh and len(cols) == kw:
            return taps
        out = np.zeros((n, c_out, *out_hw), dtype=x.dtype)
        out[:, :, at_rows[:, None], at_cols[None, :]] = taps[:, :, rows[:, None], cols[None, :]]
        return out
    ph, pw = geometry.padding[::2]
    return conv2d_input(
        (n, c_out, *out_hw),
        weight,
        _with_overhang(x, _overhang(out_pads, geometry.stride)),
        geometry.stride,
        (ph, pw),
        geometry.dilation,
        geometry.groups,
    )


def conv_transpose2d(
    input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    """2-D transposed convolution (torch.nn.functional.conv_transpose2d), CPU.

    ``weight`` is (in_channels, out_channels/groups, kH, kW); the output is
    (N, out_channels, (H - 1)*sh - 2*ph + dh*(kH - 1) + oph + 1, ...). The adjoint of
    conv2d with the same weight: it runs as ``conv2d_input`` (a 1x1 input as one GEMM)::

        out[n, g*Kg + k, i*sh - ph + r*dh, j*sw - pw + s*dw] +=
            input[n, g*Cg + c, i, j] * weight[g*Cg + c, k, r, s]
    """
    chk.check_array(input, "input")
    chk.check_ndim(input, "input", (3, 4), "(N, C_in, H, W) or (C_in, H, W)")
    chk.check_array(weight, "weight")
    chk.check_ndim(weight, "weight", (4,), "(in_channels, out_channels/groups, kH, kW)")
    geometry, out_pads = _transpose_geometry(stride, padding, output_padding, groups, dilation)
    _check_bias(bias, weight.shape[1] * geometry.groups, "out_channels", False)
    chk.check_same_dtype(input=input, weight=weight, bias=bias)
    out_hw = _check_transpose_shapes(
        tuple(input.shape), tuple(weight.shape), geometry, out_pads, "input", "weight"
    )
    geometry = _one_position_strides(geometry, out_pads, input.shape[-2:])
    x, unbatched = _batched(input)
    out = _transpose_forward(x, weight, geometry, out_pads, out_hw)
    if bias is not None:
        out += bias[:, None, None]
    return out[0] if unbatched else out


def _transpose_gradient_args(input_shape, weight_shape, grad_output, args, grad_name="grad_output"):
    """Validates a conv_transpose2d gradient call; returns (geometry, out_pads, out_hw)."""
    chk.check_array(grad_output, grad_name)
    chk.check_ndim(grad_output, grad_name, (len(input_shape),), "the layout of the input")
    geometry, out_pads = _transpose_geometry(*args)
    out_hw = _check_transpose_shapes(
        input_shape, weight_shape, geometry, out_pads, "input_size", "weight"
    )
    out_channels = weight_shape[1] * geometry.groups
    chk.check_shape(grad_output, (*input_shape[:-3], out_channels, *out_hw), grad_name)
    return _one_position_strides(geometry, out_pads, input_shape[-2:]), out_pads, out_hw


def _gathered_taps(g, kernel, geometry):
    """For a 1x1 input: grad_output at each kernel tap, (N, C_out, kH, kW), zero off it."""
    (rows, at_rows), (cols, at_cols) = _tap_positions(kernel, geometry, g.shape[2:])
    if tuple(kernel) == g.shape[2:] and len(rows) == kernel[0] and len(cols) == kernel[1]:
        return _cpu.contiguous(g)
    taps = np.zeros((*g.shape[:2], *kernel), dtype=g.dtype)
    taps[:, :, rows[:, None], cols[None, :]] = g[:, :, at_rows[:, None], at_cols[None, :]]
    return taps


def conv_transpose2d_input(
    input_size, weight, grad_output, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    """Gradient of conv_transpose2d wrt its input: conv2d of ``grad_output`` with ``weight``
    (a 1x1 input: one GEMM). Arguments as conv2d_input's, plus output_padding; CPU."""
    chk.check_array(weight, "weight")
    chk.check_ndim(weight, "weight", (4,), "(in_channels, out_channels/groups, kH, kW)")
    size = chk.size_tuple(input_size, "input_size", (3, 4))
    args = (stride, padding, output_padding, groups, dilation)
    geometry, out_pads, out_hw = _transpose_gradient_args(
        size, tuple(weight.shape), grad_output, args
    )
    chk.check_same_dtype(weight=weight, grad_output=grad_output)
    g, unbatched = _batched(grad_output)
    full_size = (g.shape[0], *size[-3:])
    if g.shape[0] == 0:
        return np.zeros(size, dtype=g.dtype)
    if size[-2:] == (1, 1) and geometry.groups == 1:
        taps = _gathered_taps(g, weight.shape[2:], geometry)
        c_in = weight.shape[0]
        flat_w = _cpu.contiguous(weight).reshape(c_in, -1)
        result = gemm(taps.reshape(g.shape[0], -1), flat_w, trans_b=True).reshape(full_size)
    else:
        ph, pw = geometry.padding[::2]
        result = conv2d(
            g, weight, None, geometry.stride, (ph, pw), geometry.dilation, geometry.groups
        )
        if result.shape[2:] != tuple(size[-2:]):  # the overhang's rows read no input
            result = np.ascontiguousarray(result[:, :, : size[-2], : size[-1]])
    return result[0] if unbatched else result


def conv_transpose2d_weight(
    input, weight_size, grad_output, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    """Gradient of conv_transpose2d wrt its weight: conv2d_weight with ``grad_output`` as
    the input and ``input`` as the gradient (a 1x1 input: one GEMM); CPU."""
    chk.check_array(input, "input")
    chk.check_ndim(input, "input", (3, 4), "(N, C_in, H, W) or (C_in, H, W)")
    wsize = chk.size_tuple(weight_size, "weight_size", (4,))
    args = (stride, padding, output_padding, groups, dilation)
    geometry, out_pads, out_hw = _transpose_gradient_args(
        tuple(input.shape), wsize, grad_output, args
    )
    chk.check_same_dtype(input=input, grad_output=grad_output)
    x, _ = _batched(input)
    g, _ = _batched(grad_output)
    if x.shape[0] == 0:
        return np.zeros(wsize, dtype=x.dtype)
    if _single_pixel(x, geometry):
        taps = _gathered_taps(g, wsize[2:], geometry)
        n, c_in = x.shape[:2]
        return gemm(x.reshape(n, c_in), taps.reshape(n, -1), trans_a=True).reshape(wsize)
    ph, pw = geometry.padding[::2]
    return conv2d_weight(
        _cpu.contiguous(g),
        wsize,
        _with_overhang(_cpu.contiguous(x), _overhang(out_pads, geometry.stride)),
        geometry.stride,
        (ph, pw),
        geometry.dilation,
        geometry.groups,
    )


# --------------------------------------------------------------------------- 1-D conv and pooling
#
# A 1-D op is the 2-D op on planes of one row: (N, C, L) is viewed as (N, C, 1, L) and a
# (K, Cg, kL) weight as (K, Cg, 1, kL), so the 1-D layers run on the same kernels.

_ONE_INT = "an int or a 1-tuple of ints"


def _single(value, name):
    """An int or a 1-sequence of ints, as PyTorch's _single."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(f"{name} must be {_ONE_INT}, got {value!r}")
        value = value[0]
    return chk.as_int(value, name, expected=_ONE_INT)


def _positive_single(value, name):
    v = _single(value, name)
    if v <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return v


def _non_negative_single(value, name):
    v = _single(value, name)
    if v < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return v


def _conv1d_args(stride, padding, dilation, groups):
    """(stride, dilation, padding, groups) as conv2d takes them for a one-row plane."""
    s = _positive_single(stride, "stride")
    d = _positive_single(dilation, "dilation")
    chk.positive_int(groups, "groups")
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, 'same' or 'valid', got {padding!r}")
        if padding == "same" and s != 1:
            raise ValueError(
                "padding='same' is not supported for strided convolutions (stride > 1)"
            )
        pad2d = padding
    else:
        pad2d = (0, _non_negative_single(padding, "padding"))
    return (1, s), pad2d, (1, d), groups


def _check_conv1d_shapes(input_shape, weight_shape, args, input_name, weight_name):
    """Channels, groups and a positive output length; returns the output length."""
    stride, pad2d, dilation, groups = args
    c_in, length = input_shape[-2:]
    c_out, c_per_group, k = weight_shape
    if c_in % groups != 0:
        raise ValueError(f"groups={groups} must divide the {input_name} channels ({c_in})")
    if c_out % groups != 0:
        raise ValueError(f"groups={groups} must divide the {weight_name} out_channels ({c_out})")
    if c_per_group * groups != c_in:
        raise ValueError(
            f"{weight_name} expects {c_per_group * groups} input channels "
            f"({c_per_group} per group x groups={groups}), but {input_name} has {c_in}"
        )
    if min(k, c_out) <= 0:
        raise ValueError(f"{weight_name} must have non-zero sizes, got {tuple(weight_shape)}")
    (_, _), (left, right) = conv_padding(pad2d, (1, k), dilation)
    out_len = (length + left + right - dilation[1] * (k - 1) - 1) // stride[1] + 1
    if out_len < 1:
        raise ValueError(
            f"{input_name} of length {length} (padded by {(left, right)}) is shorter than the "
            f"dilated kernel: output length would be {out_len}"
        )
    return out_len


def _reachable_stride(args, length, k):
    """args with a stride past the padded input's last window start (one output, whatever
    the stride) brought down to that span: the 2-D kernels size their work by the stride
    (a stride of 2**31 - 1 would exhaust memory)."""
    stride, pad2d, dilation, groups = args
    (_, _), (left, right) = conv_padding(pad2d, (1, k), dilation)
    span = max(length + left + right - dilation[1] * (k - 1), 1)
    return ((1, min(stride[1], span)), pad2d, dilation, groups)


def _rows(x, ndim):
    """(N, C, L) or (C, L) as one-row planes: (N, C, 1, L) or (C, 1, L)."""
    return x.reshape((*x.shape[: ndim - 1], 1, x.shape[-1]))


def _unrow(y):
    return y.reshape((*y.shape[:-2], y.shape[-1]))


def _weight_rows(weight):
    return weight.reshape((*weight.shape[:2], 1, weight.shape[2]))


_WEIGHT1D = "(out_channels, in_channels/groups, kL)"


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D cross-correlation (torch.nn.functional.conv1d), CPU: conv2d on one-row planes.

    input (N, C, L) or (C, L), weight (K, C/groups, kL); ``padding`` is an int, a
    1-tuple, 'same' or 'valid'::

        out[n, k, i] = bias[k] + sum_{c, t} input[n, g*Cg + c, i*stride - pad + t*dilation]
                                            * weight[k, c, t]
    """
    chk.check_array(input, "input")
    chk.check_ndim(input, "input", (2, 3), "(N, C, L) or (C, L)")
    chk.check_array(weight, "weight")
    chk.check_ndim(weight, "weight", (3,), _WEIGHT1D)
    _check_bias(bias, weight.shape[0], "out_channels", False)
    chk.check_same_dtype(input=input, weight=weight, bias=bias)
    args = _conv1d_args(stride, padding, dilation, groups)
    _check_conv1d_shapes(tuple(input.shape), tuple(weight.shape), args, "input", "weight")
    args = _reachable_stride(args, input.shape[-1], weight.shape[-1])
    out = conv2d(_rows(input, input.ndim), _weight_rows(weight), bias, *args)
    return _unrow(out)


# Taps per stride from which the phase split beats col2im: col2im materialises the kernel's
# every tap per output and its cost grows with the kernel, the split problem's does not
# (one thread, float32: wav2letter's 48-wide stride-2 layer 31 -> 19 ms; 32, 48 or 64 taps
# at stride 2 or 4 gain 1.3-1.7x, 16 taps at stride 2 break even, 4 taps per stride lose).
PHASE_SPLIT_MIN_TAPS = 8


def _phase_split_fits(weight, stride, dilation, groups) -> bool:
    """A strided conv with long kernels (wav2letter's first layer): a whole number of at
    least PHASE_SPLIT_MIN_TAPS taps per stride along each strided dim; ungrouped and
    undilated; finite weights only (the split problem's zero outputs would meet an Inf
    weight as 0 * Inf)."""
    strides = chk.positive_pair(stride, "stride")
    kernel = weight.shape[2:]
    strided = [(k, s) for k, s in zip(kernel, strides) if s > 1]
    return (
        bool(strided)
        and all(k % s == 0 and k // s >= PHASE_SPLIT_MIN_TAPS for k, s in strided)
        and chk.positive_pair(dilation, "dilation") == (1, 1)
        and groups == 1
        and bool(np.isfinite(weight).all())
    )


def _phase_split_input_grad(size, weight, g, stride, padding):
    """conv2d_input of a stride-(sh, sw) conv as the input gradient of a stride-1 conv on
    the phase-split problem: input pixel (sh*m + a, sw*q + b) becomes pixel (m, q) of
    channel (a*sw + b)*C + c, and kernel tap (sh*u + a, sw*v + b) tap (u, v) of that
    channel. The strided problem's col2im becomes the stride-1 kernels' flipped forward
    pass; the split problem's outputs past the strided conv's have zero gradient."""
    (sh, sw), (ph, pw) = chk.positive_pair(stride, "stride"), chk.int_pair(padding, "padding")
    n, k_out = g.shape[:2]
    c, (height, width) = size[-3], size[-2:]
    kh, kw = weight.shape[2:]
    split_hw = (-(-(height + 2 * ph) // sh), -(-(width + 2 * pw) // sw))
    taps = (kh // sh, kw // sw)
    # split[k, (a*sw + b)*C + c, u, v] = weight[k, c, sh*u + a, sw*v + b]
    split = weight.reshape(k_out, c, taps[0], sh, taps[1], sw).transpose(0, 3, 5, 1, 2, 4)
    split = np.ascontiguousarray(split).reshape(k_out, sh * sw * c, *taps)
    g_split = np.zeros((n, k_out, split_hw[0] - taps[0] + 1, split_hw[1] - taps[1] + 1), g.dtype)
    g_split[:, :, : g.shape[2], : g.shape[3]] = g
    grad = conv2d_input((n, sh * sw * c, *split_hw), split, g_split)
    # grad_padded[n, c, sh*m + a, sw*q + b] = grad[n, (a*sw + b)*C + c, m, q]
    grad = grad.reshape(n, sh, sw, c, *split_hw).transpose(0, 3, 4, 1, 5, 2)
    grad = grad.reshape(n, c, split_hw[0] * sh, split_hw[1] * sw)
    return np.ascontiguousarray(grad[:, :, ph : ph + height, pw : pw + width])


def _input_gradient(size, weight, g, stride, padding, dilation, groups):
    """conv2d_input, phase-split when that fits (validated arguments): conv1d_input's path.
    (A 2-D transposed convolution's short kernels run faster on col2im.)"""
    if padding == "valid":
        padding = 0
    if isinstance(padding, str) or not _phase_split_fits(weight, stride, dilation, groups):
        return conv2d_input(size, weight, g, stride, padding, dilation, groups)
    if g.ndim == 3:  # unbatched
        return _phase_split_input_grad((1, *size), weight, g[None], stride, padding)[0]
    return _phase_split_input_grad(size, weight, g, stride, padding)


def conv1d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv1d wrt its input (torch.nn.grad.conv1d_input), CPU."""
    chk.check_array(weight, "weight")
    chk.check_ndim(weight, "weight", (3,), _WEIGHT1D)
    chk.check_array(grad_output, "grad_output")
    chk.check_ndim(grad_output, "grad_output", (2, 3), "(N, K, OL) or (K, OL)")
    chk.check_same_dtype(weight=weight, grad_output=grad_output)
    size = chk.size_tuple(input_size, "input_size", (grad_output.ndim,))
    args = _conv1d_args(stride, padding, dilation, groups)
    out_len = _check_conv1d_shapes(size, tuple(weight.shape), args, "input_size", "weight")
    chk.check_shape(grad_output, (*size[:-2], weight.shape[0], out_len), "grad_output")
    args = _reachable_stride(args, size[-1], weight.shape[-1])
    size2d = (*size[:-1], 1, size[-1])
    g = _rows(grad_output, grad_output.ndim)
    return _unrow(_input_gradient(size2d, _weight_rows(weight), g, *args))


def conv1d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv1d wrt its weight (torch.nn.grad.conv1d_weight), CPU."""
    chk.check_array(input, "input")
    chk.check_ndim(input, "input", (2, 3), "(N, C, L) or (C, L)")
    chk.check_array(grad_output, "grad_output")
    chk.check_ndim(grad_output, "grad_output", (input.ndim,), "the layout of the input")
    chk.check_same_dtype(input=input, grad_output=grad_output)
    wsize = chk.size_tuple(weight_size, "weight_size", (3,))
    args = _conv1d_args(stride, padding, dilation, groups)
    out_len = _check_conv1d_shapes(tuple(input.shape), wsize, args, "input", "weight_size")
    chk.check_shape(grad_output, (*input.shape[:-2], wsize[0], out_len), "grad_output")
    args = _reachable_stride(args, input.shape[-1], wsize[2])
    x, g = _rows(input, input.ndim), _rows(grad_output, grad_output.ndim)
    grad = conv2d_weight(x, (*wsize[:2], 1, wsize[2]), g, *args)
    return grad.reshape(wsize)


def _pool1d_window(kernel_size, stride, padding, dilation, ceil_mode):
    """The 1-D window as a PoolWindow over one-row planes."""
    k = _positive_single(kernel_size, "kernel_size")
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        s = k
    else:
        s = _positive_single(stride, "stride")
    p = _non_negative_single(padding, "padding")
    d = _positive_single(dilation, "dilation")
    if p > k // 2:
        raise ValueError(f"padding {padding!r} must be at most half of kernel_size {kernel_size!r}")
    return PoolWindow((1, k), (1, s), (0, p), (1, d), bool(ceil_mode))


def _pool1d_input(input, name="input"):
    chk.check_array(input, name)
    chk.check_ndim(input, name, (2, 3), "(N, C, L) or (C, L)")
    if min(input.shape[-2:]) == 0:
        raise ValueError(f"{name} must have non-zero C and L, got shape {tuple(input.shape)}")


def _pool1d_length(window, length, name):
    out_len = window.output_size(1, length)[1]
    if out_len < 1:
        raise ValueError(
            f"{name} of length {length} is too small for this pooling window: output length "
            f"would be {out_len}"
        )
    return out_len


def _window_args(window):
    return window.kernel, window.stride, window.padding, window.dilation, window.ceil_mode


def max_pool1d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    """1-D max pooling (torch.nn.functional.max_pool1d), CPU: max_pool2d on one-row planes.
    Indices are positions along L."""
    _pool1d_input(input)
    window = _pool1d_window(kernel_size, stride, padding, dilation, ceil_mode)
    _pool1d_length(window, input.shape[-1], "input")
    out = max_pool2d(
        _rows(input, input.ndim), *_window_args(window), return_indices=bool(return_indices)
    )
    if return_indices:
        return _unrow(out[0]), _unrow(out[1])
    return _unrow(out)


def max_pool1d_backward(grad_output, indices, input_size):
    """Gradient of max_pool1d wrt its input: grad_output scattered to ``indices``."""
    chk.check_array(grad_output, "grad_output")
    chk.check_ndim(grad_output, "grad_output", (2, 3), "(N, C, OL) or (C, OL)")
    size = chk.size_tuple(input_size, "input_size", (grad_output.ndim,))
    chk.check_not_masked(indices, "indices")
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    chk.check_shape(indices, tuple(grad_output.shape), "indices")
    size2d = (*size[:-1], 1, size[-1])
    g, idx = _rows(grad_output, grad_output.ndim), _rows(indices, indices.ndim)
    return _unrow(max_pool2d_backward(g, idx, size2d))


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """1-D average pooling (torch.nn.functional.avg_pool1d), CPU: avg_pool2d on one-row
    planes."""
    _pool1d_input(input)
    window = _pool1d_window(kernel_size, stride, padding, 1, ceil_mode)
    _pool1d_length(window, input.shape[-1], "input")
    kernel, strides, pads, _, ceil = _window_args(window)
    return _unrow(
        avg_pool2d(_rows(input, input.ndim), kernel, strides, pads, ceil, bool(count_include_pad))
    )


def avg_pool1d_backward(
    grad_output,
    input_size,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
):
    """Gradient of avg_pool1d wrt its input."""
    chk.check_array(grad_output, "grad_output")
    chk.check_ndim(grad_output, "grad_output", (2, 3), "(N, C, OL) or (C, OL)")
    size = chk.size_tuple(input_size, "input_size", (grad_output.ndim,))
    if min(size[-2:]) == 0:
        raise ValueError(f"input_size must have non-zero C and L, got {size}")
    window = _pool1d_window(kernel_size, stride, padding, 1, ceil_mode)
    out_len = _pool1d_length(window, size[-1], "input_size")
    chk.check_shape(grad_output, (*size[:-1], out_len), "grad_output")
    kernel, strides, pads, _, ceil = _window_args(window)
    size2d = (*size[:-1], 1, size[-1])
    g = _rows(grad_output, grad_output.ndim)
    return _unrow(
        avg_pool2d_backward(g, size2d, kernel, strides, pads, ceil, bool(count_include_pad))
    )


# --------------------------------------------------------------------------- resampling
#
# Interpolation is separable: along each spatial axis every output index reads at most two
# input indices (lo, hi) with weights (w_lo, w_hi), computed as PyTorch's CPU kernels do;
# the backward pass scatters along each axis in the reverse order. The source indices never
# decrease along an axis, so the scatter is a run-wise sum (np.add.reduceat): deterministic.

INTERPOLATE_MODES = ("nearest", "nearest-exact", "linear", "bilinear")
_LINEAR_MODES = {"linear": 3, "bilinear": 4}


def _interpolate_plan(input_shape, size, scale_factor, mode, align_corners, recompute_scale_factor):
    """Output sizes, and the scales the index arithmetic uses (None: in / out)."""
    if not isinstance(mode, str) or mode not in INTERPOLATE_MODES:
        raise ValueError(f"mode must be one of {INTERPOLATE_MODES}, got {mode!r}")
    ndim = len(input_shape)
    if ndim not in (3, 4):
        raise ValueError(
            f"input must be 3-D (N, C, L) or 4-D (N, C, H, W), got shape {tuple(input_shape)}"
        )
    if mode in _LINEAR_MODES and _LINEAR_MODES[mode] != ndim:
        raise ValueError(
            f"mode={mode!r} needs a {_LINEAR_MODES[mode]}-D input, got shape {tuple(input_shape)}"
        )
    if align_corners is not None:
        if mode not in _LINEAR_MODES:
            raise ValueError(
                "align_corners can only be set with the interpolating modes 'linear' and "
                f"'bilinear', got mode={mode!r}"
            )
        if not isinstance(align_corners, (bool, np.bool_)):
            raise TypeError(f"align_corners must be a bool or None, got {align_corners!r}")
    spatial = tuple(input_shape[2:])
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor")
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("recompute_scale_factor is not meaningful with an explicit size")
        sizes = size if isinstance(size, (tuple, list)) else (size,) * len(spatial)
        if len(sizes) != len(spatial):
            raise ValueError(f"size must have {len(spatial)} entries for this input, got {size!r}")
        out = tuple(chk.as_int(s, "size", limit=2**62) for s in sizes)
        scales = (None,) * len(spatial)
    else:
        factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,)
        factors = factors * len(spatial) if len(factors) == 1 else factors
        if len(factors) != len(spatial):
            raise ValueError(
                f"scale_factor must have {len(spatial)} entries for this input, "
                f"got {scale_factor!r}"
            )
        scales = []
        for f in factors:
            if isinstance(f, (bool, np.bool_)) or not isinstance(f, (int, float, np.number)):
                raise TypeError(f"scale_factor must be a number or a tuple of numbers, got {f!r}")
            if not np.isfinite(f) or f <= 0:
                raise ValueError(f"scale_factor must be positive and finite, got {scale_factor!r}")
            scales.append(float(f))
        out = tuple(int(np.floor(float(n) * f)) for n, f in zip(spatial, scales))
        scales = (None,) * len(spatial) if recompute_scale_factor else tuple(scales)
    if min(spatial) <= 0 or min(out) <= 0:
        raise ValueError(
            f"input and output spatial sizes must be positive, got input {spatial} and "
            f"output {out}"
        )
    return out, scales, bool(align_corners)


def _axis_taps(in_size, out_size, scale, mode, align_corners, dtype):
    """(lo, hi, w_lo, w_hi) along one axis: out[j] = w_lo[j]*x[lo[j]] + w_hi[j]*x[hi[j]]."""
    dst = np.arange(out_size)
    if mode in ("nearest", "nearest-exact"):
        # PyTorch computes nearest sources in float32, whatever the dtype
        if mode == "nearest" and out_size == in_size:
            src = dst
        elif mode == "nearest" and out_size == 2 * in_size:
            src = dst >> 1
        else:
            f32 = np.float32
            ratio = f32(1.0 / scale) if scale is not None else f32(in_size) / f32(out_size)
            at = dst.astype(f32) + (f32(0.5) if mode == "nearest-exact" else f32(0))
            src = np.minimum(np.floor(at * ratio).astype(np.int64), in_size - 1)
        return src, None, None, None
    dt = np.dtype(dtype).type
    if out_size == in_size:
        return dst, dst, np.ones(out_size, dtype), np.zeros(out_size, dtype)
    if align_corners:
        ratio = dt(in_size - 1) / dt(out_size - 1) if out_size > 1 else dt(0)
        real = ratio * dst.astype(dtype)
    else:
        ratio = dt(1.0 / scale) if scale is not None else dt(in_size) / dt(out_size)
        real = np.maximum(ratio * (dst.astype(dtype) + dt(0.5)) - dt(0.5), dt(0))
    lo = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    w_hi = np.clip(real - lo.astype(dtype), dt(0), dt(1)).astype(dtype)
    hi = lo + (lo < in_size - 1)
    return lo, hi, (dt(1) - w_hi).astype(dtype), w_hi


def _weights_along(w, axis, ndim):
    shape = [1] * ndim
    shape[axis] = w.size
    return w.reshape(shape)


def _gather_axis(x, taps, axis):
    lo, hi, w_lo, w_hi = taps
    if w_lo is None:
        return np.take(x, lo, axis=axis)
    return _weights_along(w_lo, axis, x.ndim) * np.take(x, lo, axis=axis) + _weights_along(
        w_hi, axis, x.ndim
    ) * np.take(x, hi, axis=axis)


def _run_sum(values, index, size, axis):
    """out[i] = sum of values[j] along ``axis`` with index[j] == i (index non-decreasing)."""
    starts = np.flatnonzero(np.concatenate(([True], index[1:] != index[:-1])))
    sums = np.add.reduceat(values, starts, axis=axis)
    shape = list(values.shape)
    shape[axis] = size
    out = np.zeros(shape, dtype=values.dtype)
    where = [slice(None)] * values.ndim
    where[axis] = index[starts]
    out[tuple(where)] = sums
    return out


def _scatter_axis(g, taps, size, axis):
    lo, hi, w_lo, w_hi = taps
    if w_lo is None:
        return _run_sum(g, lo, size, axis)
    low = _run_sum(_weights_along(w_lo, axis, g.ndim) * g, lo, size, axis)
    return low + _run_sum(_weights_along(w_hi, axis, g.ndim) * g, hi, size, axis)


def _interpolate_taps(in_spatial, out_spatial, scales, mode, align_corners, dtype):
    return [
        _axis_taps(n_in, n_out, scale, mode, align_corners, dtype)
        for n_in, n_out, scale in zip(in_spatial, out_spatial, scales)
    ]


def interpolate(
    input,
    size=None,
    scale_factor=None,
    mode="nearest",
    align_corners=None,
    recompute_scale_factor=None,
    antialias=False,
):
    """Resampling (torch.nn.functional.interpolate), CPU: modes 'nearest' and
    'nearest-exact' on (N, C, L) or (N, C, H, W), 'linear' on (N, C, L), 'bilinear' on
    (N, C, H, W), with ``align_corners`` False (default) or True.

    Sources as PyTorch computes them: with ``scale_factor`` (and no
    ``recompute_scale_factor``) the coordinates scale by 1/scale_factor, otherwise by
    in/out; the output size is floor(in * scale_factor).
    """
    chk.check_array(input, "input")
    if antialias:
        raise ValueError("antialias=True is not supported")
    out_spatial, scales, corners = _interpolate_plan(
        tuple(input.shape), size, scale_factor, mode, align_corners, recompute_scale_factor
    )
    taps = _interpolate_taps(input.shape[2:], out_spatial, scales, mode, corners, input.dtype)
    out = input
    for axis in range(input.ndim - 1, 1, -1):  # width first, then height, as PyTorch sums
        out = _gather_axis(out, taps[axis - 2], axis)
    return np.ascontiguousarray(out, dtype=input.dtype)


def interpolate_backward(
    grad_output,
    input_size,
    size=None,
    scale_factor=None,
    mode="nearest",
    align_corners=None,
    recompute_scale_factor=None,
):
    """Gradient of interpolate wrt its input (same arguments, ``input_size`` its shape)."""
    chk.check_array(grad_output, "grad_output")
    in_shape = chk.size_tuple(input_size, "input_size", (3, 4))
    out_spatial, scales, corners = _interpolate_plan(
        in_shape, size, scale_factor, mode, align_corners, recompute_scale_factor
    )
    chk.check_shape(grad_output, (*in_shape[:2], *out_spatial), "grad_output")
    taps = _interpolate_taps(in_shape[2:], out_spatial, scales, mode, corners, grad_output.dtype)
    grad = grad_output
    for axis in range(2, grad.ndim):  # the forward's order reversed
        grad = _scatter_axis(grad, taps[axis - 2], in_shape[axis], axis)
    return np.ascontiguousarray(grad, dtype=grad_output.dtype)


def _shuffle_input(input, factor, name):
    chk.check_array(input, "input")
    if input.ndim < 3:
        raise ValueError(f"input must have at least 3 dims (*, C, H, W), got shape {input.shape}")
    return chk.positive_int(factor, name)


def pixel_shuffle(input, upscale_factor):
    """(*, C*r*r, H, W) -> (*, C, H*r, W*r) (torch.nn.functional.pixel_shuffle)."""
    r = _shuffle_input(input, upscale_factor, "upscale_factor")
    *batch, c, h, w = input.shape
    if c % (r * r) != 0:
        raise ValueError(
            f"input channels ({c}) must be divisible by upscale_factor squared ({r * r})"
        )
    x = input.reshape(*batch, c // (r * r), r, r, h, w)
    k = len(batch)
    x = x.transpose(*range(k), k, k + 3, k + 1, k + 4, k + 2)
    return np.ascontiguousarray(x).reshape(*batch, c // (r * r), h * r, w * r)


def pixel_unshuffle(input, downscale_factor):
    """(*, C, H*r, W*r) -> (*, C*r*r, H, W) (torch.nn.functional.pixel_unshuffle)."""
    r = _shuffle_input(input, downscale_factor, "downscale_factor")
    *batch, c, h, w = input.shape
    if h % r != 0 or w % r != 0:
        raise ValueError(
            f"input height ({h}) and width ({w}) must be divisible by downscale_factor ({r})"
        )
    x = input.reshape(*batch, c, h // r, r, w // r, r)
    k = len(batch)
    x = x.transpose(*range(k), k, k + 2, k + 4, k + 1, k + 3)
    return np.ascontiguousarray(x).reshape(*batch, c * r * r, h // r, w // r)


# --------------------------------------------------------------------------- other norms
#
# Each normalises rows of the input by their own mean and biased variance: the rows are
# viewed as the channels of a (1, rows, values) batch, so the fused batch_norm kernels
# (double accumulation, deterministic) compute them. ``return_saved`` gives the
# BatchNormSaved of that view: batch_norm_backward of the gradient wrt the normalised
# values, in that view, is the input gradient.


def _row_stats(rows, weight=None, bias=None, eps=1e-5):
    """batch_norm over (1, M, S) rows by their own statistics: (out, saved)."""
    if rows.size == 0:  # an empty batch: nothing to normalise
        empty = np.empty_like(rows)
        return empty, BatchNormSaved(empty, np.zeros(rows.shape[1], rows.dtype), True)
    # training=False without running statistics: batch statistics, and one value per row
    # is allowed (it normalises to 0, as PyTorch's layer_norm gives)
    return batch_norm(rows, None, None, weight, bias, False, 0.0, eps, return_saved=True)


def _norm_input(input, min_ndim, layout):
    chk.check_array(input, "input")
    if input.ndim < min_ndim:
        raise ValueError(f"input must be {layout}, got shape {tuple(input.shape)}")


def _affine(out, weight, bias, shape):
    """out * weight + bias with weight and bias reshaped to ``shape`` (broadcasting)."""
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, return_saved=False):
    """Group normalisation (torch.nn.functional.group_norm), CPU: input (N, C, *); each
    sample's C/num_groups channels per group are normalised together, then
    ``weight[c] * xhat + bias[c]``. ``return_saved``: (out, saved) with saved over
    (1, N * num_groups, C/num_groups * spatial) rows."""
    _norm_input(input, 2, "(N, C, *)")
    groups = chk.positive_int(num_groups, "num_groups")
    n, c = input.shape[:2]
    if c % groups != 0:
        raise ValueError(f"num_groups={groups} must divide the input channels ({c})")
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None:
            chk.check_array(value, name)
            chk.check_shape(value, (c,), name)
    chk.check_same_dtype(input=input, weight=weight, bias=bias)
    spatial = int(np.prod(input.shape[2:], dtype=np.int64))
    rows = input.reshape(1, n * groups, (c // groups) * spatial)
    xhat, saved = _row_stats(rows, eps=eps)
    out = _affine(xhat.reshape(n, c, spatial), weight, bias, (c, 1)).reshape(input.shape)
    return (out, saved) if return_saved else out


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, return_saved=False):
    """Layer normalisation (torch.nn.functional.layer_norm), CPU: the trailing dims
    ``normalized_shape`` are normalised together, then ``weight * xhat + bias``
    elementwise (weight and bias of shape ``normalized_shape``)."""
    chk.check_array(input, "input")
    shape = normalized_shape if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
    shape = chk.size_tuple(tuple(shape), "normalized_shape", tuple(range(1, 33)))
    if tuple(input.shape[input.ndim - len(shape) :]) != shape or input.ndim < len(shape):
        raise ValueError(
            f"input of shape {tuple(input.shape)} does not end in normalized_shape {shape}"
        )
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None:
            chk.check_array(value, name)
            chk.check_shape(value, shape, name)
    chk.check_same_dtype(input=input, weight=weight, bias=bias)
    features = int(np.prod(shape))
    rows = input.reshape(1, input.size // max(features, 1), features)
    xhat, saved = _row_stats(rows, eps=eps)
    out = _affine(xhat.reshape(rows.shape[1:]), weight, bias, (features,)).reshape(input.shape)
    return (out, saved) if return_saved else out


def instance_norm(
    input,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
    *,
    return_saved=False,
):
    """Instance normalisation (torch.nn.functional.instance_norm), CPU: input (N, C, *);
    each sample's channel is normalised by its own statistics (``use_input_stats``) or by
    the running ones, then ``weight[c] * xhat + bias[c]``. With input statistics, given
    running statistics move toward the samples' average, as PyTorch's do. ``return_saved``:
    (out, saved) with saved over (1, N*C, spatial) rows."""
    _norm_input(input, 3, "(N, C, *) with at least one spatial dim")
    n, c = input.shape[:2]
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None")
    named = {"running_mean": running_mean, "running_var": running_var}
    for name, value in {**named, "weight": weight, "bias": bias}.items():
        if value is not None:
            chk.check_array(value, name)
            chk.check_shape(value, (c,), name)
    chk.check_same_dtype(input=input, weight=weight, bias=bias)
    if not use_input_stats and running_mean is None:
        raise ValueError("use_input_stats=False needs running_mean and running_var")
    spatial = int(np.prod(input.shape[2:], dtype=np.int64))
    if use_input_stats and spatial <= 1:
        raise ValueError(
            f"expected more than 1 spatial element per channel, got input shape {input.shape}"
        )
    rows = input.reshape(1, n * c, spatial)
    tiled = [None if v is None else np.tile(v.astype(input.dtype), n) for v in (weight, bias)]
    if use_input_stats and running_mean is None:
        out, saved = _row_stats(rows, *tiled, eps=eps)
    elif use_input_stats:
        # PyTorch updates a copy of the running statistics per sample and keeps their mean
        mean_rows, var_rows = np.tile(running_mean, n), np.tile(running_var, n)
        out, saved = batch_norm(
            rows, mean_rows, var_rows, *tiled, True, momentum, eps, return_saved=True
        )
        running_mean[...] = mean_rows.reshape(n, c).mean(axis=0)
        running_var[...] = var_rows.reshape(n, c).mean(axis=0)
    else:
        mean_rows = np.tile(running_mean.astype(input.dtype), n)
        var_rows = np.tile(running_var.astype(input.dtype), n)
        out, saved = batch_norm(
            rows, mean_rows, var_rows, *tiled, False, 0.0, eps, return_saved=True
        )
    out = out.reshape(input.shape)
    return (out, saved) if return_saved else out
