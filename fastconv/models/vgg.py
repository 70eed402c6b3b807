"""VGG-11 and VGG-16 (Simonyan & Zisserman, 2015), with and without batch norm.

torchvision's layout: ``features`` (3x3 conv layers, each followed by ``BatchNorm2d``
in the ``_bn`` models, then ReLU; 2x2 max-pools between the stages), ``avgpool``
(adaptive, to 7x7) and ``classifier`` (three linear layers with dropout): VGG-16 has
138,357,544 parameters for 1000 classes.  The five max-pools need inputs of at least
32x32; on 32x32 the features are 1x1 and the pool repeats them 7x7.

``cifar=True`` is the VGG that CIFAR-10 work trains (the pytorch-cifar models): the same
``features``, global average pooling and one ``Linear(512, num_classes)`` as
``classifier`` (keys ``classifier.weight``/``classifier.bias``): VGG-16 has 14.7 M
parameters for ten classes, all but 5,130 of them in ``features``.

Initialisation as torchvision: convolutions kaiming_normal_(fan_out, relu) with zero
bias, batch norms 1 and 0, linear layers N(0, 0.01) with zero bias.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from ._common import attach_step, init_conv_kaiming_fan_out

__all__ = ["VGG", "make_layers", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn"]

# channels of each 3x3 conv, "M" a 2x2 max-pool (torchvision's configurations A and D)
CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def make_layers(config: list, batch_norm: bool = False, in_channels: int = 3) -> nn.Sequential:
    """torchvision's ``vgg.make_layers``: the ``features`` of one configuration."""
    layers: list[nn.Module] = []
    channels = in_channels
    for value in config:
        if value == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, value, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(value))
        layers.append(nn.ReLU(inplace=True))
        channels = value
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's ``VGG`` around given ``features``; ``cifar=True``: one linear head."""

    def __init__(
        self,
        features: nn.Module,
        num_classes: int = 1000,
        init_weights: bool = True,
        dropout: float = 0.5,
        cifar: bool = False,
    ) -> None:
        super().__init__()
        self.features = features
        if cifar:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = nn.Linear(512, num_classes)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, num_classes),
            )
        attach_step(self, "flatten", nn.Flatten())
        if init_weights:
            init_conv_kaiming_fan_out(self, linear_std=0.01)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad = self.flatten.backward(self.classifier.backward(grad_output))
        return self.features.backward(self.avgpool.backward(grad))


def _vgg(
    config: str, batch_norm: bool, num_classes: int, cifar: bool, in_channels: int, dropout: float
) -> VGG:
    features = make_layers(CONFIGS[config], batch_norm, in_channels)
    return VGG(features, num_classes, dropout=dropout, cifar=cifar)


def vgg11(
    num_classes: int = 1000, *, cifar: bool = False, in_channels: int = 3, dropout: float = 0.5
) -> VGG:
    """VGG-11 (configuration A), 132.9 M parameters for 1000 classes."""
    return _vgg("A", False, num_classes, cifar, in_channels, dropout)


def vgg11_bn(
    num_classes: int = 1000, *, cifar: bool = False, in_channels: int = 3, dropout: float = 0.5
) -> VGG:
    """VGG-11 with a BatchNorm2d after every conv."""
    return _vgg("A", True, num_classes, cifar, in_channels, dropout)


def vgg16(
    num_classes: int = 1000, *, cifar: bool = False, in_channels: int = 3, dropout: float = 0.5
) -> VGG:
    """VGG-16 (configuration D), 138,357,544 parameters for 1000 classes."""
    return _vgg("D", False, num_classes, cifar, in_channels, dropout)


def vgg16_bn(
    num_classes: int = 1000, *, cifar: bool = False, in_channels: int = 3, dropout: float = 0.5
) -> VGG:
    """VGG-16 with a BatchNorm2d after every conv."""
    return _vgg("D", True, num_classes, cifar, in_channels, dropout)
