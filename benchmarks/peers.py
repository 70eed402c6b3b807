"""Shared benchmark helpers: time implementations against each other in one process.

Speed claims in fastconv are ratios against a peer measured in the same process, never
absolute numbers from separate runs: ``time_alternating`` runs the implementations in
turn (A B C A B C ...), so that turbo, thermal and background-load drifts hit all of
them alike, and keeps the best and the median sample of each.

    timings = time_alternating({"fastconv": f, "torch": g, "copy": h}, rounds=9)
    timings["fastconv"].best, timings["fastconv"].median      # seconds per call
    gbps(x.nbytes, timings["fastconv"].best)                   # GB/s of input read
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "Timing",
    "format_table",
    "gbps",
    "thread_count",
    "time_alternating",
    "torch_or_none",
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
) -> dict[str, Timing]:
    """Time each zero-argument callable ``rounds`` times, alternating between them.

    Every implementation is first called ``warmup`` times (page faults, thread-pool start,
    lazy initialisation). Calls shorter than ``min_sample_s`` are repeated back to back
    inside one sample and the sample divided by the count.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    for fn in impls.values():
        for _ in range(warmup):
            fn()
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
    return timings


def gbps(nbytes: int, seconds: float) -> float:
    """Throughput in GB/s (10**9 bytes per second)."""
    return nbytes / seconds / 1e9


def torch_or_none():
    """PyTorch if it is installed, else None (benchmarks then skip the torch peer)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def thread_count(n: int) -> Iterator[None]:
    """fastconv and (if installed) PyTorch on ``n`` threads inside the block."""
    import fastconv

    torch = torch_or_none()
    before = fastconv.get_num_threads(), (torch.get_num_threads() if torch else None)
    fastconv.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        fastconv.set_num_threads(before[0])
        if torch is not None:
            torch.set_num_threads(before[1])


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table: ``columns`` are (key, format spec) pairs, e.g. ("best_ms", ".2f");
    a missing value prints as '-'."""
    header = [key for key, _ in columns]
    cells = [
        [("-" if row.get(key) is None else format(row[key], spec)) for key, spec in columns]
        for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
        "  ".join("-" * w for w in widths),
    ]
    text = [spec == "s" for _, spec in columns]  # text left, numbers right
    lines += [
        "  ".join(c.ljust(w) if t else c.rjust(w) for c, w, t in zip(r, widths, text))
        for r in cells
    ]
    return "\n".join(lines)
