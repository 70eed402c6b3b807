"""Losses with PyTorch's arguments and formulas: ``CrossEntropyLoss``, ``NLLLoss``,
``BCEWithLogitsLoss``, ``MSELoss`` and ``SmoothL1Loss``.

``loss = criterion(input, target)`` returns a Python float (reductions ``'mean'`` and
``'sum'``; ``'none'`` returns the per-element array) and saves what ``backward``
needs; ``criterion.backward()`` returns the gradient of the loss with respect to
``input``, with ``input``'s shape and dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .module import Module

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "MSELoss",
    "NLLLoss",
    "SmoothL1Loss",
    "log_softmax",
    "softmax",
]

_REDUCTIONS = ("mean", "sum", "none")


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax: ``x - max - log(sum(exp(x - max)))``."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{reduction} is not a valid value for reduction")
        self.reduction = reduction
        self._pending: tuple | None = None

    def _finish(self, per_element: np.ndarray, total: Any) -> Any:
        if self.reduction == "none":
            return per_element
        return float(total)

    def _take(self) -> tuple:
        if self._pending is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called before the loss was "
                "computed (call the criterion first, once per backward)"
            )
        pending, self._pending = self._pending, None
        return pending

    @staticmethod
    def _upstream(grad_output: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        g = np.asarray(1.0 if grad_output is None else grad_output, dtype=dtype)
        if g.ndim and g.shape != shape:
            raise ValueError(f"grad_output has shape {g.shape}, expected {shape} or a scalar")
        return g


class CrossEntropyLoss(_Loss):
    """Cross entropy between logits and class indices (or class probabilities).

    ``input`` is (N, C) logits (or (C,), or (N, C, d1, ...)); ``target`` holds class
    indices (integers, shape (N,) / () / (N, d1, ...)) or probabilities (floats, the
    shape of ``input``).  Supports ``weight`` (per class), ``ignore_index``,
    ``reduction`` and ``label_smoothing`` with PyTorch's exact formulas: with index
    targets the smoothing term is normalised like the NLL term (by the summed target
    weights for ``'mean'``).
    """

    def __init__(
        self,
        weight: np.ndarray | None = None,
        size_average: Any = None,
        ignore_index: int = -100,
        reduce: Any = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        if size_average is not None or reduce is not None:
            raise ValueError(
                "size_average and reduce are deprecated in PyTorch and not "
                "supported; use reduction="
            )
        super().__init__(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
        self.weight = None if weight is None else np.asarray(weight)
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)

    def forward(self, input: np.ndarray, target: np.ndarray) -> Any:
        x = np.asarray(input)
        if x.dtype.kind != "f":
            raise TypeError(f"input must be floating-point logits, got {x.dtype}")
        target = np.asarray(target)
        unbatched = x.ndim == 1
        if unbatched:
            x = x[None]
            target = target[None]
        if x.ndim < 2:
            raise ValueError(f"input must be (N, C) logits, got shape {np.shape(input)}")
        n_classes = x.shape[1]
        # (M, C) rows of logits: the class axis last
        rows = np.moveaxis(x, 1, -1).reshape(-1, n_classes)
        dt = x.dtype.type
        weight = None if self.weight is None else self.weight.astype(x.dtype, copy=False)
        if weight is not None and weight.shape != (n_classes,):
            raise ValueError(f"weight must have shape ({n_classes},), got {weight.shape}")
        eps = self.label_smoothing
        logp = log_softmax(rows, axis=1)
        if target.dtype.kind == "f":  # class probabilities
            if target.shape != x.shape:
                raise ValueError(
                    f"probability targets must have the input's shape {x.shape}, got {target.shape}"
                )
            q = np.moveaxis(target, 1, -1).reshape(-1, n_classes).astype(x.dtype, copy=False)
            if eps > 0:
                q = q * dt(1 - eps) + dt(eps / n_classes)
            if weight is not None:
                q = q * weight
            denom = float(rows.shape[0])
        else:
            if target.dtype.kind not in "iu":
                raise TypeError(
                    f"target must hold integer class indices or float "
                    f"probabilities, got {target.dtype}"
                )
            expected = (x.shape[0], *x.shape[2:])
            if target.shape != expected:
                raise ValueError(
                    f"target has shape {target.shape}, expected {expected} for "
                    f"input of shape {x.shape}"
                )
            labels = target.reshape(-1).astype(np.int64)
            valid = labels != self.ignore_index
            bad = valid & ((labels < 0) | (labels >= n_classes))
            if bad.any():
                raise IndexError(
                    f"Target {int(labels[bad][0])} is out of bounds (classes 0..{n_classes - 1})"
                )
            safe = np.where(valid, labels, 0)
            m = rows.shape[0]
            q = np.zeros((m, n_classes), dtype=x.dtype)
            target_w = np.ones(m, dtype=x.dtype) if weight is None else weight[safe]
            target_w = target_w * valid
            q[np.arange(m), safe] = target_w * dt(1 - eps)
            if eps > 0:
                smooth = np.ones(n_classes, dtype=x.dtype) if weight is None else weight
                q += (valid[:, None] * smooth[None, :]) * dt(eps / n_classes)
            denom = float(target_w.sum())
        per_row = -(q * logp).sum(axis=1)
        total = per_row.sum()
        if self.reduction == "mean":
            total = total / dt(denom) if denom != 0 else dt(np.nan)
        per_element = per_row.reshape((x.shape[0], *x.shape[2:]))
        if unbatched:
            per_element = np.asarray(per_element[0])
        self._pending = (logp, q, denom, x.shape, unbatched, per_element.shape)
        return self._finish(per_element, total)

    def backward(self, grad_output: Any = None) -> np.ndarray:
        logp, q, denom, shape, unbatched, out_shape = self._take()
        dt = logp.dtype.type
        g = self._upstream(grad_output, out_shape if self.reduction == "none" else (), logp.dtype)
        grad = np.exp(logp) * q.sum(axis=1, keepdims=True) - q  # d(-sum q logp)/d logits
        if self.reduction == "mean":
            # nothing counted (all targets ignored): PyTorch's gradient is zero
            grad = grad * (dt(1.0 / denom) if denom != 0 else dt(0))
        if g.ndim:
            grad = grad * g.reshape(-1, 1)
        elif g != 1:
            grad = grad * g
        n_classes = shape[1]
        moved = (shape[0], *shape[2:], n_classes)
        grad = np.moveaxis(grad.reshape(moved), -1, 1)
        grad = np.ascontiguousarray(grad)
        return grad[0] if unbatched else grad

    def extra_repr(self) -> str:
        return ""


class MSELoss(_Loss):
    """Mean squared error ``mean((input - target)**2)`` (``torch.nn.MSELoss``)."""

    def __init__(
        self, size_average: Any = None, reduce: Any = None, reduction: str = "mean"
    ) -> None:
        if size_average is not None or reduce is not None:
            raise ValueError(
                "size_average and reduce are deprecated in PyTorch and not "
                "supported; use reduction="
            )
        super().__init__(reduction)

    def forward(self, input: np.ndarray, target: np.ndarray) -> Any:
        x = np.asarray(input)
        if x.dtype.kind != "f":
            raise TypeError(f"input must be floating-point, got {x.dtype}")
        t = np.asarray(target)
        if t.shape != x.shape:
            raise ValueError(f"target shape {t.shape} differs from input shape {x.shape}")
        diff = x - t.astype(x.dtype, copy=False)
        sq = diff * diff
        total = sq.sum()
        if self.reduction == "mean":
            total = total / x.dtype.type(max(x.size, 1)) if x.size else x.dtype.type(np.nan)
        self._pending = (diff,)
        return self._finish(sq, total)

    def backward(self, grad_output: Any = None) -> np.ndarray:
        (diff,) = self._take()
        dt = diff.dtype.type
        g = self._upstream(grad_output, diff.shape if self.reduction == "none" else (), diff.dtype)
        grad = diff * dt(2)
        if self.reduction == "mean":
            grad = grad * dt(1.0 / max(diff.size, 1))
        return grad * g if (g.ndim or g != 1) else grad


def _check_no_legacy(size_average: Any, reduce: Any) -> None:
    if size_average is not None or reduce is not None:
        raise ValueError(
            "size_average and reduce are deprecated in PyTorch and not supported; use reduction="
        )


def _float_input(input: Any) -> np.ndarray:
    x = np.asarray(input)
    if x.dtype.kind != "f":
        raise TypeError(f"input must be floating-point, got {x.dtype}")
    return x


def _same_shape_target(target: Any, x: np.ndarray) -> np.ndarray:
    t = np.asarray(target)
    if t.shape != x.shape:
        raise ValueError(f"target shape {t.shape} differs from input shape {x.shape}")
    return t.astype(x.dtype, copy=False)


def _broadcast_factor(value: Any, shape: tuple[int, ...], dtype: np.dtype, name: str) -> Any:
    if value is None:
        return None
    array = np.asarray(value).astype(dtype, copy=False)
    try:
        return np.broadcast_to(array, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {array.shape} does not broadcast to {shape}") from None


class BCEWithLogitsLoss(_Loss):
    """Binary cross entropy on logits (``torch.nn.BCEWithLogitsLoss``), in PyTorch's
    stable form ``(1 - t) * x - (1 + (pos_weight - 1) * t) * log(sigmoid(x))``, times
    ``weight``; ``weight`` and ``pos_weight`` (one per class, the last dim) broadcast to
    the input. The gradient wrt the logits is
    ``weight * ((1 + (pos_weight - 1) * t) * sigmoid(x) - pos_weight * t)``.
    """

    def __init__(
        self,
        weight: Any = None,
        size_average: Any = None,
        reduce: Any = None,
        reduction: str = "mean",
        pos_weight: Any = None,
    ) -> None:
        _check_no_legacy(size_average, reduce)
        super().__init__(reduction)
        self.weight = None if weight is None else np.asarray(weight)
        self.pos_weight = None if pos_weight is None else np.asarray(pos_weight)

    def forward(self, input: np.ndarray, target: np.ndarray) -> Any:
        x = _float_input(input)
        t = _same_shape_target(target, x)
        dt = x.dtype.type
        weight = _broadcast_factor(self.weight, x.shape, x.dtype, "weight")
        pos_weight = _broadcast_factor(self.pos_weight, x.shape, x.dtype, "pos_weight")
        log_sigmoid = np.minimum(x, dt(0)) - np.log1p(np.exp(-np.abs(x)))
        log_weight = dt(1) if pos_weight is None else dt(1) + (pos_weight - dt(1)) * t
        per_element = (dt(1) - t) * x - log_weight * log_sigmoid
        if weight is not None:
            per_element = per_element * weight
        total = per_element.sum()
        if self.reduction == "mean":
            total = total / dt(x.size) if x.size else dt(np.nan)
        self._pending = (x, t, weight, log_weight)
        return self._finish(per_element, total)

    def backward(self, grad_output: Any = None) -> np.ndarray:
        x, t, weight, log_weight = self._take()
        dt = x.dtype.type
        g = self._upstream(grad_output, x.shape if self.reduction == "none" else (), x.dtype)
        sigmoid = dt(0.5) * (np.tanh(x * dt(0.5)) + dt(1))
        grad = (dt(1) - t) - log_weight * (dt(1) - sigmoid)
        if weight is not None:
            grad = grad * weight
        if self.reduction == "mean":
            grad = grad * dt(1.0 / max(x.size, 1))
        return grad * g if (g.ndim or g != 1) else grad


class NLLLoss(_Loss):
    """Negative log likelihood of log-probabilities (``torch.nn.NLLLoss``): input (N, C),
    (C,) or (N, C, d1, ...), target class indices; ``-weight[t] * input[t]`` per sample,
    ``'mean'`` divides by the summed weights of the counted targets; ``ignore_index``
    targets count nothing."""

    def __init__(
        self,
        weight: Any = None,
        size_average: Any = None,
        ignore_index: int = -100,
        reduce: Any = None,
        reduction: str = "mean",
    ) -> None:
        _check_no_legacy(size_average, reduce)
        super().__init__(reduction)
        self.weight = None if weight is None else np.asarray(weight)
        self.ignore_index = int(ignore_index)

    def forward(self, input: np.ndarray, target: np.ndarray) -> Any:
        x = _float_input(input)
        labels = np.asarray(target)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"target must hold integer class indices, got {labels.dtype}")
        unbatched = x.ndim == 1
        if unbatched:
            x, labels = x[None], labels[None]
        if x.ndim < 2:
            raise ValueError(f"input must be (N, C) log-probabilities, got shape {x.shape}")
        n_classes = x.shape[1]
        expected = (x.shape[0], *x.shape[2:])
        if labels.shape != expected:
            raise ValueError(
                f"target has shape {labels.shape}, expected {expected} for input of shape "
                f"{x.shape}"
            )
        weight = None if self.weight is None else self.weight.astype(x.dtype, copy=False)
        if weight is not None and weight.shape != (n_classes,):
            raise ValueError(f"weight must have shape ({n_classes},), got {weight.shape}")
        rows = np.moveaxis(x, 1, -1).reshape(-1, n_classes)
        flat = labels.reshape(-1).astype(np.int64)
        valid = flat != self.ignore_index
        bad = valid & ((flat < 0) | (flat >= n_classes))
        if bad.any():
            raise IndexError(
                f"Target {int(flat[bad][0])} is out of bounds (classes 0..{n_classes - 1})"
            )
        safe = np.where(valid, flat, 0)
        target_weight = (np.ones(len(flat), x.dtype) if weight is None else weight[safe]) * valid
        per_row = -target_weight * rows[np.arange(len(flat)), safe]
        denom = float(target_weight.sum())
        dt = x.dtype.type
        total = per_row.sum()
        if self.reduction == "mean":
            total = total / dt(denom) if denom != 0 else dt(np.nan)
        per_element = per_row.reshape(expected)
        if unbatched:
            per_element = np.asarray(per_element[0])
        self._pending = (target_weight, safe, denom, x.shape, unbatched, per_element.shape)
        return self._finish(per_element, total)

    def backward(self, grad_output: Any = None) -> np.ndarray:
        target_weight, safe, denom, shape, unbatched, out_shape = self._take()
        dt = target_weight.dtype.type
        g = self._upstream(
            grad_output, out_shape if self.reduction == "none" else (), target_weight.dtype
        )
        scale = -target_weight
        if self.reduction == "mean":
            # nothing counted (all targets ignored): PyTorch's gradient is zero
            scale = scale * (dt(1.0 / denom) if denom != 0 else dt(0))
        scale = scale * g.reshape(-1) if g.ndim else scale * g
        n_classes = shape[1]
        grad = np.zeros((len(safe), n_classes), dtype=target_weight.dtype)
        grad[np.arange(len(safe)), safe] = scale
        grad = np.moveaxis(grad.reshape(shape[0], *shape[2:], n_classes), -1, 1)
        grad = np.ascontiguousarray(grad)
        return grad[0] if unbatched else grad


class SmoothL1Loss(_Loss):
    """``torch.nn.SmoothL1Loss``: ``0.5 * d**2 / beta`` where ``|d| < beta``, else
    ``|d| - 0.5 * beta`` (``d = input - target``); ``beta=0`` is the L1 loss."""

    def __init__(
        self,
        size_average: Any = None,
        reduce: Any = None,
        reduction: str = "mean",
        beta: float = 1.0,
    ) -> None:
        _check_no_legacy(size_average, reduce)
        super().__init__(reduction)
        if beta < 0:
            raise ValueError(f"SmoothL1Loss does not support negative values for beta, got {beta}")
        self.beta = float(beta)

    def forward(self, input: np.ndarray, target: np.ndarray) -> Any:
        x = _float_input(input)
        diff = x - _same_shape_target(target, x)
        dt = x.dtype.type
        size = np.abs(diff)
        if self.beta == 0:
            per_element = size
        else:
            beta = dt(self.beta)
            per_element = np.where(size < beta, dt(0.5) * diff * diff / beta, size - dt(0.5) * beta)
        total = per_element.sum()
        if self.reduction == "mean":
            total = total / dt(x.size) if x.size else dt(np.nan)
        self._pending = (diff,)
        return self._finish(per_element, total)

    def backward(self, grad_output: Any = None) -> np.ndarray:
        (diff,) = self._take()
        dt = diff.dtype.type
        g = self._upstream(grad_output, diff.shape if self.reduction == "none" else (), diff.dtype)
        if self.beta == 0:
            grad = np.sign(diff)
        else:
            beta = dt(self.beta)
            grad = np.where(np.abs(diff) < beta, diff / beta, np.sign(diff))
        if self.reduction == "mean":
            grad = grad * dt(1.0 / max(diff.size, 1))
        return grad * g if (g.ndim or g != 1) else grad
