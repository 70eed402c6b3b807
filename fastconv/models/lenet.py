"""LeNet-5 (LeCun et al., 1998), as deep-learning courses write it in PyTorch.

torchvision has no LeNet; the layout follows AlexNet's and VGG's there (``features``,
``avgpool``, ``classifier``)::

    features:   conv5x5(6, padding 2)-tanh-avgpool2  conv5x5(16)-tanh-avgpool2
    avgpool:    AdaptiveAvgPool2d((5, 5))
    classifier: linear(400, 120)-tanh  linear(120, 84)-tanh  linear(84, num_classes)

The padding of 2 gives a 28x28 MNIST digit the paper's 32x32 input, so
``features`` ends at 16x5x5 and the adaptive pool does nothing; other sizes of at least
12x12 (32x32 CIFAR images: 16x6x6) are pooled to 5x5 first, as AlexNet and VGG do.
61,706 parameters for one input channel and ten classes.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from ._common import attach_step

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Module):
    """LeNet-5: two tanh conv layers with average pooling, three linear layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.Tanh(),
            nn.AvgPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((5, 5))
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.Tanh(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )
        attach_step(self, "flatten", nn.Flatten())

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad = self.flatten.backward(self.classifier.backward(grad_output))
        return self.features.backward(self.avgpool.backward(grad))


def lenet5(num_classes: int = 10, *, in_channels: int = 1) -> LeNet5:
    """LeNet-5 for ``in_channels`` x 28 x 28 images (or any size from 12 x 12)."""
    return LeNet5(num_classes, in_channels)
