"""Window arithmetic shared by every part of fastconv: output sizes, padding, geometry.

One place for the formulas, used by ``functional`` (validation), ``reference`` (the
spec), the CPU and CUDA backends, ``nn`` and the benchmarks. Pure Python, no NumPy
arrays: every function works on ints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ConvGeometry",
    "PoolWindow",
    "conv_output_size",
    "conv_padding",
    "pair",
    "pool_output_size",
    "same_padding",
]


def pair(x):
    """Normalise an int or a 1- or 2-sequence of ints to an ``(h, w)`` tuple of ints."""
    if isinstance(x, (int, np.integer)):
        return (int(x), int(x))
    t = tuple(int(v) for v in x)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {x!r}")
    return t


def conv_output_size(size, kernel, stride=1, padding=0, dilation=1):
    """Output length of a convolution along one dimension.

    ``out = floor((size + p_lo + p_hi - dilation*(kernel-1) - 1) / stride) + 1``

    ``padding`` is an int (the same on both sides) or a ``(p_lo, p_hi)`` pair.
    """
    lo, hi = (padding, padding) if isinstance(padding, (int, np.integer)) else padding
    return (size + lo + hi - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """Output length of a pooling op along one dimension (PyTorch's ``pooling_output_shape``).

    ``out = floor_or_ceil((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1``;
    with ``ceil_mode``, a last window that would start inside the right padding
    (``(out-1)*stride >= size + padding``) is dropped.
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def same_padding(kernel_size, dilation=1):
    """PyTorch's ``padding='same'`` split: ``((top, bottom), (left, right))``.

    Per dim the total padding is ``dilation*(kernel-1)``; ``total // 2`` goes before and the
    odd pixel, if any, after (bottom/right).  Only meaningful with stride 1.
    """
    pads = []
    for k, d in zip(pair(kernel_size), pair(dilation)):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def conv_padding(padding, kernel_size, dilation=1):
    """Any conv ``padding`` argument as explicit ``((top, bottom), (left, right))``.

    Accepts an int, an ``(ph, pw)`` pair, ``'valid'`` (no padding) or ``'same'``.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            return same_padding(kernel_size, dilation)
        raise ValueError(f"invalid padding string {padding!r}")
    ph, pw = pair(padding)
    return ((ph, ph), (pw, pw))


@dataclass(frozen=True)
class ConvGeometry:
    """Normalised convolution arguments; padding is explicit per side."""

    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    dilation: tuple[int, int]
    groups: int

    def output_size(self, height: int, width: int, kernel: tuple[int, int]) -> tuple[int, int]:
        top, bottom, left, right = self.padding
        return (
            conv_output_size(height, kernel[0], self.stride[0], (top, bottom), self.dilation[0]),
            conv_output_size(width, kernel[1], self.stride[1], (left, right), self.dilation[1]),
        )


@dataclass(frozen=True)
class PoolWindow:
    """Normalised pooling window (symmetric padding, as PyTorch's pooling has)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return tuple(
            pool_output_size(size, k, s, p, d, self.ceil_mode)
            for size, k, s, p, d in zip(
                (height, width), self.kernel, self.stride, self.padding, self.dilation
            )
        )
