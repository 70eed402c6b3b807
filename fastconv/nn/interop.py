"""Moving models between fastconv and PyTorch.

Weights alone move with ``state_dict`` (same keys and shapes on both sides)::

    fc_model.load_state_dict(torch_model.state_dict())
    torch_model.load_state_dict(to_torch_state_dict(fc_model.state_dict()))

:func:`to_torch` builds the equivalent ``torch.nn`` module (same structure,
constructor arguments, training mode and weights); :func:`from_torch` does the
reverse for the layer types fastconv has.  torch is imported only when these are
called.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from . import activation, container, layers, layers1d, normalization, resampling
from .conv_transpose import ConvTranspose2d
from .module import Module

__all__ = ["from_torch", "to_torch", "to_torch_state_dict"]


def to_torch_state_dict(state_dict: dict[str, np.ndarray]) -> OrderedDict:
    """NumPy state dict -> torch tensors (for ``torch_module.load_state_dict``)."""
    import torch

    return OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in state_dict.items())


def _torch_residual_classes():
    import torch

    class Residual(torch.nn.Module):
        """block(x) + shortcut(x), as fastconv.nn.Residual."""

        def __init__(self, block, shortcut=None):
            super().__init__()
            self.block = block
            self.shortcut = shortcut

        def forward(self, x):
            return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

    class BasicBlock(torch.nn.Module):
        """torchvision's ResNet BasicBlock (without needing torchvision)."""

        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(planes)
            self.relu = torch.nn.ReLU(inplace=True)
            self.conv2 = torch.nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = torch.nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return self.relu(out + identity)

    class Bottleneck(torch.nn.Module):
        """torchvision's ResNet Bottleneck (without needing torchvision)."""

        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
            super().__init__()
            width = int(planes * (base_width / 64.0)) * groups
            self.conv1 = torch.nn.Conv2d(inplanes, width, 1, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(width)
            self.conv2 = torch.nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
            self.bn2 = torch.nn.BatchNorm2d(width)
            self.conv3 = torch.nn.Conv2d(width, planes * 4, 1, bias=False)
            self.bn3 = torch.nn.BatchNorm2d(planes * 4)
            self.relu = torch.nn.ReLU(inplace=True)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return self.relu(out + identity)

    return Residual, BasicBlock, Bottleneck


def _torch_concat_class():
    import torch

    class Concat(torch.nn.Module):
        """Branches on one input, outputs concatenated, as fastconv.nn.Concat."""

        def __init__(self, branches, dim=1):
            super().__init__()
            for name, branch in branches.items():
                self.add_module(name, branch)
            self.dim = dim

        def forward(self, x):
            return torch.cat([branch(x) for branch in self.children()], self.dim)

    return Concat


def _convert_to_torch(m: Module) -> Any:
    import torch

    tnn = torch.nn
    if isinstance(m, layers.Conv2d):
        return tnn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            m.bias is not None,
            m.padding_mode,
        )
    if isinstance(m, layers.Linear):
        return tnn.Linear(m.in_features, m.out_features, m.bias is not None)
    if isinstance(m, layers.BatchNorm2d):
        return tnn.BatchNorm2d(
            m.num_features,
            m.eps,
            m.momentum,
            m.affine,
            m.track_running_stats,
            bias=m.bias is not None,
        )
    if isinstance(m, layers.MaxPool2d):
        return tnn.MaxPool2d(
            m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode
        )
    if isinstance(m, layers.AvgPool2d):
        return tnn.AvgPool2d(
            m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override
        )
    if isinstance(m, layers.AdaptiveAvgPool2d):
        return tnn.AdaptiveAvgPool2d(m.output_size)
    if isinstance(m, layers.ReLU):
        return tnn.ReLU(m.inplace)
    if isinstance(m, layers.ReLU6):
        return tnn.ReLU6(m.inplace)
    if isinstance(m, layers.LeakyReLU):
        return tnn.LeakyReLU(m.negative_slope, m.inplace)
    if isinstance(m, layers.Sigmoid):
        return tnn.Sigmoid()
    if isinstance(m, layers.Tanh):
        return tnn.Tanh()
    if isinstance(m, layers.Flatten):
        return tnn.Flatten(m.start_dim, m.end_dim)
    if isinstance(m, layers.Dropout):
        return tnn.Dropout(m.p, m.inplace)
    if isinstance(m, layers.Identity):
        return tnn.Identity()
    converted = _convert_breadth_to_torch(m)
    if converted is not None:
        return converted
    if isinstance(m, container.Sequential):
        return tnn.Sequential(OrderedDict((k, _convert_to_torch(v)) for k, v in m.named_children()))
    if isinstance(m, container.ModuleList):
        return tnn.ModuleList([_convert_to_torch(v) for v in m])
    if isinstance(m, container.Concat):
        branches = OrderedDict((k, _convert_to_torch(v)) for k, v in m.named_children())
        return _torch_concat_class()(branches, m.dim)
    if isinstance(m, container.Residual):
        residual, _, _ = _torch_residual_classes()
        return residual(
            _convert_to_torch(m.block),
            None if m.shortcut is None else _convert_to_torch(m.shortcut),
        )
    if isinstance(m, container.BasicBlock):
        _, basic, _ = _torch_residual_classes()
        down = None if m.downsample is None else _convert_to_torch(m.downsample)
        return basic(m.conv1.in_channels, m.conv1.out_channels, m.stride, down)
    if isinstance(m, container.Bottleneck):
        _, _, bottleneck = _torch_residual_classes()
        down = None if m.downsample is None else _convert_to_torch(m.downsample)
        groups = m.conv2.groups
        planes = m.conv3.out_channels // 4
        # torchvision's width = planes * base_width / 64 * groups, solved for base_width
        base_width = m.conv1.out_channels * 64 // (planes * groups)
        return bottleneck(m.conv1.in_channels, planes, m.stride, down, groups, base_width)
    raise TypeError(f"to_torch does not know how to convert {type(m).__name__}")


def _convert_breadth_to_torch(m: Module) -> Any:
    """The torch module of a transposed or 1-D conv, 1-D pooling, norm, activation or
    resampling layer; None for other modules."""
    import torch

    tnn = torch.nn
    if isinstance(m, ConvTranspose2d):
        return tnn.ConvTranspose2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.output_padding,
            m.groups,
            m.bias is not None,
            m.dilation,
        )
    if isinstance(m, layers1d.Conv1d):
        return tnn.Conv1d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            m.bias is not None,
            m.padding_mode,
        )
    if isinstance(m, layers1d.MaxPool1d):
        return tnn.MaxPool1d(
            m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode
        )
    if isinstance(m, layers1d.AvgPool1d):
        return tnn.AvgPool1d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
    if isinstance(m, normalization.GroupNorm):
        return tnn.GroupNorm(
            m.num_groups, m.num_channels, m.eps, m.affine, bias=m.bias is not None or not m.affine
        )
    if isinstance(m, normalization.LayerNorm):
        return tnn.LayerNorm(
            m.normalized_shape, m.eps, m.elementwise_affine, bias=m.bias is not None
        )
    if isinstance(m, normalization.InstanceNorm2d):
        return tnn.InstanceNorm2d(
            m.num_features,
            m.eps,
            m.momentum,
            m.affine,
            m.track_running_stats,
            bias=m.bias is not None or not m.affine,
        )
    simple = {
        activation.SiLU: lambda: tnn.SiLU(m.inplace),
        activation.GELU: lambda: tnn.GELU(m.approximate),
        activation.Hardswish: lambda: tnn.Hardswish(m.inplace),
        activation.Hardsigmoid: lambda: tnn.Hardsigmoid(m.inplace),
        activation.ELU: lambda: tnn.ELU(m.alpha, m.inplace),
        activation.Softmax: lambda: tnn.Softmax(m.dim),
        activation.LogSoftmax: lambda: tnn.LogSoftmax(m.dim),
        resampling.Upsample: lambda: tnn.Upsample(
            m.size, m.scale_factor, m.mode, m.align_corners, m.recompute_scale_factor
        ),
        resampling.PixelShuffle: lambda: tnn.PixelShuffle(m.upscale_factor),
        resampling.PixelUnshuffle: lambda: tnn.PixelUnshuffle(m.downscale_factor),
    }
    make = simple.get(type(m))
    return None if make is None else make()


def to_torch(module: Module) -> Any:
    """The equivalent ``torch.nn.Module``, with this module's weights, dtype and mode."""
    import torch

    converted = _convert_to_torch(module)
    floats = [p.data.dtype for p in module.parameters()] + [
        b.dtype for b in module.buffers() if b.dtype.kind == "f"
    ]
    dtype = floats[0] if floats else np.dtype(np.float32)
    converted = converted.to(torch.float64 if dtype == np.float64 else torch.float32)
    converted.load_state_dict(to_torch_state_dict(module.state_dict()))
    for name, sub in module.named_modules():
        target = converted.get_submodule(name) if name else converted
        target.train(sub.training)
        for pname, param in sub.named_parameters(recurse=False):
            getattr(target, pname).requires_grad_(param.requires_grad)
    return converted


def _convert_from_torch(m: Any) -> Module:
    import torch

    tnn = torch.nn
    dtype = None
    params = list(m.parameters(recurse=False))
    if params and params[0].dtype == torch.float64:
        dtype = np.float64
    if isinstance(m, tnn.Conv2d):
        return layers.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            m.bias is not None,
            m.padding_mode,
            dtype=dtype,
        )
    if isinstance(m, tnn.Linear):
        return layers.Linear(m.in_features, m.out_features, m.bias is not None, dtype=dtype)
    if isinstance(m, tnn.BatchNorm2d):
        ref = m.running_mean if m.running_mean is not None else (params[0] if params else None)
        if ref is not None and ref.dtype == torch.float64:
            dtype = np.float64
        return layers.BatchNorm2d(
            m.num_features,
            m.eps,
            m.momentum,
            m.affine,
            m.track_running_stats,
            dtype=dtype,
            bias=getattr(m, "bias", None) is not None,
        )
    if isinstance(m, tnn.MaxPool2d):
        return layers.MaxPool2d(
            m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode
        )
    if isinstance(m, tnn.AvgPool2d):
        return layers.AvgPool2d(
            m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override
        )
    if isinstance(m, tnn.AdaptiveAvgPool2d):
        return layers.AdaptiveAvgPool2d(m.output_size)
    simple = {
        tnn.ReLU: lambda: layers.ReLU(m.inplace),
        tnn.ReLU6: lambda: layers.ReLU6(m.inplace),
        tnn.LeakyReLU: lambda: layers.LeakyReLU(m.negative_slope, m.inplace),
        tnn.Sigmoid: layers.Sigmoid,
        tnn.Tanh: layers.Tanh,
        tnn.Flatten: lambda: layers.Flatten(m.start_dim, m.end_dim),
        tnn.Dropout: lambda: layers.Dropout(m.p, m.inplace),
        tnn.Identity: layers.Identity,
    }
    for kind, make in simple.items():
        if type(m) is kind:
            return make()
    converted = _convert_breadth_from_torch(m, dtype)
    if converted is not None:
        return converted
    if isinstance(m, tnn.Sequential):
        return container.Sequential(
            OrderedDict((k, _convert_from_torch(v)) for k, v in m.named_children())
        )
    if isinstance(m, tnn.ModuleList):
        return container.ModuleList([_convert_from_torch(v) for v in m])
    names = {n for n, _ in m.named_children()}
    conv1 = getattr(m, "conv1", None)
    block_dtype = (
        np.float64
        if isinstance(conv1, tnn.Conv2d) and conv1.weight.dtype == torch.float64
        else None
    )
    if names >= {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu"} and hasattr(
        m, "downsample"
    ):
        down = None if m.downsample is None else _convert_from_torch(m.downsample)
        planes = m.conv3.out_channels // 4
        groups = m.conv2.groups
        return container.Bottleneck(
            m.conv1.in_channels,
            planes,
            m.conv2.stride[0],
            down,
            groups=groups,
            base_width=m.conv1.out_channels * 64 // (planes * groups),
            dtype=block_dtype,
        )
    if names >= {"conv1", "bn1", "relu", "conv2", "bn2"} and hasattr(m, "downsample"):
        down = None if m.downsample is None else _convert_from_torch(m.downsample)
        return container.BasicBlock(
            m.conv1.in_channels,
            m.conv1.out_channels,
            m.conv1.stride[0],
            down,
            dtype=np.float64 if m.conv1.weight.dtype == torch.float64 else None,
        )
    if names and names <= {"block", "shortcut"} and hasattr(m, "block"):
        short = None if getattr(m, "shortcut", None) is None else _convert_from_torch(m.shortcut)
        return container.Residual(_convert_from_torch(m.block), short)
    raise TypeError(f"from_torch does not know how to convert {type(m).__name__}")


def _convert_breadth_from_torch(m: Any, dtype: Any) -> Module | None:
    """The fastconv layer of a torch transposed or 1-D conv, 1-D pooling, norm, activation
    or resampling module; None for other modules."""
    import torch

    tnn = torch.nn
    if type(m) is tnn.ConvTranspose2d:
        return ConvTranspose2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.output_padding,
            m.groups,
            m.bias is not None,
            m.dilation,
            m.padding_mode,
            dtype=dtype,
        )
    if type(m) is tnn.Conv1d:
        return layers1d.Conv1d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            m.bias is not None,
            m.padding_mode,
            dtype=dtype,
        )
    if type(m) is tnn.MaxPool1d:
        return layers1d.MaxPool1d(
            m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode
        )
    if type(m) is tnn.AvgPool1d:
        return layers1d.AvgPool1d(
            m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad
        )
    if type(m) is tnn.GroupNorm:
        return normalization.GroupNorm(
            m.num_groups,
            m.num_channels,
            m.eps,
            m.affine,
            dtype=dtype,
            bias=getattr(m, "bias", None) is not None or not m.affine,
        )
    if type(m) is tnn.LayerNorm:
        return normalization.LayerNorm(
            m.normalized_shape,
            m.eps,
            m.elementwise_affine,
            bias=getattr(m, "bias", None) is not None,
            dtype=dtype,
        )
    if type(m) is tnn.InstanceNorm2d:
        if m.running_mean is not None and m.running_mean.dtype == torch.float64:
            dtype = np.float64
        return normalization.InstanceNorm2d(
            m.num_features,
            m.eps,
            m.momentum,
            m.affine,
            m.track_running_stats,
            dtype=dtype,
            bias=getattr(m, "bias", None) is not None or not m.affine,
        )
    simple = {
        tnn.SiLU: lambda: activation.SiLU(m.inplace),
        tnn.GELU: lambda: activation.GELU(m.approximate),
        tnn.Hardswish: lambda: activation.Hardswish(m.inplace),
        tnn.Hardsigmoid: lambda: activation.Hardsigmoid(m.inplace),
        tnn.ELU: lambda: activation.ELU(m.alpha, m.inplace),
        tnn.Softmax: lambda: activation.Softmax(m.dim),
        tnn.LogSoftmax: lambda: activation.LogSoftmax(m.dim),
        tnn.Upsample: lambda: resampling.Upsample(
            m.size, m.scale_factor, m.mode, m.align_corners, m.recompute_scale_factor
        ),
        tnn.PixelShuffle: lambda: resampling.PixelShuffle(m.upscale_factor),
        tnn.PixelUnshuffle: lambda: resampling.PixelUnshuffle(m.downscale_factor),
    }
    make = simple.get(type(m))
    return None if make is None else make()


def from_torch(module: Any) -> Module:
    """The equivalent fastconv module of a ``torch.nn`` model, with its weights and mode."""
    converted = _convert_from_torch(module)
    converted.load_state_dict(module.state_dict())
    for name, sub in module.named_modules():
        target = converted.get_submodule(name) if name else converted
        target.train(sub.training)
        for pname, param in sub.named_parameters(recurse=False):
            getattr(target, pname).requires_grad = bool(param.requires_grad)
    return converted
