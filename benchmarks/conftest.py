"""pytest-benchmark suite set-up (not part of ``tests/``).

Every benchmark runs fastconv and PyTorch on 2 threads (this machine's core count, and
the setting the issue's speed targets are stated for); the previous settings come back
after each benchmark module. ``pytest benchmarks --benchmark-disable`` runs each case
once as a smoke test (CI); ``--benchmark-only`` times them.
"""

from __future__ import annotations

import pytest
from peers import thread_count

BENCH_THREADS = 2


@pytest.fixture(scope="module", autouse=True)
def bench_threads():
    """fastconv.set_num_threads(2) and torch.set_num_threads(2) for the module."""
    with thread_count(BENCH_THREADS):
        yield BENCH_THREADS


@pytest.fixture(scope="session")
def torch_peer():
    """PyTorch, or a skip where it is not installed."""
    return pytest.importorskip("torch")
