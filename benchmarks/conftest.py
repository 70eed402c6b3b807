"""pytest-benchmark suite set-up (not part of ``tests/``).

Every benchmark runs fastconv, PyTorch and numpy's BLAS on 2 threads (this machine's core
count, and the setting the issue's speed targets are stated for); the previous settings
come back after each benchmark module. ``pytest benchmarks --benchmark-disable`` runs each
case once, on reduced shapes, as a smoke test (CI); ``--benchmark-only`` times them on the
layer-set shapes. The cases, the NumPy peers and the checks come from ``fastconv.bench``
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
