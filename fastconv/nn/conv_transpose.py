"""``ConvTranspose2d`` (``torch.nn.ConvTranspose2d``): decoders, U-Nets and GAN generators.

Its three passes are the convolution kernels' with the roles swapped: the forward pass
is ``conv2d_input``, the input gradient ``conv2d`` and the weight gradient
``conv2d_weight`` (see :func:`fastconv.functional.conv_transpose2d`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .._checks import check_layer_input, int_pair
from .layers import Conv2d, _as_batch, _check_device, _dtype
from .module import Module, Parameter

__all__ = ["ConvTranspose2d", "conv_repr"]


def conv_repr(conv: Module) -> str:
    """torch's ``_ConvNd.extra_repr``: non-default arguments only."""
    dims = len(conv.kernel_size)
    s = (
        f"{conv.in_channels}, {conv.out_channels}, kernel_size={conv.kernel_size}, "
        f"stride={conv.stride}"
    )
    if conv.padding != (0,) * dims:
        s += f", padding={conv.padding}"
    if conv.dilation != (1,) * dims:
        s += f", dilation={conv.dilation}"
    if conv.output_padding != (0,) * dims:
        s += f", output_padding={conv.output_padding}"
    if conv.groups != 1:
        s += f", groups={conv.groups}"
    if conv.bias is None:
        s += ", bias=False"
    if conv.padding_mode != "zeros":
        s += f", padding_mode={conv.padding_mode}"
    return s


class ConvTranspose2d(Module):
    """Transposed 2-D convolution: weight (in, out/groups, kH, kW), bias (out,).

    ``forward(input, output_size=None)``: ``output_size`` (the full shape or its last two
    entries) picks the output_padding that gives it, as in PyTorch. Only
    ``padding_mode='zeros'`` exists, as in PyTorch. Weights and bias are drawn as
    PyTorch draws them: kaiming_uniform(a=sqrt(5)), whose fan-in is
    ``out_channels / groups * kH * kW`` for this layout.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        output_padding: Any = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: Any = 1,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        _check_device(device)
        dtype = _dtype(dtype)
        if padding_mode != "zeros":
            raise ValueError(
                f'Only "zeros" padding mode is supported for ConvTranspose2d, got {padding_mode!r}'
            )
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        if isinstance(padding, str):
            raise ValueError(f"ConvTranspose2d takes no padding string, got padding={padding!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.stride = int_pair(stride, "stride")
        self.padding = int_pair(padding, "padding")
        self.dilation = int_pair(dilation, "dilation")
        self.output_padding = int_pair(output_padding, "output_padding")
        self.transposed = True
        self.groups = int(groups)
        self.padding_mode = padding_mode
        self.weight = Parameter(
            np.empty((in_channels, out_channels // groups, *self.kernel_size), dtype=dtype)
        )
        if bias:
            self.bias = Parameter(np.empty(out_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    reset_parameters = Conv2d.reset_parameters

    def extra_repr(self) -> str:
        return conv_repr(self)

    def _output_padding(self, input_shape: tuple[int, ...], output_size: Any) -> tuple[int, int]:
        """PyTorch's rule: the output_padding that makes the output ``output_size``."""
        if output_size is None:
            return self.output_padding
        size = tuple(int(s) for s in output_size)
        non_spatial = len(input_shape) - 2
        if len(size) == non_spatial + 2:
            size = size[non_spatial:]
        if len(size) != 2:
            raise ValueError(
                f"ConvTranspose2D: for {len(input_shape)}D input, output_size must have 2 or "
                f"{non_spatial + 2} elements (got {len(tuple(output_size))})"
            )
        smallest = [
            (n - 1) * s - 2 * p + d * (k - 1) + 1
            for n, s, p, d, k in zip(
                input_shape[-2:], self.stride, self.padding, self.dilation, self.kernel_size
            )
        ]
        largest = [low + s - 1 for low, s in zip(smallest, self.stride)]
        for want, low, high in zip(size, smallest, largest):
            if not low <= want <= high:
                raise ValueError(
                    f"requested an output size of {list(size)}, but valid sizes range from "
                    f"{smallest} to {largest} (for an input of {list(input_shape[-2:])})"
                )
        return size[0] - smallest[0], size[1] - smallest[1]

    def _args(self, output_padding: tuple[int, int]) -> tuple:
        return self.stride, self.padding, output_padding, self.groups, self.dilation

    def forward(self, input: np.ndarray, output_size: Any = None) -> np.ndarray:
        check_layer_input(input)
        x, unbatched = _as_batch(input, "ConvTranspose2d")
        output_padding = self._output_padding(input.shape, output_size)
        bias = None if self.bias is None else self.bias.data
        out = F.conv_transpose2d(x, self.weight.data, bias, *self._args(output_padding))
        self.save_for_backward(x, output_padding, unbatched)
        return out[0] if unbatched else out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        x, output_padding, unbatched = self.saved_tensors()
        g = grad_output[None] if unbatched else grad_output
        args = self._args(output_padding)
        weight = self.weight
        if weight.requires_grad:
            weight.accumulate_grad(F.conv_transpose2d_weight(x, weight.data.shape, g, *args))
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate_grad(F.conv2d_bias_grad(g))
        if not self.needs_input_grad:
            return None
        grad_x = F.conv_transpose2d_input(x.shape, weight.data, g, *args)
        return grad_x[0] if unbatched else grad_x
