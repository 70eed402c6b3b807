"""Activations of MobileNet/EfficientNet-era networks and classifiers' heads: ``SiLU``,
``GELU`` (exact or tanh approximation), ``Hardswish``, ``Hardsigmoid``, ``ELU``,
``Softmax`` and ``LogSoftmax``, with PyTorch's formulas and gradients (kinks take
PyTorch's side). ``inplace`` is accepted for compatibility; outputs are new arrays.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .._checks import check_layer_input
from .module import Module

__all__ = ["ELU", "GELU", "Hardsigmoid", "Hardswish", "LogSoftmax", "SiLU", "Softmax"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) as (1 + tanh(x/2)) / 2: no overflow for large |x|."""
    half = x.dtype.type(0.5)
    return half * (np.tanh(x * half) + x.dtype.type(1))


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:  # scipy is optional: math.erf is as accurate, one value at a time
        return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)
    return erf(x).astype(x.dtype, copy=False)


def _inplace_repr(inplace: bool) -> str:
    return "inplace=True" if inplace else ""


class SiLU(Module):
    """x * sigmoid(x) (``torch.nn.SiLU``, a.k.a. swish)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        sig = _sigmoid(input)
        self.save_for_backward(input, sig)
        return input * sig

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        x, sig = self.saved_tensors()
        one = x.dtype.type(1)
        return grad_output * (sig * (one + x * (one - sig)))

    def extra_repr(self) -> str:
        return _inplace_repr(self.inplace)


_GELU_APPROXIMATIONS = ("none", "tanh")


class GELU(Module):
    """x * Phi(x) (``torch.nn.GELU``); ``approximate='tanh'`` uses
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in _GELU_APPROXIMATIONS:
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        dt = input.dtype.type
        if self.approximate == "tanh":
            inner = dt(math.sqrt(2 / math.pi)) * (input + dt(0.044715) * input**3)
            t = np.tanh(inner)
            self.save_for_backward(input, t)
            return dt(0.5) * input * (dt(1) + t)
        cdf = dt(0.5) * (dt(1) + _erf(input * dt(1 / math.sqrt(2))))
        self.save_for_backward(input, cdf)
        return input * cdf

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        x, saved = self.saved_tensors()
        dt = x.dtype.type
        if self.approximate == "tanh":
            t = saved
            d_inner = dt(math.sqrt(2 / math.pi)) * (dt(1) + dt(3 * 0.044715) * x * x)
            grad = dt(0.5) * (dt(1) + t) + dt(0.5) * x * (dt(1) - t * t) * d_inner
            return grad_output * grad
        pdf = np.exp(x * x * dt(-0.5)) * dt(1 / math.sqrt(2 * math.pi))
        return grad_output * (saved + x * pdf)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Hardswish(Module):
    """x * relu6(x + 3) / 6 (``torch.nn.Hardswish``, MobileNetV3)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        dt = input.dtype.type
        self.save_for_backward(input)
        return input * np.clip(input + dt(3), dt(0), dt(6)) / dt(6)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (x,) = self.saved_tensors()
        dt = x.dtype.type
        # PyTorch's sides: 0 below -3, x/3 + 1/2 on [-3, 3], 1 above
        slope = np.where(x < dt(-3), dt(0), np.where(x <= dt(3), x / dt(3) + dt(0.5), dt(1)))
        return grad_output * slope


class Hardsigmoid(Module):
    """relu6(x + 3) / 6 (``torch.nn.Hardsigmoid``); the gradient 1/6 strictly inside
    (-3, 3), as PyTorch's."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        dt = input.dtype.type
        self.save_for_backward((input > dt(-3)) & (input < dt(3)))
        return np.clip(input + dt(3), dt(0), dt(6)) / dt(6)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (inside,) = self.saved_tensors()
        return grad_output * inside / grad_output.dtype.type(6)


class ELU(Module):
    """x if x > 0 else alpha * (exp(x) - 1) (``torch.nn.ELU``)."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__()
        self.alpha = alpha
        self.inplace = inplace

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        alpha = input.dtype.type(self.alpha)
        self.save_for_backward(input)
        return np.where(input > 0, input, alpha * np.expm1(np.minimum(input, 0)))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        (x,) = self.saved_tensors()
        alpha = x.dtype.type(self.alpha)
        return grad_output * np.where(x > 0, x.dtype.type(1), alpha * np.exp(np.minimum(x, 0)))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}" + (", inplace=True" if self.inplace else "")


def _softmax_dim(dim: int | None, ndim: int, name: str) -> int:
    """``dim``, or PyTorch's legacy choice (with its warning) when it is None."""
    if dim is not None:
        if not -max(ndim, 1) <= dim < max(ndim, 1):
            raise ValueError(f"dim {dim} is out of range for an input of {ndim} dims")
        return dim
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to "
        "include dim=X as an argument.",
        UserWarning,
        stacklevel=3,
    )
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(Module):
    """exp(x) / sum(exp(x)) along ``dim`` (``torch.nn.Softmax``), shifted by the max."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        axis = _softmax_dim(self.dim, input.ndim, "softmax")
        shifted = np.exp(input - input.max(axis=axis, keepdims=True))
        out = shifted / shifted.sum(axis=axis, keepdims=True)
        self.save_for_backward(out, axis)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        out, axis = self.saved_tensors()
        return out * (grad_output - (grad_output * out).sum(axis=axis, keepdims=True))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """x - max - log(sum(exp(x - max))) along ``dim`` (``torch.nn.LogSoftmax``)."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        axis = _softmax_dim(self.dim, input.ndim, "log_softmax")
        shifted = input - input.max(axis=axis, keepdims=True)
        out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        self.save_for_backward(out, axis)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        out, axis = self.saved_tensors()
        return grad_output - np.exp(out) * grad_output.sum(axis=axis, keepdims=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
