"""Layers with PyTorch's constructors, defaults, initialisation and ``repr``.

Convolution, pooling and matrix products go through :mod:`fastconv.functional`
(the fast kernels); elementwise work (activations, batch statistics) is NumPy.
Every layer keeps its input dtype: float32 stays float32, float64 stays float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import functional as F
from .._checks import check_layer_input, int_pair
from ..geometry import conv_padding
from . import init
from .module import Module, Parameter, is_grad_enabled

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "Identity",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "ReLU6",
    "Sigmoid",
    "Tanh",
]


def _dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"layers support float32 and float64, got {dtype}")
    return dtype


def _check_device(device: Any) -> None:
    if device not in (None, "cpu"):
        raise ValueError(f"fastconv layers hold NumPy arrays on the CPU; got device={device!r}")


def _as_batch(x: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """A 4-D view of an NCHW or CHW input, and whether it was unbatched."""
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(
            f"{name}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape {x.shape}"
        )
    return x, False


# --------------------------------------------------------------------------- convolution

_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


class Conv2d(Module):
    """2-D convolution (``torch.nn.Conv2d``): weight (out, in/groups, kH, kW), bias (out,).

    ``padding`` is an int, a pair, ``'same'`` or ``'valid'``; ``padding_mode`` is
    ``'zeros'`` (default), ``'reflect'``, ``'replicate'`` or ``'circular'``.
    Weights are drawn from kaiming_uniform(a=sqrt(5)) and the bias from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as PyTorch does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        _check_device(device)
        dtype = _dtype(dtype)
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode not in ("zeros", *_PAD_MODES):
            raise ValueError(
                f"padding_mode must be one of 'zeros', 'reflect', 'replicate' or "
                f"'circular', but got padding_mode='{padding_mode}'"
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.stride = int_pair(stride, "stride")
        self.dilation = int_pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}"
                )
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding: Any = padding
        else:
            self.padding = int_pair(padding, "padding")
        self.output_padding = (0, 0)
        self.transposed = False
        self.groups = int(groups)
        self.padding_mode = padding_mode
        self.weight = Parameter(
            np.empty((out_channels, in_channels // groups, *self.kernel_size), dtype=dtype)
        )
        if bias:
            self.bias = Parameter(np.empty(out_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def _explicit_padding(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right), as PyTorch pads for non-zero padding modes."""
        (top, bottom), (left, right) = conv_padding(self.padding, self.kernel_size, self.dilation)
        return top, bottom, left, right

    def _pad_maps(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        top, bottom, left, right = self._explicit_padding()
        mode = _PAD_MODES[self.padding_mode]
        for size, lo, hi in ((h, top, bottom), (w, left, right)):
            limit = size - 1 if mode == "reflect" else size
            if max(lo, hi) > limit:
                raise ValueError(
                    f"padding ({lo}, {hi}) is too large for padding_mode="
                    f"'{self.padding_mode}' on a dimension of size {size}"
                )
        rows = np.pad(np.arange(h), (top, bottom), mode=mode)
        cols = np.pad(np.arange(w), (left, right), mode=mode)
        return rows, cols

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        x, unbatched = _as_batch(input, "Conv2d")
        weight = self.weight.data
        bias = None if self.bias is None else self.bias.data
        if self.padding_mode == "zeros":
            xp, padding = x, self.padding
        else:
            rows, cols = self._pad_maps(x.shape[2], x.shape[3])
            xp, padding = x[:, :, rows][:, :, :, cols], 0
        out = F.conv2d(xp, weight, bias, self.stride, padding, self.dilation, self.groups)
        self.save_for_backward(xp, x.shape, padding, unbatched)
        return out[0] if unbatched else out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        xp, x_shape, padding, unbatched = self.saved_tensors()
        g = grad_output[None] if unbatched else grad_output
        weight = self.weight
        args = (self.stride, padding, self.dilation, self.groups)
        if weight.requires_grad:
            weight.accumulate_grad(F.conv2d_weight(xp, weight.data.shape, g, *args))
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate_grad(F.conv2d_bias_grad(g))
        if not self.needs_input_grad:
            return None
        grad_xp = F.conv2d_input(xp.shape, weight.data, g, *args)
        if self.padding_mode == "zeros":
            grad_x = grad_xp
        else:
            rows, cols = self._pad_maps(x_shape[2], x_shape[3])
            # adjoint of the gather x[:, :, rows][:, :, :, cols]: one-hot matrices
            ph = (rows[:, None] == np.arange(x_shape[2])[None, :]).astype(grad_xp.dtype)
            pw = (cols[:, None] == np.arange(x_shape[3])[None, :]).astype(grad_xp.dtype)
            grad_x = np.matmul(np.matmul(ph.T, grad_xp), pw)
        return grad_x[0] if unbatched else grad_x

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Linear(Module):
    """``y = x @ weight.T + bias`` (``torch.nn.Linear``), weight (out_features, in_features)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        _check_device(device)
        dtype = _dtype(dtype)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dtype))
        if bias:
            self.bias = Parameter(np.empty(out_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        out = F.linear(input, self.weight.data, None if self.bias is None else self.bias.data)
        self.save_for_backward(input)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (x,) = self.saved_tensors()
        rows = x.reshape(-1, self.in_features)
        g = grad_output.reshape(-1, self.out_features)
        if self.weight.requires_grad:
            self.weight.accumulate_grad(F.gemm(g, rows, trans_a=True))
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate_grad(g.sum(axis=0))
        if not self.needs_input_grad:
            return None
        return F.gemm(g, self.weight.data).reshape(x.shape)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


# --------------------------------------------------------------------------- pooling


class MaxPool2d(Module):
    """``torch.nn.MaxPool2d``; with ``return_indices`` forward returns (output, indices)."""

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        dilation: Any = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if (stride is not None) else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, input: np.ndarray) -> Any:
        check_layer_input(input)
        out, indices = F.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            return_indices=True,
        )
        self.save_for_backward(indices, input.shape)
        return (out, indices) if self.return_indices else out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        indices, shape = self.saved_tensors()
        return F.max_pool2d_backward(grad_output, indices, shape)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(Module):
    """``torch.nn.AvgPool2d``."""

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if (stride is not None) else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override

    def _args(self) -> tuple:
        return (
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        self.save_for_backward(input.shape)
        return F.avg_pool2d(input, *self._args())

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (shape,) = self.saved_tensors()
        return F.avg_pool2d_backward(grad_output, shape, *self._args())

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _adaptive_matrix(size: int, out: int, dtype: np.dtype) -> np.ndarray:
    """(out, size) averaging matrix with PyTorch's bins [floor(i*s/o), ceil((i+1)*s/o))."""
    i = np.arange(out)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)
    cols = np.arange(size)
    inside = (cols[None, :] >= start[:, None]) & (cols[None, :] < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


class AdaptiveAvgPool2d(Module):
    """``torch.nn.AdaptiveAvgPool2d``: any output size (an int, a pair, None keeps a dim).

    ``AdaptiveAvgPool2d(1)`` is global average pooling.  PyTorch's bins: output
    cell i averages input rows floor(i*H/OH) .. ceil((i+1)*H/OH) - 1.
    """

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = output_size

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        size = self.output_size
        oh, ow = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
        oh = h if oh is None else int(oh)
        ow = w if ow is None else int(ow)
        if oh <= 0 or ow <= 0:
            raise ValueError(f"output_size must be positive, got {self.output_size!r}")
        return oh, ow

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        x, unbatched = _as_batch(input, "AdaptiveAvgPool2d")
        h, w = x.shape[2:]
        oh, ow = self._out_hw(h, w)
        self.save_for_backward(x.shape, unbatched)
        if (oh, ow) == (1, 1):
            out = x.mean(axis=(2, 3), keepdims=True)
        elif h % oh == 0 and w % ow == 0:
            n, c = x.shape[:2]
            out = x.reshape(n, c, oh, h // oh, ow, w // ow).mean(axis=(3, 5))
        else:
            mh = _adaptive_matrix(h, oh, x.dtype)
            mw = _adaptive_matrix(w, ow, x.dtype)
            out = np.matmul(np.matmul(mh, x), mw.T)
        return out[0] if unbatched else out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        shape, unbatched = self.saved_tensors()
        g = grad_output[None] if unbatched else grad_output
        h, w = shape[2:]
        oh, ow = g.shape[2:]
        if (oh, ow) == (1, 1):
            scale = g.dtype.type(1.0 / (h * w))
            grad = np.broadcast_to(g * scale, shape).copy()
        else:
            mh = _adaptive_matrix(h, oh, g.dtype)
            mw = _adaptive_matrix(w, ow, g.dtype)
            grad = np.matmul(np.matmul(mh.T, g), mw)
        return grad[0] if unbatched else grad

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


# --------------------------------------------------------------------------- activations


class Identity(Module):
    """Returns its input (``torch.nn.Identity``); extra constructor arguments are ignored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        return input

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return grad_output


class ReLU(Module):
    """max(x, 0).  With ``inplace`` and autograd off (``no_grad``, inference) the
    result overwrites the input; while training outputs are new arrays (the layer
    before may have kept its output for its own backward: Tanh and Sigmoid do, and
    nothing here can tell).  NaN follows PyTorch: it passes forward, and lets the
    gradient through."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, input: np.ndarray) -> np.ndarray:
        return self._activate(input, self.inplace and not is_grad_enabled())

    def _activate(self, input: np.ndarray, inplace: bool) -> np.ndarray:  # F checks input
        out = F.relu(input, inplace=inplace)
        self.save_for_backward(out)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (out,) = self.saved_tensors()
        return F.relu_backward(np.asarray(grad_output, dtype=out.dtype), out)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class ReLU6(Module):
    """min(max(x, 0), 6) (``torch.nn.ReLU6``, MobileNetV2's activation).

    As PyTorch's ``hardtanh`` backward, the gradient passes only strictly inside
    (0, 6).  ``inplace`` as :class:`ReLU`'s.
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, input: np.ndarray) -> np.ndarray:
        return self._activate(input, self.inplace and not is_grad_enabled())

    def _activate(self, input: np.ndarray, inplace: bool) -> np.ndarray:  # F checks input
        out = F.relu6(input, inplace=inplace)
        self.save_for_backward(out)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (out,) = self.saved_tensors()
        return F.relu6_backward(np.asarray(grad_output, dtype=out.dtype), out)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 1e-2, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        mask = input > 0
        self.save_for_backward(mask)
        return np.where(mask, input, input * input.dtype.type(self.negative_slope))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (mask,) = self.saved_tensors()
        slope = grad_output.dtype.type(self.negative_slope)
        return np.where(mask, grad_output, grad_output * slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(Module):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x/2)) / 2 (no overflow)."""

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        half = input.dtype.type(0.5)
        out = half * (np.tanh(input * half) + input.dtype.type(1))
        self.save_for_backward(out)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (out,) = self.saved_tensors()
        return grad_output * out * (out.dtype.type(1) - out)


class Tanh(Module):
    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        out = np.tanh(input)
        self.save_for_backward(out)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (out,) = self.saved_tensors()
        return grad_output * (out.dtype.type(1) - out * out)


class Flatten(Module):
    """Flattens dims ``start_dim`` .. ``end_dim`` into one (``torch.nn.Flatten``)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        shape = input.shape
        ndim = max(input.ndim, 1)
        start = self.start_dim % ndim
        end = self.end_dim % ndim
        if start > end:
            raise ValueError("flatten() has invalid args: start_dim cannot come after end_dim")
        self.save_for_backward(shape)
        return input.reshape(*shape[:start], -1, *shape[end + 1 :])

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (shape,) = self.saved_tensors()
        return grad_output.reshape(shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training, scaling the rest by 1/(1-p).

    Identity in eval mode.  Masks come from ``generator`` (a ``numpy.random.Generator``)
    if given, else from :func:`fastconv.nn.init.default_generator` (reseed it with
    :func:`fastconv.nn.manual_seed`).
    """

    def __init__(
        self, p: float = 0.5, inplace: bool = False, *, generator: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        if p < 0 or p > 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace
        self.generator = generator

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        if not self.training or self.p == 0:
            self.save_for_backward(None)
            return input
        rng = self.generator if self.generator is not None else init.default_generator()
        if self.p == 1:
            mask = np.zeros_like(input)
        else:
            keep = rng.random(input.shape, dtype=input.dtype) >= self.p
            mask = keep * input.dtype.type(1.0 / (1.0 - self.p))
        self.save_for_backward(mask)
        return input * mask

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (mask,) = self.saved_tensors()
        return grad_output if mask is None else grad_output * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


# --------------------------------------------------------------------------- normalisation


class BatchNorm2d(Module):
    """``torch.nn.BatchNorm2d`` over the C dim of an (N, C, H, W) input.

    Training mode normalises with the batch statistics (biased variance) and, with
    ``track_running_stats``, updates ``running_mean`` / ``running_var`` (unbiased
    variance) with ``momentum`` (``None``: cumulative average) and counts
    ``num_batches_tracked``.  Eval mode uses the running statistics.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_device(device)
        dtype = _dtype(dtype)
        self.num_features = int(num_features)
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        object.__setattr__(self, "_xhat_buffer", None)  # reused between steps (forward)
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype))
            if bias:
                self.bias = Parameter(np.zeros(num_features, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input: np.ndarray) -> np.ndarray:
        return self._normalise(input, None)

    def _normalise(self, input: np.ndarray, activation: str | None) -> np.ndarray:
        check_layer_input(input)
        if input.ndim != 4:
            raise ValueError(f"expected 4D input (got {input.ndim}D input)")
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm2d({self.num_features}) got an input with {input.shape[1]} channels"
            )
        if input.dtype not in (np.float32, np.float64):
            raise TypeError(f"BatchNorm2d: input must be float32 or float64, got {input.dtype}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked += 1
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        dtype = input.dtype
        weight = None if self.weight is None else self.weight.data.astype(dtype, copy=False)
        bias = None if self.bias is None else self.bias.data.astype(dtype, copy=False)
        keep = is_grad_enabled()  # what backward needs, only when it can run
        # The normalised input kept for backward goes into last step's array when no
        # pending backward still needs it (a fresh 10-100 MB array costs its page
        # faults on every step).
        reuse = self._xhat_buffer if keep and not self._saved else None
        if reuse is not None and (reuse.shape != input.shape or reuse.dtype != input.dtype):
            reuse = None
        result = F.batch_norm(
            input,
            # running statistics update only in training; otherwise the batch normalises
            self.running_mean if not use_batch or self.training else None,
            self.running_var if not use_batch or self.training else None,
            weight,
            bias,
            training=use_batch,
            momentum=factor,
            eps=self.eps,
            return_saved=keep,
            activation=activation,
            saved_into=reuse,
        )
        if not keep:
            return result
        out, saved = result
        object.__setattr__(self, "_xhat_buffer", saved.xhat.reshape(input.shape))
        self.save_for_backward(saved, weight, input.dtype)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        saved, weight, dtype = self.saved_tensors()
        grad_input, grad_weight, grad_bias = F.batch_norm_backward(
            np.asarray(grad_output, dtype=dtype), saved, weight
        )
        if self.weight is not None and self.weight.requires_grad:
            self.weight.accumulate_grad(grad_weight)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate_grad(grad_bias)
        return grad_input

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )


# The activations batch_norm_activation fuses into the normalisation pass.
_FUSED_CLAMPS = {ReLU: "relu", ReLU6: "relu6"}


def fuses(norm: Module, activation: Module) -> bool:
    """Whether :func:`batch_norm_activation` fuses this pair."""
    return (
        type(norm) is BatchNorm2d
        and type(activation) in _FUSED_CLAMPS
        and not norm._forward_hooks
        and not activation._forward_hooks
    )


def batch_norm_activation(norm: Module, activation: Module, input: np.ndarray) -> np.ndarray:
    """``activation(norm(input))``, with a ReLU or ReLU6 clamp fused into a
    BatchNorm2d's pass over the data when no hook watches either layer: the same values
    and the same saved state (each layer's ``backward`` runs as after two calls), one
    pass and one array fewer. Any other pair runs as the two calls."""
    if not fuses(norm, activation):
        return activation(norm(input))
    out = norm._normalise(input, _FUSED_CLAMPS[type(activation)])
    activation.save_for_backward(out)
    return out


def activation_in_place(activation: Module, input: np.ndarray) -> np.ndarray:
    """``activation(input)`` written over ``input``, for an input that no layer keeps
    for its backward (a residual sum), with or without autograd: a ReLU or ReLU6 that
    no hook watches; any other activation runs as a plain call."""
    if type(activation) not in _FUSED_CLAMPS or activation._forward_hooks:
        return activation(input)
    return activation._activate(input, True)
