"""MobileNetV2 (Sandler et al., 2018) in torchvision's layout.

``features``: a 3x3 stride-2 ``Conv2dNormActivation`` stem (conv-BN-ReLU6, 32
channels), seventeen ``InvertedResidual`` blocks (1x1 expansion, 3x3 depthwise, 1x1
linear projection; a skip connection where stride 1 keeps the channels) and a 1x1
conv-BN-ReLU6 to 1280 channels; then global average pooling and ``classifier``
(dropout, linear): 3,504,872 parameters for 1000 classes.  Keys as torchvision's
(``features.0.0.weight``, ``features.1.conv.0.0.weight``...).

``cifar=True`` is the CIFAR-10 variant of the pytorch-cifar models: the stem and the
first 24-channel block run at stride 1, so a 32x32 image is downsampled 8x (to 4x4)
instead of 32x; the keys and shapes stay torchvision's.

Initialisation as torchvision: convolutions kaiming_normal_(fan_out), zero bias; batch
norms 1 and 0; the linear layer N(0, 0.01), zero bias.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from ._common import attach_step, init_conv_kaiming_fan_out

__all__ = ["Conv2dNormActivation", "InvertedResidual", "MobileNetV2", "mobilenet_v2"]


def _make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's rounding of channel counts to multiples of ``divisor``."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # never round down by more than 10 %
        rounded += divisor
    return rounded


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops' conv-BN-activation: a ``Sequential`` of Conv2d (no bias, padding
    (kernel_size - 1) // 2), BatchNorm2d and ``activation_layer`` (default ReLU6)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation_layer: type = nn.ReLU6,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            activation_layer(inplace=True),
        )
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """Expand (1x1, unless ``expand_ratio`` is 1), depthwise 3x3, project (1x1, linear)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1))
        layers += [
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = self.conv(x)
        if self.use_res_connect:
            out += x  # in place: the closing BatchNorm2d's output is kept by no layer
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad = self.conv.backward(grad_output)
        return grad + grad_output if self.use_res_connect else grad


# expansion t, output channels c, blocks n, first block's stride s
INVERTED_RESIDUAL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


class MobileNetV2(nn.Module):
    """torchvision's ``MobileNetV2``; ``cifar=True``: stride 1 in the stem and stage 2."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = 0.2,
        *,
        cifar: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [
            Conv2dNormActivation(in_channels, input_channel, stride=1 if cifar else 2)
        ]
        for stage, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            if cifar and stage == 1:
                s = 1
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(
                    InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t)
                )
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        # torchvision calls F.adaptive_avg_pool2d(x, (1, 1)) and torch.flatten
        attach_step(self, "pool", nn.AdaptiveAvgPool2d((1, 1)))
        attach_step(self, "flatten", nn.Flatten())
        init_conv_kaiming_fan_out(self, linear_std=0.01)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.classifier(self.flatten(self.pool(self.features(x))))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad = self.flatten.backward(self.classifier.backward(grad_output))
        return self.features.backward(self.pool.backward(grad))


def mobilenet_v2(
    num_classes: int = 1000,
    *,
    cifar: bool = False,
    in_channels: int = 3,
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> MobileNetV2:
    """MobileNetV2 (torchvision's ``mobilenet_v2()``), 3,504,872 parameters at width 1."""
    return MobileNetV2(
        num_classes, width_mult, dropout=dropout, cifar=cifar, in_channels=in_channels
    )
