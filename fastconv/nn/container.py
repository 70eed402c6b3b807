"""Containers (Sequential, ModuleList, Concat) and residual blocks (``Residual``, and
torchvision's ResNet blocks ``BasicBlock`` and ``Bottleneck``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .layers import (
    BatchNorm2d,
    Conv2d,
    ReLU,
    activation_in_place,
    batch_norm_activation,
    fuses,
)
from .module import Module

__all__ = ["BasicBlock", "Bottleneck", "Concat", "ModuleList", "Residual", "Sequential"]


def forward_chain(modules: list[Module], input: Any) -> Any:
    """Each module on the last one's output (what ``Sequential`` runs), a BatchNorm2d
    followed by a ReLU or ReLU6 as one fused pass (:func:`batch_norm_activation`)."""
    i = 0
    while i < len(modules):
        if i + 1 < len(modules) and fuses(modules[i], modules[i + 1]):
            input = batch_norm_activation(modules[i], modules[i + 1], input)
            i += 2
        else:
            input = modules[i](input)
            i += 1
    return input


def backward_chain(modules: list[Module], grad_output: Any) -> Any:
    """The backward of :func:`forward_chain`, last module first."""
    i = len(modules) - 1
    while i >= 0:
        grad_output = modules[i].backward(grad_output)
        if grad_output is None:  # needs_input_grad=False: nothing flows further back
            for earlier in modules[:i]:
                trainable = [n for n, p in earlier.named_parameters() if p.requires_grad]
                if trainable:
                    raise RuntimeError(
                        f"{type(modules[i]).__name__} (needs_input_grad=False) returned no "
                        f"input gradient, but the earlier {type(earlier).__name__} has "
                        f"trainable parameters ({', '.join(trainable)})"
                    )
                earlier.clear_saved()
            return None
        i -= 1
    return grad_output


class Sequential(Module):
    """Modules applied in order (``torch.nn.Sequential``); backward runs them in reverse.

    ``Sequential(a, b, c)`` names its children "0", "1", "2" (PyTorch's state_dict
    keys); ``Sequential(OrderedDict(name=module, ...))`` keeps the given names.
    Supports ``len``, iteration, integer and slice indexing, ``append``.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, module in args[0].items():
                self.add_module(name, module)
        else:
            for i, module in enumerate(args):
                self.add_module(str(i), module)

    def _index(self, idx: int) -> int:
        n = len(self._modules)
        idx = int(idx)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range")
        return idx % n

    def __getitem__(self, idx: int | slice) -> Any:
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(items[idx]))
        return items[self._index(idx)][1]

    def __setitem__(self, idx: int, module: Module) -> None:
        key = list(self._modules)[self._index(idx)]
        self.add_module(key, module)

    def __delitem__(self, idx: int | slice) -> None:
        keys = list(self._modules)
        targets = keys[idx] if isinstance(idx, slice) else [keys[self._index(idx)]]
        for key in targets:
            del self._modules[key]
        # PyTorch renumbers the remaining modules
        items = list(self._modules.values())
        self._modules.clear()
        for i, module in enumerate(items):
            self._modules[str(i)] = module

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> Sequential:
        for module in modules:
            self.append(module)
        return self

    def forward(self, input: Any) -> Any:
        return forward_chain(list(self._modules.values()), input)

    def backward(self, grad_output: Any) -> Any:
        return backward_chain(list(self._modules.values()), grad_output)


class ModuleList(Module):
    """A list of modules whose parameters are registered (``torch.nn.ModuleList``)."""

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        for module in modules or ():
            self.append(module)

    def __getitem__(self, idx: int | slice) -> Any:
        values = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(values[idx])
        return values[idx]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for module in modules:
            self.append(module)
        return self


class Concat(Module):
    """Branches applied to the same input, their outputs concatenated along ``dim``.

    torch has no such layer (torchvision's Inception module calls ``torch.cat`` in its
    forward); this one carries the backward: the gradient is split along ``dim`` and
    the branches' input gradients add up.  ``Concat(a, b)`` names its branches "0",
    "1"; ``Concat(OrderedDict(branch1=a, ...))`` keeps the given names, so a subclass
    gets the state_dict keys of a torch module that holds its branches as attributes.
    """

    def __init__(self, *args: Any, dim: int = 1) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, module in args[0].items():
                self.add_module(name, module)
        else:
            for i, module in enumerate(args):
                self.add_module(str(i), module)
        self.dim = dim

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, input: np.ndarray) -> np.ndarray:
        outputs = [branch(input) for branch in self._modules.values()]
        self.save_for_backward([out.shape[self.dim] for out in outputs])
        return np.concatenate(outputs, axis=self.dim)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (sizes,) = self.saved_tensors()
        pieces = np.split(grad_output, np.cumsum(sizes)[:-1], axis=self.dim)
        grad = None
        for branch, piece in zip(self._modules.values(), pieces):
            # the kernels' fast path takes C-contiguous arrays; a channel slice is not one
            branch_grad = branch.backward(np.ascontiguousarray(piece))
            grad = branch_grad if grad is None else grad + branch_grad
        return grad

    def extra_repr(self) -> str:
        return f"dim={self.dim}" if self.dim != 1 else ""


class Residual(Module):
    """A skip connection: ``block(x) + shortcut(x)`` (``shortcut=None``: identity).

    The gradient flows through both branches and the two input gradients add up.
    State dict keys: ``block.*`` and ``shortcut.*``.
    """

    def __init__(self, block: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        self.block = block
        self.shortcut = shortcut

    def forward(self, input: np.ndarray) -> np.ndarray:
        out = self.block(input)
        skip = input if self.shortcut is None else self.shortcut(input)
        if out.shape != skip.shape:
            raise ValueError(
                f"Residual: block output {out.shape} and shortcut output "
                f"{skip.shape} differ; give a shortcut that matches them"
            )
        return out + skip

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad = self.block.backward(grad_output)
        if self.shortcut is None:
            return grad + grad_output
        return grad + self.shortcut.backward(grad_output)


class _ResNetBlock(Module):
    expansion = 1

    @classmethod
    def make(cls, inplanes: int, planes: int, stride: int = 1, dtype: Any = None) -> Any:
        """A block with the standard 1x1-conv + BN downsample when shapes change."""
        downsample = None
        if stride != 1 or inplanes != planes * cls.expansion:
            downsample = Sequential(
                Conv2d(inplanes, planes * cls.expansion, 1, stride=stride, bias=False, dtype=dtype),
                BatchNorm2d(planes * cls.expansion, dtype=dtype),
            )
        return cls(inplanes, planes, stride, downsample, dtype=dtype)


class BasicBlock(_ResNetBlock):
    """torchvision's ResNet ``BasicBlock``: two 3x3 conv-BN layers and a skip connection.

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))``; ``downsample`` (e.g. a
    1x1 strided ``Conv2d`` + ``BatchNorm2d`` in a ``Sequential``) is needed when
    ``stride != 1`` or the channel count changes; ``BasicBlock.make(...)`` builds it.
    Attribute names match torchvision, so state dicts move between the two.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Module | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False, dtype=dtype)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.relu = ReLU(inplace=True)
        self.conv2 = Conv2d(planes, planes, 3, stride=1, padding=1, bias=False, dtype=dtype)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: np.ndarray) -> np.ndarray:
        identity = x
        out = batch_norm_activation(self.bn1, self.relu, self.conv1(x))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity  # in place: bn2's output is kept by no layer
        return activation_in_place(self.relu, out)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad = self.relu.backward(grad_output)  # the second relu call is popped first
        grad_skip = grad if self.downsample is None else self.downsample.backward(grad)
        grad = self.conv2.backward(self.bn2.backward(grad))
        grad = self.conv1.backward(self.bn1.backward(self.relu.backward(grad)))
        return grad + grad_skip


class Bottleneck(_ResNetBlock):
    """torchvision's ResNet ``Bottleneck`` (ResNet-50 and deeper): 1x1, 3x3, 1x1 conv-BN.

    ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + downsample(x))``; the
    3x3 conv carries the stride (ResNet v1.5, as torchvision) and the block widens to
    ``planes * 4`` channels.  ``groups`` and ``base_width`` give ResNeXt and wide-ResNet
    blocks as torchvision's do.  ``Bottleneck.make(...)`` adds the 1x1-conv + BN
    downsample when the shape changes.  Attribute names match torchvision.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out = planes * self.expansion
        self.conv1 = Conv2d(inplanes, width, 1, bias=False, dtype=dtype)
        self.bn1 = BatchNorm2d(width, dtype=dtype)
        self.conv2 = Conv2d(
            width,
            width,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            groups=groups,
            bias=False,
            dtype=dtype,
        )
        self.bn2 = BatchNorm2d(width, dtype=dtype)
        self.conv3 = Conv2d(width, out, 1, bias=False, dtype=dtype)
        self.bn3 = BatchNorm2d(out, dtype=dtype)
        self.relu = ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: np.ndarray) -> np.ndarray:
        identity = x
        out = batch_norm_activation(self.bn1, self.relu, self.conv1(x))
        out = batch_norm_activation(self.bn2, self.relu, self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity  # in place: bn3's output is kept by no layer
        return activation_in_place(self.relu, out)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad = self.relu.backward(grad_output)  # the relu's three calls pop last first
        grad_skip = grad if self.downsample is None else self.downsample.backward(grad)
        grad = self.conv3.backward(self.bn3.backward(grad))
        grad = self.conv2.backward(self.bn2.backward(self.relu.backward(grad)))
        grad = self.conv1.backward(self.bn1.backward(self.relu.backward(grad)))
        return grad + grad_skip
