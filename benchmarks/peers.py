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
"""

from __future__ import annotations

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
    "format_table",
    "gbps",
    "thread_count",
    "time_alternating",
    "torch_or_none",
]
