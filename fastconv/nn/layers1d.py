"""1-D layers for sequences and audio: ``Conv1d``, ``MaxPool1d`` and ``AvgPool1d``.

Each runs on the 2-D kernels with planes of one row (see ``fastconv.functional.conv1d``);
inputs are (N, C, L) or, unbatched, (C, L).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .._checks import as_int, check_layer_input
from ..geometry import conv_padding
from .conv_transpose import conv_repr
from .layers import _PAD_MODES, Conv2d, _check_device, _dtype
from .module import Module, Parameter

__all__ = ["AvgPool1d", "Conv1d", "MaxPool1d"]


def _single(value: Any, name: str) -> tuple[int]:
    """An int or a 1-sequence of ints as a 1-tuple (PyTorch's _single)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(f"{name} must be an int or a 1-tuple of ints, got {value!r}")
        value = value[0]
    return (as_int(value, name, expected="an int or a 1-tuple of ints"),)


def _as_rows(x: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """An (N, C, L) view of an (N, C, L) or (C, L) input, and whether it was unbatched."""
    if x.ndim == 2:
        return x[None], True
    if x.ndim != 3:
        raise ValueError(f"{name}: expected a 2-D (C, L) or 3-D (N, C, L) input, got {x.shape}")
    return x, False


class Conv1d(Module):
    """1-D convolution (``torch.nn.Conv1d``): weight (out, in/groups, kL), bias (out,).

    ``padding`` is an int, a 1-tuple, ``'same'`` or ``'valid'``; ``padding_mode`` is
    ``'zeros'`` (default), ``'reflect'``, ``'replicate'`` or ``'circular'``. Initialised
    as PyTorch does (kaiming_uniform(a=sqrt(5)); bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
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
        self.kernel_size = _single(kernel_size, "kernel_size")
        self.stride = _single(stride, "stride")
        self.dilation = _single(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}"
                )
            if padding == "same" and self.stride != (1,):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding: Any = padding
        else:
            self.padding = _single(padding, "padding")
        self.output_padding = (0,)
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

    reset_parameters = Conv2d.reset_parameters

    def _pad_map(self, length: int) -> np.ndarray:
        """The input position each padded position reads, for the non-zero padding modes."""
        padding = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        (_, _), (left, right) = conv_padding(padding, (1, *self.kernel_size), (1, *self.dilation))
        mode = _PAD_MODES[self.padding_mode]
        limit = length - 1 if mode == "reflect" else length
        if max(left, right) > limit:
            raise ValueError(
                f"padding ({left}, {right}) is too large for padding_mode="
                f"'{self.padding_mode}' on a dimension of size {length}"
            )
        return np.pad(np.arange(length), (left, right), mode=mode)

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        x, unbatched = _as_rows(input, "Conv1d")
        if self.padding_mode == "zeros":
            xp, padding = x, self.padding
        else:
            xp, padding = x[:, :, self._pad_map(x.shape[2])], 0
        bias = None if self.bias is None else self.bias.data
        out = F.conv1d(xp, self.weight.data, bias, self.stride, padding, self.dilation, self.groups)
        self.save_for_backward(xp, x.shape, padding, unbatched)
        return out[0] if unbatched else out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        xp, x_shape, padding, unbatched = self.saved_tensors()
        g = grad_output[None] if unbatched else grad_output
        weight = self.weight
        args = (self.stride, padding, self.dilation, self.groups)
        if weight.requires_grad:
            weight.accumulate_grad(F.conv1d_weight(xp, weight.data.shape, g, *args))
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate_grad(g.sum(axis=(0, 2), dtype=g.dtype))
        if not self.needs_input_grad:
            return None
        grad_xp = F.conv1d_input(xp.shape, weight.data, g, *args)
        if self.padding_mode == "zeros":
            grad_x = grad_xp
        else:
            # adjoint of the gather x[:, :, positions]: a one-hot matrix
            positions = self._pad_map(x_shape[2])
            one_hot = (positions[:, None] == np.arange(x_shape[2])[None, :]).astype(g.dtype)
            grad_x = np.matmul(grad_xp, one_hot)
        return grad_x[0] if unbatched else grad_x

    def extra_repr(self) -> str:
        return conv_repr(self)


class MaxPool1d(Module):
    """``torch.nn.MaxPool1d``; with ``return_indices`` forward returns (output, indices)."""

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
        out, indices = F.max_pool1d(
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
        return F.max_pool1d_backward(grad_output, indices, shape)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class AvgPool1d(Module):
    """``torch.nn.AvgPool1d`` (its sizes are kept as 1-tuples, as PyTorch keeps them)."""

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__()
        self.kernel_size = _single(kernel_size, "kernel_size")
        self.stride = _single(stride if stride is not None else kernel_size, "stride")
        self.padding = _single(padding, "padding")
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad

    def _args(self) -> tuple:
        return self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        self.save_for_backward(input.shape)
        return F.avg_pool1d(input, *self._args())

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (shape,) = self.saved_tensors()
        return F.avg_pool1d_backward(grad_output, shape, *self._args())

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
