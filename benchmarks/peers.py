"""Shared benchmark helpers: time implementations against each other in one process.

Speed claims in fastconv are ratios against a peer measured in the same process, never
absolute numbers from separate runs: ``time_alternating`` runs the implementations in
turn (A B C A B C ...), so that turbo, thermal and background-load drifts hit all of
them alike, and keeps the best and the median sample of each.

    timings = time_alternating({"fastconv": f, "torch": g, "copy": h}, rounds=9)
    timings["fastconv"].best, timings["fastconv"].median      # seconds per call
    gbps(x.nbytes, timings["fastconv"].best)                   # GB/s of input read

The implementations live in :mod:`fastconv.bench` (one copy, shared with the
``fastconv bench`` command); this module re-exports them for the benchmark files.
``thread_count`` also limits numpy's BLAS (through threadpoolctl, when installed).
``cached_case`` and ``record`` are the pytest side of a ``fastconv.bench.Case``: build
and check a case once for all its implementations, then check and time one of them.
"""

from __future__ import annotations

import pytest

from fastconv.bench import (
    Timing,
    format_table,
    gbps,
    thread_count,
    time_alternating,
    torch_or_none,
)

__all__ = [
    "Timing",
    "cached_case",
    "format_table",
    "gbps",
    "record",
    "thread_count",
    "time_alternating",
    "torch_or_none",
]


def cached_case(cache: dict, key, build):
    """(case, {impl: max error}) for ``key``, building and checking it once; keeps one
    case at a time (the inputs of a large layer are tens of MB)."""
    if key not in cache:
        cache.clear()
        case = build()
        cache[key] = (case, case.check())
    return cache[key]


def record(benchmark, case, impl: str, errors: dict) -> None:
    """Check ``impl``'s result against the reference, then time it with pytest-benchmark
    grouped by case and direction; GFLOP/s (GB/s) at the best time goes to extra_info."""
    if impl not in case.impls:
        pytest.skip(f"{impl} is not available here (its package is not installed)")
    err = errors[impl]
    assert err <= case.tolerance, (
        f"{case.label} {impl}: max error {err:.3g} (relative to max |reference|) exceeds "
        f"{case.tolerance:.3g}"
    )
    benchmark.group = case.label
    benchmark.extra_info.update(
        op=case.op,
        case=case.name,
        direction=case.direction,
        impl=impl,
        shape=case.shape,
        algorithm=case.algorithm if impl == "fastconv" else None,
        max_err=err,
        work=case.work,
        unit=case.unit,
    )
    benchmark(case.impls[impl])
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info[f"{case.unit} (best)"] = round(case.work / stats.stats.min / 1e9, 2)
