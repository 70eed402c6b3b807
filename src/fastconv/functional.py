"""The public functional API: normalise and validate once, then dispatch.

Every op follows the same three steps:
1. validate and normalise the arguments (``_checks``), shared by every backend;
2. pick the backend from the array kind: NumPy arrays run the C++ kernels in
   ``fastconv._C``; CUDA device arrays run ``fastconv.cuda``;
3. return an array of the same kind as the input.

Names, argument order, defaults and semantics follow ``torch.nn.functional``
and ``torch.nn.grad``. Inputs are NCHW; a 3-D (C, H, W) input is a batch of one
and gives a 3-D result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _C
from . import _checks as chk

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv2d",
    "conv2d_input",
    "conv2d_weight",
    "gemm",
    "get_num_threads",
    "linear",
    "matmul",
    "max_pool2d",
    "max_pool2d_backward",
    "set_num_threads",
]


def set_num_threads(n: int) -> None:
    """Threads used by the CPU kernels (process-wide; default: OpenMP's default)."""
    _C.set_num_threads(chk.positive_int(n, "n"))


def get_num_threads() -> int:
    return int(_C.get_num_threads())


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
        return x.reshape((1, *x.shape)), True
    return x, False


def _host_contiguous(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x)


# --------------------------------------------------------------------------- pooling


@dataclass(frozen=True)
class PoolWindow:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (
            _pool_output_size(height, self.kernel[0], self.stride[0], self.padding[0],
                              self.dilation[0], self.ceil_mode),
            _pool_output_size(width, self.kernel[1], self.stride[1], self.padding[1],
                              self.dilation[1], self.ceil_mode),
        )


def _pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int,
                      ceil_mode: bool) -> int:
    """PyTorch's pooling_output_shape, including its ceil_mode rule that a window
    starting inside the right padding is dropped."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_window(kernel_size, stride, padding, dilation, ceil_mode) -> PoolWindow:
    kernel = chk.positive_pair(kernel_size, "kernel_size")
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        strides = kernel
    else:
        strides = chk.positive_pair(stride, "stride")
    pads = chk.non_negative_pair(padding, "padding")
    dilations = chk.positive_pair(dilation, "dilation")
    # PyTorch's rule compares with the kernel size itself, not the dilated extent.
    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        raise ValueError(
            f"padding {padding!r} must be at most half of kernel_size {kernel_size!r}"
        )
    return PoolWindow(kernel, strides, pads, dilations, bool(ceil_mode))


def _pool_input(input: Any, name: str = "input") -> tuple[Any, bool, bool]:
    device = _on_device(input)
    chk.check_array(input, name, device=device)
    chk.check_ndim(input, name, (3, 4), "(N, C, H, W) or (C, H, W)")
    if min(input.shape[-3:]) == 0:
        raise ValueError(f"{name} must have non-zero C, H and W, got shape {tuple(input.shape)}")
    return input, device, input.ndim == 3


def _pool_output_hw(window: PoolWindow, shape: tuple[int, ...], name: str) -> tuple[int, int]:
    out_h, out_w = window.output_size(shape[-2], shape[-1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{name} of spatial size {tuple(shape[-2:])} is too small for this pooling window: "
            f"output size would be ({out_h}, {out_w})"
        )
    return out_h, out_w


def _native_window(window: PoolWindow, count_include_pad=True, divisor_override=0) -> tuple:
    return (*window.kernel, *window.stride, *window.padding, *window.dilation,
            bool(count_include_pad), int(divisor_override))


def _divisor(divisor_override: Any) -> int:
    if divisor_override is None:
        return 0
    value = chk.as_int(divisor_override, "divisor_override")
    if value == 0:
        raise ValueError("divisor_override must be non-zero")
    return value


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling (torch.nn.functional.max_pool2d).

    A NaN in a window wins; an all -inf window gives -inf. Indices (int64) are
    flat positions h * W + w inside each input plane, as PyTorch returns them.
    """
    input, device, unbatched = _pool_input(input)
    window = _pool_window(kernel_size, stride, padding, dilation, ceil_mode)
    out_h, out_w = _pool_output_hw(window, input.shape, "input")
    x, _ = _batched(input)
    n, c, h, w = x.shape
    if device:
        out, indices = _cuda_backend().max_pool2d(x, window, (out_h, out_w))
    else:
        x = _host_contiguous(x)
        out = np.empty((n, c, out_h, out_w), dtype=x.dtype)
        indices = np.empty((n, c, out_h, out_w), dtype=np.int64)
        if n > 0:
            _C.max_pool2d_forward(x.reshape(n * c, h, w), out.reshape(n * c, out_h, out_w),
                                  indices.reshape(n * c, out_h, out_w), _native_window(window))
    if unbatched:
        out, indices = out[0], indices[0]
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
    n, c = g.shape[:2]
    h, w = size[-2:]
    grad_input = np.empty((n, c, h, w), dtype=g.dtype)
    if grad_input.size:
        if g.shape[2] * g.shape[3] == 0:
            grad_input.fill(0)
        else:
            g = _host_contiguous(g)
            _C.max_pool2d_backward(g.reshape(n * c, *g.shape[2:]),
                                   _host_contiguous(idx).reshape(n * c, *g.shape[2:]),
                                   grad_input.reshape(n * c, h, w))
    return grad_input[0] if unbatched else grad_input


def _avg_window(kernel_size, stride, padding, ceil_mode):
    return _pool_window(kernel_size, stride, padding, 1, ceil_mode)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """2-D average pooling (torch.nn.functional.avg_pool2d)."""
    input, device, unbatched = _pool_input(input)
    window = _avg_window(kernel_size, stride, padding, ceil_mode)
    divisor = _divisor(divisor_override)
    out_h, out_w = _pool_output_hw(window, input.shape, "input")
    x, _ = _batched(input)
    n, c, h, w = x.shape
    if device:
        out = _cuda_backend().avg_pool2d(x, window, (out_h, out_w), bool(count_include_pad),
                                         divisor)
    else:
        x = _host_contiguous(x)
        out = np.empty((n, c, out_h, out_w), dtype=x.dtype)
        if n > 0:
            _C.avg_pool2d_forward(x.reshape(n * c, h, w), out.reshape(n * c, out_h, out_w),
                                  _native_window(window, count_include_pad, divisor))
    return out[0] if unbatched else out


def avg_pool2d_backward(grad_output, input_size, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
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
        result = _cuda_backend().avg_pool2d_backward(g, (n, c, h, w), window,
                                                     bool(count_include_pad), divisor)
        return result[0] if unbatched else result
    grad_input = np.empty((n, c, h, w), dtype=g.dtype)
    if n > 0:
        g = _host_contiguous(g)
        _C.avg_pool2d_backward(g.reshape(n * c, *out_hw), grad_input.reshape(n * c, h, w),
                               _native_window(window, count_include_pad, divisor))
    return grad_input[0] if unbatched else grad_input
