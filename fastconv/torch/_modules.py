"""Drop-in ``torch.nn`` modules on fastconv's kernels, and ``convert`` / ``revert``.

Each module subclasses the torch module it replaces and adds no parameter, buffer or
constructor argument: same ``state_dict``, same ``repr``, and ``isinstance(m,
torch.nn.Conv2d)`` still holds. ``convert`` swaps the class of matching modules in
place (on a deep copy unless ``inplace=True``), so parameters, hooks and every
reference a custom ``forward`` holds stay as they were.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import _functional as fct

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "Conv1d",
    "Conv2d",
    "Linear",
    "MaxPool2d",
    "autotune_choices",
    "convert",
    "revert",
]

# Distinct input shapes a module autotunes before it stops timing new ones (their
# calls then run fastconv): a model fed ever-changing sizes must not keep timing.
AUTOTUNE_MAX_SHAPES = 16
# Alternating rounds of timing per shape; the best of each side decides. Past two
# rounds, a layer stops once its timing has taken AUTOTUNE_BUDGET_S (large layers in
# training take a second a call).
AUTOTUNE_ROUNDS = 5
AUTOTUNE_BUDGET_S = 1.0


class _FastconvModule:
    """What the converted modules share: the per-call choice between fastconv's op and
    torch's (autotuning), given each module's ``_fastconv_forward`` and
    ``_torch_forward``, which take the input and the module's parameters."""

    # Class-level defaults, so that a module whose class ``convert`` swapped works
    # without a constructor call; ``convert`` sets them on the instance.
    _fastconv_autotune = False
    _fastconv_choices: dict | None = None

    def _parameters_in_order(self) -> tuple:
        return ()

    def _fastconv_forward(self, input, *params):
        raise NotImplementedError

    def _torch_forward(self, input, *params):
        raise NotImplementedError

    def forward(self, input):
        params = self._parameters_in_order()
        if self._fastconv_autotune and self._choice(input, params) == "torch":
            return self._torch_forward(input, *params)
        return self._fastconv_forward(input, *params)

    def _choice(self, input, params) -> str:
        training = fct._needs_graph(input, *params)
        key = (tuple(input.shape), input.dtype, input.device, input.stride(), training)
        choices = self.__dict__.get("_fastconv_choices")
        if choices is None:
            choices = self._fastconv_choices = {}
        found = choices.get(key)
        if found is not None:
            return found["choice"]
        if len(choices) >= AUTOTUNE_MAX_SHAPES or fct.route(input, *params) == fct.TORCH:
            return "fastconv"  # torch's op runs anyway when fastconv cannot
        choices[key] = found = self._time_both(input, params, training)
        return found["choice"]

    def _time_both(self, input, params, training) -> dict:
        """Best-of-``AUTOTUNE_ROUNDS`` seconds (fewer past the budget) of fastconv's and
        torch's op on this input, alternating; with ``training``, forward and backward
        (through ``torch.autograd.grad`` on detached copies: no ``.grad`` or hook is
        touched)."""

        def leaf(t):
            return None if t is None else t.detach().requires_grad_(t.requires_grad)

        x, leaves = leaf(input), [leaf(p) for p in params]

        def runner(forward):
            def run():
                out = forward(x, *leaves)
                if isinstance(out, tuple):
                    out = out[0]
                if training:
                    wanted = [t for t in (x, *leaves) if t is not None and t.requires_grad]
                    torch.autograd.grad(out, wanted, torch.ones_like(out))

            return run

        sides = {"fastconv": runner(self._fastconv_forward), "torch": runner(self._torch_forward)}
        best = dict.fromkeys(sides, float("inf"))
        spent = 0.0
        with torch.enable_grad() if training else torch.no_grad():
            for run in sides.values():
                run()  # warm-up: first-call allocations, thread start-up, lazy setup
            for round_index in range(AUTOTUNE_ROUNDS):
                if round_index >= 2 and spent > AUTOTUNE_BUDGET_S:
                    break
                for name, run in sides.items():
                    start = time.perf_counter()
                    run()
                    seconds = time.perf_counter() - start
                    best[name] = min(best[name], seconds)
                    spent += seconds
        choice = "fastconv" if best["fastconv"] <= best["torch"] else "torch"
        return {"choice": choice, "fastconv_s": best["fastconv"], "torch_s": best["torch"]}


class Conv2d(_FastconvModule, nn.Conv2d):
    """``torch.nn.Conv2d`` running ``fastconv.torch.conv2d``; non-zero padding modes
    pad with torch first, as torch's own module does."""

    def _parameters_in_order(self):
        return (self.weight, self.bias)

    def _padded(self, input):
        if self.padding_mode == "zeros":
            return input, self.padding
        return F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode), 0

    def _fastconv_forward(self, input, weight, bias):
        input, padding = self._padded(input)
        return fct.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups)

    def _torch_forward(self, input, weight, bias):
        input, padding = self._padded(input)
        return F.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups)


class Conv1d(_FastconvModule, nn.Conv1d):
    """``torch.nn.Conv1d`` running ``fastconv.torch.conv2d`` on one-row planes (autograd
    flows through the views); non-zero padding modes pad with torch first."""

    def _parameters_in_order(self):
        return (self.weight, self.bias)

    def _fastconv_forward(self, input, weight, bias):
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0,)
        rows = (0, padding[0]) if not isinstance(padding, str) else padding
        out = fct.conv2d(
            input.unsqueeze(-2),
            weight.unsqueeze(-2),
            bias,
            (1, *self.stride),
            rows,
            (1, *self.dilation),
            self.groups,
        )
        return out.squeeze(-2)

    def _torch_forward(self, input, weight, bias):
        return self._conv_forward(input, weight, bias)


class ConvTranspose2d(_FastconvModule, nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` running ``fastconv.torch.conv_transpose2d``
    (``output_size`` as torch's module takes it)."""

    def _parameters_in_order(self):
        return (self.weight, self.bias)

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            return super(_FastconvModule, self).forward(input, output_size)  # torch's error
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        params = self._parameters_in_order()
        if self._fastconv_autotune and self._choice(input, params) == "torch":
            return self._torch_forward(input, *params, output_padding=output_padding)
        return self._fastconv_forward(input, *params, output_padding=output_padding)

    def _geometry(self, output_padding):
        if output_padding is None:
            output_padding = self.output_padding
        return self.stride, self.padding, output_padding, self.groups, self.dilation

    def _fastconv_forward(self, input, weight, bias, output_padding=None):
        return fct.conv_transpose2d(input, weight, bias, *self._geometry(output_padding))

    def _torch_forward(self, input, weight, bias, output_padding=None):
        return F.conv_transpose2d(input, weight, bias, *self._geometry(output_padding))


class Linear(_FastconvModule, nn.Linear):
    """``torch.nn.Linear`` running ``fastconv.torch.linear``."""

    def _parameters_in_order(self):
        return (self.weight, self.bias)

    def _fastconv_forward(self, input, weight, bias):
        return fct.linear(input, weight, bias)

    def _torch_forward(self, input, weight, bias):
        return F.linear(input, weight, bias)


class MaxPool2d(_FastconvModule, nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` running ``fastconv.torch.max_pool2d``."""

    def _pool(self, op, input):
        return op(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )

    def _fastconv_forward(self, input):
        return self._pool(fct.max_pool2d, input)

    def _torch_forward(self, input):
        return self._pool(F.max_pool2d, input)


class AvgPool2d(_FastconvModule, nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` running ``fastconv.torch.avg_pool2d``."""

    def _pool(self, op, input):
        return op(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def _fastconv_forward(self, input):
        return self._pool(fct.avg_pool2d, input)

    def _torch_forward(self, input):
        return self._pool(F.avg_pool2d, input)


class AdaptiveAvgPool2d(_FastconvModule, nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d`` running ``fastconv.torch.adaptive_avg_pool2d``."""

    def _fastconv_forward(self, input):
        return fct.adaptive_avg_pool2d(input, self.output_size)

    def _torch_forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)


# torch class -> its fastconv twin. Only these exact classes convert: a subclass may
# have its own forward, which a swap would lose.
CONVERSIONS: dict[type, type] = {
    nn.Conv2d: Conv2d,
    nn.Conv1d: Conv1d,
    nn.ConvTranspose2d: ConvTranspose2d,
    nn.Linear: Linear,
    nn.MaxPool2d: MaxPool2d,
    nn.AvgPool2d: AvgPool2d,
    nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
}
_REVERSIONS = {ours: theirs for theirs, ours in CONVERSIONS.items()}

for _ours in CONVERSIONS.values():
    # Pickles (torch.save of a whole model) name the public module.
    _ours.__module__ = "fastconv.torch"

LayerFilter = Union[Iterable[Union[type, str]], Callable[[str, nn.Module], bool], None]


def _selector(layers: LayerFilter) -> Callable[[str, nn.Module], bool]:
    if layers is None:
        return lambda name, module: True
    if callable(layers) and not isinstance(layers, type):
        return layers
    if isinstance(layers, (str, type)):
        layers = [layers]
    wanted = set()
    known = {cls.__name__: cls for cls in CONVERSIONS}
    for entry in layers:
        cls = known.get(entry) if isinstance(entry, str) else entry
        if cls not in CONVERSIONS:
            raise ValueError(
                f"layers: {entry!r} is not a convertible layer; choose from "
                f"{', '.join(known)} (names or torch.nn classes), or pass a predicate "
                "(qualified_name, module) -> bool"
            )
        wanted.add(cls)
    return lambda name, module: type(module) in wanted


def _has_uninitialized_parameters(module: nn.Module) -> bool:
    uninitialized = getattr(nn.parameter, "UninitializedParameter", ())
    return any(isinstance(p, uninitialized) for p in module.parameters(recurse=False))


def convert(
    model: nn.Module,
    *,
    inplace: bool = False,
    layers: LayerFilter = None,
    autotune: bool = False,
) -> nn.Module:
    """``model`` with its Conv2d, Conv1d, ConvTranspose2d, Linear, MaxPool2d, AvgPool2d
    and AdaptiveAvgPool2d modules running fastconv's kernels; returns the converted model.

    ``inplace=False`` converts a deep copy. ``layers`` picks what converts: names or
    classes (``{"Conv2d", torch.nn.Linear}``) or a predicate ``(qualified_name, module)
    -> bool``; default all of them. Only modules of exactly those classes convert
    (not subclasses, nor lazy modules before their first call); functional calls in a
    custom ``forward`` stay torch's (call ``fastconv.torch.conv2d`` ... there instead).

    ``autotune=True``: on the first input of each shape (and for inference or training
    separately) every converted module times its op on fastconv and on torch, best of
    ``AUTOTUNE_ROUNDS`` alternating rounds, and keeps the faster one
    (``autotune_choices`` reports the decisions).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    select = _selector(layers)
    if not inplace:
        model = copy.deepcopy(model)
    for name, module in model.named_modules():
        target = CONVERSIONS.get(type(module))
        if target is None or _has_uninitialized_parameters(module) or not select(name, module):
            continue
        module.__class__ = target
        module._fastconv_autotune = bool(autotune)
        module._fastconv_choices = None
    return model


def revert(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with every converted module back to its torch class (a deep copy unless
    ``inplace``); parameters and state are untouched."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():
        original = _REVERSIONS.get(type(module))
        if original is None:
            continue
        module.__class__ = original
        for attribute in ("_fastconv_autotune", "_fastconv_choices"):
            module.__dict__.pop(attribute, None)
    return model


def autotune_choices(model: nn.Module) -> dict[str, list[dict[str, Any]]]:
    """What each autotuned module of ``model`` decided, by qualified name: one entry per
    input seen (``shape``, ``training``, ``choice`` 'fastconv' or 'torch', and the best
    seconds of each side)."""
    report = {}
    for name, module in model.named_modules():
        choices = module.__dict__.get("_fastconv_choices")
        if isinstance(module, _FastconvModule) and choices:
            report[name] = [
                {"shape": key[0], "training": key[-1], **decision}
                for key, decision in choices.items()
            ]
    return report
