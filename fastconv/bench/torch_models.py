"""The bench's networks as plain PyTorch models, for ``fastconv bench --op torch``
(torchvision is not a dependency): torchvision's ResNet-18, VGG-11 and MobileNetV2
layouts at 224x224 (1000 classes) and their CIFAR variants at 32x32 (10 classes) as
``corpus.py`` describes them: ResNet with a 3x3 stride-1 stem and no max pool, VGG
with a 512 -> classes head, MobileNetV2 with stride 1 in the stem and the second stage.

``build(network, image)`` imports torch; nothing else in the bench does unless asked.
"""

from __future__ import annotations

__all__ = ["NETWORKS", "build", "num_classes"]

NETWORKS = ("resnet18", "vgg11", "mobilenet_v2")

_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
# MobileNetV2's (expansion, out channels, repeats, stride) per stage
_MOBILENET_V2 = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _resnet18(nn, cifar: bool, classes: int):
    import torch

    class BasicBlock(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            stem = (3, 1, 1) if cifar else (7, 2, 3)
            self.conv1 = nn.Conv2d(3, 64, *stem, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
            stages, inplanes = [], 64
            for i, planes in enumerate((64, 128, 256, 512)):
                stride = 1 if i == 0 else 2
                stages.append(
                    nn.Sequential(
                        BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes, 1)
                    )
                )
                inplanes = planes
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()


def _vgg11(nn, cifar: bool, classes: int):
    layers, channels = [], 3
    for v in _VGG11:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    if cifar:
        head = [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, classes)]
    else:
        head = [
            nn.AdaptiveAvgPool2d((7, 7)),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, classes),
        ]
    return nn.Sequential(nn.Sequential(*layers), *head)


def _mobilenet_v2(nn, cifar: bool, classes: int):
    import torch

    def conv_bn(inp, oup, kernel, stride=1, groups=1, activation=True):
        layers = [
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
        ]
        return [*layers, nn.ReLU6(inplace=True)] if activation else layers

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, expansion):
            super().__init__()
            hidden = inp * expansion
            self.use_residual = stride == 1 and inp == oup
            layers = conv_bn(inp, hidden, 1) if expansion != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
            layers += conv_bn(hidden, oup, 1, activation=False)
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_residual else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            features, channels = [nn.Sequential(*conv_bn(3, 32, 3, 1 if cifar else 2))], 32
            for stage, (t, c, n, s) in enumerate(_MOBILENET_V2):
                stride = 1 if cifar and stage == 1 else s
                for i in range(n):
                    features.append(InvertedResidual(channels, c, stride if i == 0 else 1, t))
                    channels = c
            features.append(nn.Sequential(*conv_bn(channels, 1280, 1)))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2()


def num_classes(image: int) -> int:
    """The classes of the variant built for ``image``: ImageNet's 1000 from 64 pixels up,
    CIFAR-10's 10 below."""
    return 1000 if image >= 64 else 10


def build(network: str, image: int):
    """``network`` (one of ``NETWORKS``) for ``image`` x ``image`` inputs: the ImageNet
    layout (1000 classes) from 64 pixels up, the CIFAR variant (10 classes) below."""
    from torch import nn

    builders = {"resnet18": _resnet18, "vgg11": _vgg11, "mobilenet_v2": _mobilenet_v2}
    if network not in builders:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    return builders[network](nn, image < 64, num_classes(image))
