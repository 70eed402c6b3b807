"""GoogLeNet (Inception v1, Szegedy et al., 2015) in torchvision's layout.

A stem (7x7 stride-2 ``BasicConv2d``, max-pool, 1x1 and 3x3 ``BasicConv2d``,
max-pool), nine ``Inception`` modules in three groups with max-pools between them,
global average pooling, dropout and ``fc``: 6,624,904 parameters for 1000 classes.
``BasicConv2d`` is conv (no bias) - BatchNorm2d (eps 0.001) - ReLU; an ``Inception``
module concatenates four branches: 1x1; 1x1 then 3x3; 1x1 then 3x3 (torchvision's
"5x5" branch has a 3x3 kernel, a known slip kept so that its weights load); 3x3
max-pool then 1x1.  ``transform_input`` (torchvision's re-normalisation of inputs for
the ported Google weights) is left out: normalise the inputs beforehand.

The auxiliary classifiers are optional, as in torchvision: ``aux_logits=False``
(default) builds none; ``aux_logits=True`` adds ``aux1`` and ``aux2`` (the keys of
torchvision's ``GoogLeNet()`` and of its published weights, which also load into
``aux_logits=False`` with ``strict=False``), and in training mode forward returns
``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``; backward then takes the three
gradients (as such a tuple, None for an unused head) or the logits' gradient alone.
In eval mode forward returns the logits either way.

Initialisation as torchvision: conv and linear weights N(0, 0.01) (torchvision truncates
at +-2, 200 standard deviations out, which never happens), batch norms 1 and 0.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

from .. import nn
from ._common import attach_step

__all__ = ["BasicConv2d", "GoogLeNet", "GoogLeNetOutputs", "Inception", "InceptionAux", "googlenet"]


class GoogLeNetOutputs(NamedTuple):
    logits: np.ndarray
    aux_logits2: np.ndarray | None
    aux_logits1: np.ndarray | None


class BasicConv2d(nn.Module):
    """Conv2d (no bias), BatchNorm2d(eps=0.001), ReLU (a function call, no child)."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        attach_step(self, "relu", nn.ReLU(inplace=True))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return nn.batch_norm_activation(self.bn, self.relu, self.conv(x))

    def backward(self, grad_output: np.ndarray) -> np.ndarray | None:
        return self.conv.backward(self.bn.backward(self.relu.backward(grad_output)))


class Inception(nn.Concat):
    """Four branches on one input, concatenated: ``branch1``.. ``branch4``."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__(
            OrderedDict(
                branch1=BasicConv2d(in_channels, ch1x1, kernel_size=1),
                branch2=nn.Sequential(
                    BasicConv2d(in_channels, ch3x3red, kernel_size=1),
                    BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
                ),
                branch3=nn.Sequential(
                    BasicConv2d(in_channels, ch5x5red, kernel_size=1),
                    BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),  # as torchvision
                ),
                branch4=nn.Sequential(
                    nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                    BasicConv2d(in_channels, pool_proj, kernel_size=1),
                ),
            )
        )


class InceptionAux(nn.Module):
    """Auxiliary head: 4x4 adaptive average pool, 1x1 BasicConv2d(128), fc1-relu-dropout-fc2."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)
        attach_step(self, "pool", nn.AdaptiveAvgPool2d((4, 4)))
        attach_step(self, "flatten", nn.Flatten())
        attach_step(self, "relu", nn.ReLU(inplace=True))

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self.flatten(self.conv(self.pool(x)))
        return self.fc2(self.dropout(self.relu(self.fc1(x))))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad = self.fc1.backward(
            self.relu.backward(self.dropout.backward(self.fc2.backward(grad_output)))
        )
        return self.pool.backward(self.conv.backward(self.flatten.backward(grad)))


class GoogLeNet(nn.Module):
    """torchvision's ``GoogLeNet`` (``aux_logits`` default False here, no transform_input)."""

    _stem = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b")
    _middle = ("inception4b", "inception4c", "inception4d")
    _tail = ("inception4e", "maxpool4", "inception5a", "inception5b", "avgpool")

    def __init__(
        self,
        num_classes: int = 1000,
        aux_logits: bool = False,
        init_weights: bool = True,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
        *,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, dropout=dropout_aux)
        else:
            self.aux1 = None
            self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        attach_step(self, "flatten", nn.Flatten())
        if init_weights:
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(module.weight, 0.0, 0.01)
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)

    def _run(self, names: tuple[str, ...], x: np.ndarray) -> np.ndarray:
        for name in names:
            x = getattr(self, name)(x)
        return x

    def _run_backward(self, names: tuple[str, ...], grad: np.ndarray) -> np.ndarray | None:
        for name in reversed(names):
            grad = getattr(self, name).backward(grad)
        return grad

    def forward(self, x: np.ndarray) -> Any:
        with_aux = self.aux_logits and self.training
        x = self.inception4a(self.maxpool3(self._run(self._stem, x)))
        aux1 = self.aux1(x) if with_aux else None
        x = self._run(self._middle, x)
        aux2 = self.aux2(x) if with_aux else None
        x = self.fc(self.dropout(self.flatten(self._run(self._tail, x))))
        self.save_for_backward(with_aux)
        return GoogLeNetOutputs(x, aux2, aux1) if with_aux else x

    def backward(self, grad_output: Any) -> np.ndarray | None:
        (with_aux,) = self.saved_tensors()
        grad_aux2 = grad_aux1 = None
        if isinstance(grad_output, tuple):
            grad_output, grad_aux2, grad_aux1 = grad_output
        grad = self.flatten.backward(self.dropout.backward(self.fc.backward(grad_output)))
        grad = self._run_backward(self._tail, grad)
        if with_aux and grad_aux2 is not None:
            grad = grad + self.aux2.backward(grad_aux2)
        grad = self._run_backward(self._middle, grad)
        if with_aux and grad_aux1 is not None:
            grad = grad + self.aux1.backward(grad_aux1)
        grad = self.maxpool3.backward(self.inception4a.backward(grad))
        return self._run_backward(self._stem, grad)


def googlenet(
    num_classes: int = 1000,
    *,
    aux_logits: bool = False,
    in_channels: int = 3,
    dropout: float = 0.2,
    dropout_aux: float = 0.7,
) -> GoogLeNet:
    """GoogLeNet (Inception v1); ``aux_logits=True`` adds torchvision's two aux heads."""
    return GoogLeNet(
        num_classes, aux_logits, dropout=dropout, dropout_aux=dropout_aux, in_channels=in_channels
    )
