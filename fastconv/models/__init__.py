"""``fastconv.models``: classic CNNs built from :mod:`fastconv.nn` layers.

LeNet-5, AlexNet, VGG-11/16 (with and without batch norm), GoogLeNet, ResNet-18/34/50,
MobileNetV2, and He et al.'s CIFAR ResNet-20/56.  The ImageNet models have
torchvision's module names and ``state_dict`` keys, so torchvision's weights load::

    from fastconv import models

    model = models.resnet18()                                # 1000 classes
    model.load_state_dict(torchvision_model.state_dict())    # tensors or NumPy arrays
    model.eval()
    logits = model(images)                                   # N x 3 x H x W, NumPy

Every builder takes ``num_classes`` and ``in_channels`` (the first conv's input
channels: 1 for grayscale digits); ResNet-18/34/50, the VGGs and MobileNetV2 take
``cifar=True`` for the variant that CIFAR-10 work trains on 32x32 images (a 3x3
stride-1 stem and no max-pool for the ResNets, a single linear head for VGG, stride 1
in MobileNetV2's stem and second stage).  ``get_model(name, **kwargs)`` builds one by
name, ``list_models()`` lists the names, ``model.summary((3, 224, 224))`` prints each
layer's output shape, parameters, activation memory and FLOPs.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .. import nn
from .alexnet import AlexNet, alexnet
from .googlenet import BasicConv2d, GoogLeNet, GoogLeNetOutputs, Inception, InceptionAux, googlenet
from .lenet import LeNet5, lenet5
from .mobilenetv2 import Conv2dNormActivation, InvertedResidual, MobileNetV2, mobilenet_v2
from .resnet import (
    CifarResNet,
    ResNet,
    ZeroPadShortcut,
    resnet18,
    resnet20,
    resnet34,
    resnet50,
    resnet56,
)
from .vgg import VGG, vgg11, vgg11_bn, vgg16, vgg16_bn

__all__ = [
    "VGG",
    "AlexNet",
    "BasicConv2d",
    "CifarResNet",
    "Conv2dNormActivation",
    "GoogLeNet",
    "GoogLeNetOutputs",
    "Inception",
    "InceptionAux",
    "InvertedResidual",
    "LeNet5",
    "MobileNetV2",
    "ResNet",
    "ZeroPadShortcut",
    "alexnet",
    "get_model",
    "googlenet",
    "has_cifar_variant",
    "lenet5",
    "list_models",
    "mobilenet_v2",
    "resnet18",
    "resnet20",
    "resnet34",
    "resnet50",
    "resnet56",
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "alexnet": alexnet,
    "googlenet": googlenet,
    "lenet5": lenet5,
    "mobilenet_v2": mobilenet_v2,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet56": resnet56,
    "vgg11": vgg11,
    "vgg11_bn": vgg11_bn,
    "vgg16": vgg16,
    "vgg16_bn": vgg16_bn,
}


def list_models() -> list[str]:
    """The names ``get_model`` knows, sorted."""
    return sorted(_BUILDERS)


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return _BUILDERS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}: choose one of {', '.join(list_models())}"
        ) from None


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model called ``name`` (case-insensitive) with the builder's ``kwargs``."""
    return _builder(name)(**kwargs)


def has_cifar_variant(name: str) -> bool:
    """Whether the builder of ``name`` takes ``cifar=True``."""
    return "cifar" in inspect.signature(_builder(name)).parameters
