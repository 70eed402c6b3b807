"""The float32 convolution precision, in PyTorch's vocabulary.

``"high"`` (the default) lets the CPU selectors choose transform algorithms --
Winograd F(4x4, 3x3) for dense 3x3 stride-1 layers, forward and input gradient --
whose largest error over a layer is about ten times direct convolution's (see the
README's numerics section for the measured figures). ``"highest"`` runs only
algorithms with direct convolution's accuracy. float64 convolutions, the weight
gradient and the CUDA backend always run at direct accuracy.

    fastconv.set_float32_conv_precision("highest")   # the whole process
    with fastconv.float32_conv_precision("highest"): # this thread, this block
        ...

An explicit ``algorithm=`` on a call is always honoured, whatever the precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import _cpu

__all__ = ["float32_conv_precision", "get_float32_conv_precision", "set_float32_conv_precision"]

PRECISIONS = ("highest", "high")


def _check_precision(precision) -> str:
    if not isinstance(precision, str):
        raise TypeError(f"precision must be one of {PRECISIONS}, got {type(precision).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def set_float32_conv_precision(precision: str) -> None:
    """Sets the process-wide float32 convolution precision ('highest' or 'high')."""
    _cpu.set_default_conv_precision(_check_precision(precision))


def get_float32_conv_precision() -> str:
    """The precision float32 convolutions run at on the calling thread."""
    return _cpu.thread_conv_precision() or _cpu.default_conv_precision()


@contextmanager
def float32_conv_precision(precision: str) -> Iterator[None]:
    """Runs the block's float32 convolutions, on this thread, at ``precision``."""
    _check_precision(precision)
    previous = _cpu.thread_conv_precision()
    _cpu.set_thread_conv_precision(precision)
    try:
        yield
    finally:
        _cpu.set_thread_conv_precision(previous)
