"""Timing implementations against each other in one process, and the rates reported.

Speed claims are ratios against a peer timed in the same process, alternating A B C
A B C, so that turbo, thermal and background-load drift hit every implementation alike.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ..functional import get_num_threads, set_num_threads
from .peers import torch_or_none

__all__ = [
    "OMP_SETTLE_S",
    "OPENBLAS_SETTLE_S",
    "Timing",
    "default_settle_s",
    "gbps",
    "geomean",
    "gflops",
    "settle_times",
    "thread_count",
    "time_alternating",
]


@dataclass
class Timing:
    """Seconds per call of one implementation, one sample per round."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def _calls_per_sample(fn: Callable[[], object], min_sample_s: float) -> int:
    """How many back-to-back calls make one sample last at least ``min_sample_s``."""
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    if once <= 0:
        return 1000
    return max(1, min(1000, int(min_sample_s / once) + 1))


def time_alternating(
    impls: dict[str, Callable[[], object]],
    *,
    rounds: int = 7,
    warmup: int = 1,
    min_sample_s: float = 0.0,
    settle: dict[str, float] | None = None,
) -> dict[str, Timing]:
    """Time each zero-argument callable ``rounds`` times, alternating between them.

    Every implementation is first called ``warmup`` times (page faults, thread-pool start,
    lazy initialisation). Calls shorter than ``min_sample_s`` are repeated back to back
    inside one sample and the sample divided by the count. ``settle`` maps an
    implementation to seconds to sleep after each of its samples (outside the timing):
    OpenBLAS's idle workers spin for ~0.1 s after a call and would otherwise steal the
    cores from whichever implementation runs next.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    settle = settle or {}
    for name, fn in impls.items():
        for _ in range(warmup):
            fn()
        if settle.get(name):
            time.sleep(settle[name])
    repeats = {
        name: (_calls_per_sample(fn, min_sample_s) if min_sample_s > 0 else 1)
        for name, fn in impls.items()
    }
    timings = {name: Timing(name) for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            n = repeats[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            timings[name].samples.append((time.perf_counter() - start) / n)
            if settle.get(name):
                time.sleep(settle[name])
    return timings


def gbps(nbytes: int, seconds: float) -> float:
    """Throughput in GB/s (10**9 bytes per second)."""
    return nbytes / seconds / 1e9


def gflops(flops: float, seconds: float) -> float:
    """Throughput in GFLOP/s (10**9 floating-point operations per second)."""
    return flops / seconds / 1e9


def geomean(values: Iterable[float]) -> float | None:
    """Geometric mean of positive numbers (None for an empty sequence)."""
    vals = [float(v) for v in values]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


# =========================================================================== threads


def _blas_limiter(n: int):
    """threadpoolctl's limit of numpy's BLAS to ``n`` threads, or None without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    with warnings.catch_warnings():  # threadpoolctl warns about foreign OpenMP runtimes
        warnings.simplefilter("ignore")
        return threadpool_limits(limits=n, user_api="blas")


@contextlib.contextmanager
def thread_count(n: int) -> Iterator[None]:
    """fastconv, PyTorch (if installed) and numpy's BLAS (if threadpoolctl is installed)
    on ``n`` threads inside the block; the previous settings come back afterwards."""
    torch = torch_or_none()
    before = get_num_threads(), (torch.get_num_threads() if torch else None)
    set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    limiter = _blas_limiter(n)
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        set_num_threads(before[0])
        if torch is not None:
            torch.set_num_threads(before[1])


# Seconds to sleep after each sample of an implementation, outside the timing, so that
# its idle worker threads stop spinning before the next implementation runs. Measured
# on the development machine (CPU time burnt during a 200 ms sleep after one call):
# OpenBLAS ~105 ms (it busy-waits 2**28 cycles), fastconv's and PyTorch's OpenMP
# workers 5-9 ms.
OMP_SETTLE_S = 0.02
OPENBLAS_SETTLE_S = 0.12


def default_settle_s() -> float:
    """The pause after each numpy (OpenBLAS) sample: 0.12 s, or 0.02 s when
    OPENBLAS_THREAD_TIMEOUT is set in the environment (e.g. 4: workers sleep at once)."""
    return OMP_SETTLE_S if os.environ.get("OPENBLAS_THREAD_TIMEOUT") else OPENBLAS_SETTLE_S


def settle_times(impls: Iterable[str], op: str, settle_s: float | None = None) -> dict:
    """{impl: seconds to pause after each of its samples}; ``settle_s`` overrides all."""
    out = {}
    for name in impls:
        if settle_s is not None:
            out[name] = settle_s
        elif name in ("numpy", "cython") and op in ("gemm", "conv", "corpus", "random"):
            # both end in numpy's matmul: OpenBLAS's workers spin after it
            out[name] = default_settle_s()
        else:
            out[name] = OMP_SETTLE_S
    return out
