"""Containers (Sequential, ModuleList) and residual blocks (``Residual``, ``BasicBlock``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .layers import BatchNorm2d, Conv2d, ReLU
from .module import Module

__all__ = ["BasicBlock", "ModuleList", "Residual", "Sequential"]


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
        for module in self._modules.values():
            input = module(input)
        return input

    def backward(self, grad_output: Any) -> Any:
        modules = list(self._modules.values())
        for i in range(len(modules) - 1, -1, -1):
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
        return grad_output


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


class BasicBlock(Module):
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

    @classmethod
    def make(cls, inplanes: int, planes: int, stride: int = 1, dtype: Any = None) -> BasicBlock:
        """A block with the standard 1x1-conv + BN downsample when shapes change."""
        downsample = None
        if stride != 1 or inplanes != planes * cls.expansion:
            downsample = Sequential(
                Conv2d(inplanes, planes * cls.expansion, 1, stride=stride, bias=False, dtype=dtype),
                BatchNorm2d(planes * cls.expansion, dtype=dtype),
            )
        return cls(inplanes, planes, stride, downsample, dtype=dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad = self.relu.backward(grad_output)  # the second relu call is popped first
        grad_skip = grad if self.downsample is None else self.downsample.backward(grad)
        grad = self.conv2.backward(self.bn2.backward(grad))
        grad = self.conv1.backward(self.bn1.backward(self.relu.backward(grad)))
        return grad + grad_skip
