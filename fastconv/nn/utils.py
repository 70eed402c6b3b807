"""Helpers: gradient clipping and saving / loading weights as ``.npz``."""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np

from .module import Module, Parameter

__all__ = ["clip_grad_norm_", "load_weights", "save_weights"]


def clip_grad_norm_(
    parameters: Iterable[Parameter] | Parameter, max_norm: float, norm_type: float = 2.0
) -> float:
    """Scale gradients so their global norm is at most ``max_norm``; returns the norm.

    As ``torch.nn.utils.clip_grad_norm_``: the coefficient is
    ``max_norm / (total_norm + 1e-6)``, applied only when it is below 1.
    """
    params = [parameters] if isinstance(parameters, Parameter) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm_type = float(norm_type)
    if norm_type == float("inf"):
        total = max(float(np.abs(g).max(initial=0.0)) for g in grads)
    else:
        total = float(
            sum(float((np.abs(g.astype(np.float64)) ** norm_type).sum()) for g in grads)
            ** (1.0 / norm_type)
        )
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * p.grad.dtype.type(coef)
    return total


def save_weights(module_or_state: Module | dict, path: str | os.PathLike) -> None:
    """Save a module's ``state_dict()`` (or a state dict) to an ``.npz`` file."""
    state = module_or_state.state_dict() if isinstance(module_or_state, Module) else module_or_state
    np.savez(path, **{k: np.asarray(v) for k, v in state.items()})


# What np.load raises on a truncated or garbled open file: BadZipFile for a broken
# archive, zlib.error or EOFError for a broken member, ValueError for a bad .npy header
# or pickled data, struct.error for a short zip record, OSError for a seek outside the
# file, NotImplementedError for a zip feature a corrupted flag asks for.
_CORRUPT_NPZ = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    ValueError,
    struct.error,
    OSError,
    NotImplementedError,
)


def load_weights(
    path: str | os.PathLike, module: Module | None = None, strict: bool = True
) -> OrderedDict[str, Any]:
    """Read an ``.npz`` state dict; with ``module``, load it into the module too.

    A file that is not an ``.npz`` of plain arrays -- truncated, garbled, a single
    ``.npy`` array, pickled objects -- raises ValueError naming it.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:  # a missing or unreadable file raises as itself
        try:
            loaded = np.load(fh, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError(f"it holds one {type(loaded).__name__}, not an .npz archive")
            with loaded as data:
                state = OrderedDict((k, data[k]) for k in data.files)
        except _CORRUPT_NPZ as exc:
            raise ValueError(f"{path} is not a readable .npz of weights: {exc}") from exc
    for name, value in state.items():
        if not isinstance(value, np.ndarray):  # a zip member that is not a .npy file
            raise ValueError(f"{path}: entry {name!r} is not a .npy array")
    if module is not None:
        module.load_state_dict(state, strict=strict)
    return state
