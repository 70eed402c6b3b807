"""pytest-benchmark suite set-up (not part of ``tests/``).

Every benchmark runs fastconv, PyTorch and numpy's BLAS on 2 threads (this machine's core
count, and the setting the issue's speed targets are stated for); the previous settings
come back after each benchmark module. ``pytest benchmarks --benchmark-disable`` runs each
case once, on reduced shapes, as a smoke test (CI); ``--benchmark-only`` times them on the
design.md shapes. The cases, the NumPy peers and the checks come from ``fastconv.bench``
(the code behind ``fastconv bench``), so both always measure the same thing.
"""

from __future__ import annotations

import pytest
from peers import thread_count

BENCH_THREADS = 2


@pytest.fixture(scope="module", autouse=True)
def bench_threads():
    """fastconv, torch and numpy's BLAS on 2 threads for the module."""
    with thread_count(BENCH_THREADS):
        yield BENCH_THREADS


@pytest.fixture(scope="session")
def torch_peer():
    """PyTorch, or a skip where it is not installed."""
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def smoke(request) -> bool:
    """True under ``--benchmark-disable`` (each case runs once: use reduced shapes)."""
    return bool(request.config.getoption("benchmark_disable", default=False))


@pytest.fixture(scope="module")
def case_cache() -> dict:
    """The most recently built ``fastconv.bench.Case`` and its check, so the
    implementations of one case (consecutive tests) share inputs and reference."""
    return {}


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
        pytest.skip(f"{impl} is not available here (torch not installed?)")
    err = errors[impl]
    assert err <= case.tolerance, (
        f"{case.label} {impl}: max error {err:.3g} (relative to max |reference|) exceeds "
        f"{case.tolerance:.3g}")
    benchmark.group = case.label
    benchmark.extra_info.update(
        op=case.op, case=case.name, direction=case.direction, impl=impl, shape=case.shape,
        algorithm=case.algorithm if impl == "fastconv" else None, max_err=err,
        work=case.work, unit=case.unit)
    benchmark(case.impls[impl])
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info[f"{case.unit} (best)"] = round(case.work / stats.stats.min / 1e9, 2)
