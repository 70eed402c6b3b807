"""AlexNet (Krizhevsky et al., 2012) in torchvision's layout (its one-GPU variant).

``features`` (five conv layers, three max-pools), ``avgpool`` (adaptive, to 6x6) and
``classifier`` (dropout, three linear layers): 61,100,840 parameters for 1000 classes.
The adaptive pool lets any input of at least 63x63 through (on 64x64 the features are
1x1 and the pool repeats them).  Initialisation: the layers' defaults, as torchvision.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from ._common import attach_step

__all__ = ["AlexNet", "alexnet"]


class AlexNet(nn.Module):
    """torchvision's ``AlexNet``; ``in_channels`` (default 3) sizes the first conv."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        attach_step(self, "flatten", nn.Flatten())

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad = self.flatten.backward(self.classifier.backward(grad_output))
        return self.features.backward(self.avgpool.backward(grad))


def alexnet(num_classes: int = 1000, *, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """AlexNet for images of at least 63x63 (torchvision's ``alexnet()``)."""
    return AlexNet(num_classes, dropout, in_channels)
