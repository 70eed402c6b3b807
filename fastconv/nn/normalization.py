"""``GroupNorm``, ``LayerNorm`` and ``InstanceNorm2d`` with PyTorch's arguments and state.

Each standardises rows of its input by their own statistics; the rows run through the
fused batch-norm kernels (see :func:`fastconv.functional.group_norm`), whose sums are in
double and deterministic. The backward pass is batch norm's on those rows, after the
affine parameters' share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .._checks import check_layer_input
from . import init
from .layers import _check_device, _dtype
from .module import Module, Parameter

__all__ = ["GroupNorm", "InstanceNorm2d", "LayerNorm"]


def _row_input_grad(grad_xhat: np.ndarray, saved: F.BatchNormSaved) -> np.ndarray:
    """The input gradient from the gradient wrt the standardised values, in any shape."""
    rows = np.ascontiguousarray(grad_xhat).reshape(saved.xhat.shape)
    grad, _, _ = F.batch_norm_backward(rows, saved)
    return grad.reshape(grad_xhat.shape)


class GroupNorm(Module):
    """``torch.nn.GroupNorm``: (N, C, *) input, channels in ``num_groups`` groups, each
    group of a sample standardised by its own mean and biased variance; per-channel
    ``weight`` (ones) and ``bias`` (zeros, unless ``bias=False``) when ``affine``."""

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_device(device)
        dtype = _dtype(dtype)
        if num_channels % num_groups != 0:
            raise ValueError("num_channels must be divisible by num_groups")
        self.num_groups = int(num_groups)
        self.num_channels = int(num_channels)
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = Parameter(np.ones(num_channels, dtype=dtype))
            if bias:
                self.bias = Parameter(np.zeros(num_channels, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        if input.ndim < 2 or input.shape[1] != self.num_channels:
            raise ValueError(
                f"GroupNorm({self.num_groups}, {self.num_channels}) expects an (N, "
                f"{self.num_channels}, *) input, got shape {input.shape}"
            )
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        out, saved = F.group_norm(input, self.num_groups, weight, bias, self.eps, return_saved=True)
        self.save_for_backward(saved, input.shape)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        saved, shape = self.saved_tensors()
        n, c = shape[:2]
        g = grad_output.reshape(n, c, -1)
        xhat = saved.xhat.reshape(g.shape)
        if self.weight is not None:
            if self.weight.requires_grad:
                self.weight.accumulate_grad((g * xhat).sum(axis=(0, 2)))
            if self.bias is not None and self.bias.requires_grad:
                self.bias.accumulate_grad(g.sum(axis=(0, 2)))
            g = g * self.weight.data[:, None]
        return _row_input_grad(g, saved).reshape(shape)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )


class LayerNorm(Module):
    """``torch.nn.LayerNorm``: the trailing dims ``normalized_shape`` of the input are
    standardised together; ``weight`` (ones) and ``bias`` (zeros) of that shape when
    ``elementwise_affine`` (``bias=False`` drops the bias)."""

    def __init__(
        self,
        normalized_shape: Any,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        _check_device(device)
        dtype = _dtype(dtype)
        if isinstance(normalized_shape, (int, np.integer)):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(int(s) for s in normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype))
            if bias:
                self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        out, saved = F.layer_norm(
            input, self.normalized_shape, weight, bias, self.eps, return_saved=True
        )
        self.save_for_backward(saved, input.shape)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        saved, shape = self.saved_tensors()
        features = saved.xhat.shape[2]
        g = grad_output.reshape(-1, features)
        if self.weight is not None:
            if self.weight.requires_grad:
                xhat = saved.xhat.reshape(g.shape)
                grad_weight = (g * xhat).sum(axis=0).reshape(self.normalized_shape)
                self.weight.accumulate_grad(grad_weight)
            if self.bias is not None and self.bias.requires_grad:
                self.bias.accumulate_grad(g.sum(axis=0).reshape(self.normalized_shape))
            g = g * self.weight.data.reshape(-1)
        return _row_input_grad(g, saved).reshape(shape)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
        )


class InstanceNorm2d(Module):
    """``torch.nn.InstanceNorm2d``: each channel of each sample of an (N, C, H, W) or
    (C, H, W) input standardised by its own statistics.

    ``affine`` (default False) adds per-channel ``weight`` and ``bias`` (``bias=False``:
    no bias); ``track_running_stats`` (default False) keeps ``running_mean`` /
    ``running_var`` (the samples' average, moved with ``momentum``), which eval mode then
    normalises with. As PyTorch's, ``num_batches_tracked`` is kept but not counted.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
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
        check_layer_input(input)
        if input.ndim not in (3, 4):
            raise ValueError(f"expected 3D or 4D input (got {input.ndim}D input)")
        unbatched = input.ndim == 3
        x = input[None] if unbatched else input
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"InstanceNorm2d({self.num_features}) got an input with {x.shape[1]} channels"
            )
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        out, saved = F.instance_norm(
            x,
            self.running_mean,
            self.running_var,
            weight,
            bias,
            use_input_stats=self.training or not self.track_running_stats,
            momentum=0.0 if self.momentum is None else self.momentum,
            eps=self.eps,
            return_saved=True,
        )
        self.save_for_backward(saved, x.shape, unbatched)
        return out[0] if unbatched else out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        saved, shape, unbatched = self.saved_tensors()
        n, c = shape[:2]
        rows = np.ascontiguousarray(grad_output).reshape(saved.xhat.shape)
        weight = None if self.weight is None else np.tile(self.weight.data, n)
        grad, sum_gx, sum_g = F.batch_norm_backward(rows, saved, weight)
        if self.weight is not None:
            if self.weight.requires_grad:
                self.weight.accumulate_grad(sum_gx.reshape(n, c).sum(axis=0))
            if self.bias is not None and self.bias.requires_grad:
                self.bias.accumulate_grad(sum_g.reshape(n, c).sum(axis=0))
        grad = grad.reshape(shape)
        return grad[0] if unbatched else grad

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )
