"""``Upsample``, ``PixelShuffle`` and ``PixelUnshuffle``: resolution changes in decoders and
super-resolution nets, with PyTorch's arguments (see ``fastconv.functional.interpolate``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .._checks import check_layer_input
from .module import Module

__all__ = ["PixelShuffle", "PixelUnshuffle", "Upsample"]


class Upsample(Module):
    """``torch.nn.Upsample``: ``size`` or ``scale_factor``; ``mode`` 'nearest' (default),
    'nearest-exact', 'linear' (N, C, L) or 'bilinear' (N, C, H, W), ``align_corners``
    for the linear modes."""

    def __init__(
        self,
        size: Any = None,
        scale_factor: Any = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
        recompute_scale_factor: bool | None = None,
    ) -> None:
        super().__init__()
        self.size = size
        # PyTorch keeps the factors as floats (its repr shows 2.0)
        if isinstance(scale_factor, (tuple, list)):
            self.scale_factor: Any = tuple(float(f) for f in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def _args(self) -> tuple:
        return (
            self.size,
            self.scale_factor,
            self.mode,
            self.align_corners,
            self.recompute_scale_factor,
        )

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        out = F.interpolate(input, *self._args())
        self.save_for_backward(input.shape)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (shape,) = self.saved_tensors()
        return F.interpolate_backward(grad_output, shape, *self._args())

    def extra_repr(self) -> str:
        if self.scale_factor is not None:
            info = f"scale_factor={self.scale_factor!r}"
        else:
            info = f"size={self.size!r}"
        return f"{info}, mode={self.mode!r}"


class PixelShuffle(Module):
    """(*, C*r*r, H, W) -> (*, C, H*r, W*r) (``torch.nn.PixelShuffle``); the backward
    pass is the inverse rearrangement."""

    def __init__(self, upscale_factor: int) -> None:
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        return F.pixel_shuffle(input, self.upscale_factor)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return F.pixel_unshuffle(grad_output, self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    """(*, C, H*r, W*r) -> (*, C*r*r, H, W) (``torch.nn.PixelUnshuffle``)."""

    def __init__(self, downscale_factor: int) -> None:
        super().__init__()
        self.downscale_factor = downscale_factor

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        return F.pixel_unshuffle(input, self.downscale_factor)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return F.pixel_shuffle(grad_output, self.downscale_factor)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"
