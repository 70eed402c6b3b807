"""Opt-in autotuning of the CPU convolution algorithms (``torch.backends.cudnn.benchmark``).

The selectors are pure functions of the shapes, with thresholds measured on a shape
corpus; on a machine or a shape they were not measured on, another algorithm can be
faster. With autotuning on, the first call of a convolution times every algorithm that
can run it (in the current precision mode) on that call's own arrays and keeps the
fastest; later calls of the same problem run it directly::

    fastconv.set_conv_autotune(True)
    model(x)                                   # first call of each shape: tuning
    fastconv.autotune.save("tuned.json")       # inspect it, or load it elsewhere
    fastconv.autotune.load("tuned.json")       # no tuning for the shapes it holds

The cache is keyed by the pass, the shapes, stride/padding/dilation/groups, the
dtype, the thread count, the ISA tier and the precision, and lives in the process
(``entries()`` lists it; ``save``/``load`` persist it as JSON). Once a problem is
cached its results are deterministic, as every algorithm's are for a fixed thread
count. The selector's own choice is kept unless another algorithm is more than
``MARGIN`` faster, so noise does not flip choices. Calls with non-finite weights
(or a non-finite ``grad_output`` in the weight gradient) are not tuned: the selectors
route them to the algorithm that gives PyTorch's semantics.

The selectors' thresholds themselves are named values (``thresholds()``), fitted to
timings of every algorithm on a corpus sample by ``benchmarks/fit_selector.py``, which
scores candidate values through ``set_thresholds``. They choose which algorithm runs,
never what it computes.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import _cpu
from ._checks import as_int
from .precision import get_float32_conv_precision

__all__ = [
    "MARGIN",
    "clear",
    "entries",
    "is_enabled",
    "load",
    "save",
    "set_enabled",
    "set_thresholds",
    "thresholds",
]

# Another algorithm must beat the selector's choice by this fraction to replace it.
MARGIN = 0.05
# Timed runs per candidate, after one untimed run; the best counts.
RUNS = 3

_lock = threading.Lock()
_enabled = False
_cache: dict[tuple, dict[str, Any]] = {}

# What each pass's selector never picks for speed: the tapwise loops are the exact
# path for far-reaching windows and non-finite operands, not a contender.
_NOT_CONTENDERS = {"tapwise"}


def set_enabled(enabled: bool) -> None:
    """Turns autotuning on or off for the whole process."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _enabled = enabled


def is_enabled() -> bool:
    return _enabled


def thresholds(defaults: bool = False) -> dict[str, int]:
    """The selectors' thresholds by name: those in use, or with ``defaults=True`` the
    built-in ones."""
    if not isinstance(defaults, bool):
        raise TypeError(f"defaults must be a bool, got {type(defaults).__name__}")
    return _cpu.selector_thresholds(defaults)


def set_thresholds(**values: int) -> None:
    """Replaces the named selector thresholds for the whole process (non-negative ints;
    an unknown name or a bad value changes none of them). Calls already running finish
    with the old values. ``set_thresholds(**thresholds(defaults=True))`` restores the
    built-in ones."""
    known = _cpu.selector_thresholds(True)
    checked = {}
    for name, value in values.items():
        if name not in known:
            raise ValueError(f"unknown selector threshold {name!r}; known: {sorted(known)}")
        # as_int for the type alone; the range is the C++ int64's non-negative half
        checked[name] = as_int(value, f"threshold {name}", limit=2**64)
        if not 0 <= checked[name] < 2**63:
            raise ValueError(f"threshold {name} must be in [0, 2**63), got {value}")
    _cpu.set_selector_thresholds(checked)


def clear() -> None:
    with _lock:
        _cache.clear()


def entries() -> list[dict[str, Any]]:
    """The cache as a list of plain dicts: the problem, the winner and the timings (ms)."""
    with _lock:
        return [dict(entry) for entry in _cache.values()]


def save(path) -> None:
    Path(path).write_text(json.dumps(entries(), indent=1) + "\n")


_KEY_FIELDS = (
    "pass",
    "input_shape",
    "weight_shape",
    "stride",
    "padding",
    "dilation",
    "groups",
    "dtype",
    "threads",
    "isa",
    "precision",
)


def load(path) -> int:
    """Adds a saved cache's entries (replacing those for the same problems); returns how
    many it added. Entries naming an algorithm this build lacks are refused."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not an autotune cache ({error})") from error
    if not isinstance(records, list):
        raise ValueError(f"{path}: not an autotune cache (expected a list of entries)")
    known = {
        "conv2d": _cpu.conv2d_algorithms(),
        "conv2d_input": _cpu.conv2d_input_algorithms(),
        "conv2d_weight": _cpu.conv2d_weight_algorithms(),
    }
    loaded = {}
    for i, record in enumerate(records):
        try:
            key = tuple(_freeze(record[field]) for field in _KEY_FIELDS)
            algorithm = record["algorithm"]
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: entry {i} is not an autotune entry ({error})") from None
        if algorithm not in known.get(record["pass"], ()):
            raise ValueError(f"{path}: entry {i} names an unknown algorithm {algorithm!r}")
        loaded[key] = dict(record)
    with _lock:
        _cache.update(loaded)
    return len(loaded)


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def _key(pass_name, input_shape, weight_shape, geometry, dtype) -> tuple:
    return (
        pass_name,
        tuple(input_shape),
        tuple(weight_shape),
        geometry.stride,
        geometry.padding,
        geometry.dilation,
        geometry.groups,
        np.dtype(dtype).name,
        _cpu.get_num_threads(),
        _cpu.isa(),
        get_float32_conv_precision(),
    )


def _choose(key, chosen: str, candidates, run: Callable[[str], Any]) -> str:
    with _lock:
        entry = _cache.get(key)
    if entry is not None:
        return entry["algorithm"]
    if chosen in _NOT_CONTENDERS:
        times = {chosen: None}
        winner = chosen
    else:
        times = {}
        for algorithm in candidates:
            if algorithm in _NOT_CONTENDERS:
                continue
            try:
                run(algorithm)
            except ValueError:  # it cannot run this problem
                continue
            best = float("inf")
            for _ in range(RUNS):
                start = time.perf_counter()
                run(algorithm)
                best = min(best, time.perf_counter() - start)
            times[algorithm] = best * 1e3
        fastest = min(times, key=times.get)
        winner = chosen if times[chosen] <= times[fastest] * (1 + MARGIN) else fastest
    record = dict(zip(_KEY_FIELDS, key))
    record.update(algorithm=winner, selector=chosen, times_ms=times)
    with _lock:
        _cache[key] = record
    return winner


def _finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(a).all())


def _precision_allows(algorithm: str) -> bool:
    return get_float32_conv_precision() == "high" or "winograd" not in algorithm


def forward(x, weight, bias, geometry, out_hw) -> str | None:
    """The algorithm conv2d runs for this call (tuning it on a first call), or None to
    leave the choice to the selector."""
    if not _finite(weight):
        return None
    key = _key("conv2d", x.shape, weight.shape, geometry, x.dtype)
    chosen = _cpu.conv2d_plan("forward", x.shape, weight.shape, out_hw, geometry, x.dtype)
    candidates = [a for a in _cpu.conv2d_algorithms() if _precision_allows(a)]
    return _choose(
        key, chosen, candidates, lambda a: _cpu.conv2d(x, weight, bias, geometry, out_hw, a)
    )


def input_grad(input_size, weight, grad_output, geometry) -> str | None:
    if not _finite(weight):
        return None
    key = _key("conv2d_input", input_size, weight.shape, geometry, weight.dtype)
    chosen = _cpu.conv2d_plan(
        "input", input_size, weight.shape, grad_output.shape[2:], geometry, weight.dtype
    )
    candidates = [a for a in _cpu.conv2d_input_algorithms() if _precision_allows(a)]
    return _choose(
        key,
        chosen,
        candidates,
        lambda a: _cpu.conv2d_input(input_size, weight, grad_output, geometry, a),
    )


def weight_grad(x, weight_size, grad_output, geometry) -> str | None:
    if not _finite(grad_output):
        return None
    key = _key("conv2d_weight", x.shape, weight_size, geometry, x.dtype)
    chosen = _cpu.conv2d_plan(
        "weight", x.shape, weight_size, grad_output.shape[2:], geometry, x.dtype
    )
    return _choose(
        key,
        chosen,
        _cpu.conv2d_weight_algorithms(),
        lambda a: _cpu.conv2d_weight(x, weight_size, grad_output, geometry, a),
    )
