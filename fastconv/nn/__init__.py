"""``fastconv.nn``: layers, containers and losses with PyTorch's names and an explicit backward.

Someone who knows ``torch.nn`` can write a fastconv model without reading these docs::

    from fastconv import nn, optim

    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    logits = model(x)                      # forward, saves what backward needs
    loss = criterion(logits, y)            # a Python float
    model.backward(criterion.backward())   # grad wrt x; accumulates param.grad
    optimizer.step(); optimizer.zero_grad()

Parameters are :class:`Parameter` objects holding NumPy ``.data`` and ``.grad``;
``state_dict()`` keys and shapes match PyTorch's, so weights move both ways::

    fc_model.load_state_dict(torch_model.state_dict())
    torch_model.load_state_dict(nn.to_torch_state_dict(fc_model.state_dict()))

``nn.to_torch(model)`` / ``nn.from_torch(torch_model)`` convert whole models.

Layers run on NumPy (CPU) arrays; conv, pooling and matrix products go through
:mod:`fastconv.functional`, i.e. the C++ kernels.
"""

from . import init
from .activation import ELU, GELU, Hardsigmoid, Hardswish, LogSoftmax, SiLU, Softmax
from .container import (
    BasicBlock,
    Bottleneck,
    Concat,
    ModuleList,
    Residual,
    Sequential,
    backward_chain,
    forward_chain,
)
from .conv_transpose import ConvTranspose2d
from .init import manual_seed
from .interop import from_torch, to_torch, to_torch_state_dict
from .layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    ReLU6,
    Sigmoid,
    Tanh,
    activation_in_place,
    batch_norm_activation,
)
from .layers1d import AvgPool1d, Conv1d, MaxPool1d
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, NLLLoss, SmoothL1Loss
from .module import Module, Parameter, Summary, is_grad_enabled, no_grad, set_grad_enabled
from .normalization import GroupNorm, InstanceNorm2d, LayerNorm
from .resampling import PixelShuffle, PixelUnshuffle, Upsample
from .utils import clip_grad_norm_, load_weights, save_weights

__all__ = [
    "ELU",
    "GELU",
    "AdaptiveAvgPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "BCEWithLogitsLoss",
    "BasicBlock",
    "BatchNorm2d",
    "Bottleneck",
    "Concat",
    "Conv1d",
    "Conv2d",
    "ConvTranspose2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "GroupNorm",
    "Hardsigmoid",
    "Hardswish",
    "Identity",
    "InstanceNorm2d",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "MaxPool1d",
    "MaxPool2d",
    "Module",
    "ModuleList",
    "NLLLoss",
    "Parameter",
    "PixelShuffle",
    "PixelUnshuffle",
    "ReLU",
    "ReLU6",
    "Residual",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "SmoothL1Loss",
    "Softmax",
    "Summary",
    "Tanh",
    "Upsample",
    "activation_in_place",
    "backward_chain",
    "batch_norm_activation",
    "clip_grad_norm_",
    "forward_chain",
    "from_torch",
    "init",
    "is_grad_enabled",
    "load_weights",
    "manual_seed",
    "no_grad",
    "save_weights",
    "set_grad_enabled",
    "to_torch",
    "to_torch_state_dict",
]
