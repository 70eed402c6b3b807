"""ResNets: torchvision's ResNet-18/34/50 and He et al.'s CIFAR ResNet-20/56.

``ResNet`` is torchvision's: a 7x7 stride-2 conv stem and a 3x3 stride-2 max-pool, four
stages of ``BasicBlock`` (18, 34) or ``Bottleneck`` (50; the stride on the 3x3 conv,
"v1.5") with 64, 128, 256, 512 planes, global average pooling and ``fc``.
``cifar=True`` swaps the stem for a 3x3 stride-1 conv and no max-pool (``maxpool`` is an
``Identity``): the ResNet-18/34/50 that CIFAR-10 work trains on 32x32 images (the
pytorch-cifar models), with torchvision's keys (``conv1.weight`` is then 64x3x3x3).

``CifarResNet`` is the network of He et al. (2016, section 4.2) for 32x32 images: a 3x3
conv to 16 channels, three stages of ``n`` basic blocks with 16, 32 and 64 channels (the
second and third start with stride 2), global average pooling and ``fc``; depth 6n + 2
(ResNet-20: n = 3, 269,722 parameters for ten classes; ResNet-56: n = 9, 853,018).
The shortcuts are the paper's option A for CIFAR: parameter-free, the identity, or where
a stage halves the size and doubles the channels, the input subsampled 2x and padded
with zero channels (:class:`ZeroPadShortcut`).  Names follow torchvision's ResNet
(``conv1``, ``bn1``, ``layer1``.. ``layer3``, ``fc``; the option-A shortcut is the
block's ``downsample``, which has no weights).

Initialisation as torchvision: convolutions kaiming_normal_(fan_out, relu), batch norms
1 and 0 (``zero_init_residual`` zeroes each block's last one), ``fc`` its default.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from ._common import attach_step, init_conv_kaiming_fan_out

__all__ = [
    "CifarResNet",
    "ResNet",
    "ZeroPadShortcut",
    "resnet18",
    "resnet20",
    "resnet34",
    "resnet50",
    "resnet56",
]


class ZeroPadShortcut(nn.Module):
    """He et al.'s option-A shortcut: ``x[:, :, ::stride, ::stride]`` with zero channels.

    The ``out_channels - in_channels`` new channels are split between both sides (the
    input lands in the middle), as the common CIFAR ResNet code pads them.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"ZeroPadShortcut pads channels: out_channels ({out_channels}) must be at "
                f"least in_channels ({in_channels})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self._first = (out_channels - in_channels) // 2

    def forward(self, x: np.ndarray) -> np.ndarray:
        s, first = self.stride, self._first
        kept = x[:, :, ::s, ::s]
        out = np.zeros((x.shape[0], self.out_channels, *kept.shape[2:]), dtype=x.dtype)
        out[:, first : first + self.in_channels] = kept
        self.save_for_backward(x.shape)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (shape,) = self.saved_tensors()
        s, first = self.stride, self._first
        grad = np.zeros(shape, dtype=grad_output.dtype)
        grad[:, :, ::s, ::s] = grad_output[:, first : first + self.in_channels]
        return grad

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class _Trunk(nn.Module):
    """Runs the children named in ``_trunk`` in order, then flattens into ``fc``."""

    _trunk: tuple[str, ...] = ()

    def forward(self, x: np.ndarray) -> np.ndarray:
        trunk = [getattr(self, name) for name in self._trunk]
        return self.fc(self.flatten(nn.forward_chain(trunk, x)))

    def backward(self, grad_output: np.ndarray) -> np.ndarray | None:
        grad = self.flatten.backward(self.fc.backward(grad_output))
        return nn.backward_chain([getattr(self, name) for name in self._trunk], grad)

    def _zero_init_residual(self) -> None:
        """Each block starts as the identity (Goyal et al.): its last BN weight is 0."""
        for module in self.modules():
            if isinstance(module, nn.Bottleneck):
                nn.init.zeros_(module.bn3.weight)
            elif isinstance(module, nn.BasicBlock):
                nn.init.zeros_(module.bn2.weight)


class ResNet(_Trunk):
    """torchvision's ``ResNet(block, layers)``; ``cifar=True``: 3x3 stem, no max-pool."""

    _trunk = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")

    def __init__(
        self,
        block: type,
        layers: list[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        *,
        cifar: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        if cifar:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        attach_step(self, "flatten", nn.Flatten())
        init_conv_kaiming_fan_out(self)
        if zero_init_residual:
            self._zero_init_residual()

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [block.make(self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


class CifarResNet(_Trunk):
    """He et al.'s CIFAR ResNet of depth 6n + 2 with option-A (zero-padding) shortcuts."""

    _trunk = ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool")

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        zero_init_residual: bool = False,
        *,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, blocks_per_stage)
        self.layer2 = self._make_layer(32, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(64, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        attach_step(self, "flatten", nn.Flatten())
        init_conv_kaiming_fan_out(self)
        if zero_init_residual:
            self._zero_init_residual()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        shortcut = None
        if stride != 1 or self.inplanes != planes:
            shortcut = ZeroPadShortcut(self.inplanes, planes, stride)
        layers = [nn.BasicBlock(self.inplanes, planes, stride, shortcut)]
        self.inplanes = planes
        layers += [nn.BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


def resnet18(
    num_classes: int = 1000,
    *,
    cifar: bool = False,
    in_channels: int = 3,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-18: BasicBlock stages [2, 2, 2, 2], 11,689,512 parameters for 1000 classes."""
    return ResNet(
        nn.BasicBlock,
        [2, 2, 2, 2],
        num_classes,
        zero_init_residual,
        cifar=cifar,
        in_channels=in_channels,
    )


def resnet34(
    num_classes: int = 1000,
    *,
    cifar: bool = False,
    in_channels: int = 3,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-34: BasicBlock stages [3, 4, 6, 3], 21,797,672 parameters for 1000 classes."""
    return ResNet(
        nn.BasicBlock,
        [3, 4, 6, 3],
        num_classes,
        zero_init_residual,
        cifar=cifar,
        in_channels=in_channels,
    )


def resnet50(
    num_classes: int = 1000,
    *,
    cifar: bool = False,
    in_channels: int = 3,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-50: Bottleneck stages [3, 4, 6, 3], 25,557,032 parameters for 1000 classes."""
    return ResNet(
        nn.Bottleneck,
        [3, 4, 6, 3],
        num_classes,
        zero_init_residual,
        cifar=cifar,
        in_channels=in_channels,
    )


def resnet20(
    num_classes: int = 10, *, in_channels: int = 3, zero_init_residual: bool = False
) -> CifarResNet:
    """He et al.'s CIFAR ResNet-20 (3 blocks per stage), 269,722 parameters."""
    return CifarResNet(3, num_classes, zero_init_residual, in_channels=in_channels)


def resnet56(
    num_classes: int = 10, *, in_channels: int = 3, zero_init_residual: bool = False
) -> CifarResNet:
    """He et al.'s CIFAR ResNet-56 (9 blocks per stage), 853,018 parameters."""
    return CifarResNet(9, num_classes, zero_init_residual, in_channels=in_channels)
