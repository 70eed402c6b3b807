"""Losses: ``CrossEntropyLoss`` and ``MSELoss`` with PyTorch's arguments and formulas.

``loss = criterion(input, target)`` returns a Python float (reductions ``'mean'`` and
``'sum'``; ``'none'`` returns the per-element array) and saves what ``backward``
needs; ``criterion.backward()`` returns the gradient of the loss with respect to
``input``, with ``input``'s shape and dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .module import Module

__all__ = ["CrossEntropyLoss", "MSELoss", "log_softmax", "softmax"]

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
