"""What the machine can do and how busy it is: the CPU model, the measured fp32 FMA peak
and copy bandwidth (cached per CPU, ISA and thread count), the GEMM ceilings timed
alongside a case, and how much CPU other processes take while the benchmark runs.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import _cpu
from ..functional import get_num_threads
from .peers import torch_or_none

__all__ = [
    "OtherLoad",
    "blas_info",
    "cache_file",
    "cpu_busy_fraction",
    "cpu_model",
    "describe_machine",
    "gemm_ceiling_probes",
    "load_average",
    "machine_peaks",
    "probe_copy_gbps",
    "probe_fma_gflops",
]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def blas_info() -> str:
    """numpy's BLAS library, version and thread count (threadpoolctl), or 'unknown'."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (install threadpoolctl)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not libs:
        return "none found"
    i = libs[0]
    return f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"


def cache_file() -> Path:
    """``$FASTCONV_CACHE_DIR/machine.json``, else ``$XDG_CACHE_HOME/fastconv`` or
    ``~/.cache/fastconv``."""
    root = os.environ.get("FASTCONV_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "fastconv")
    return Path(root) / "machine.json"


# =========================================================================== load


def load_average() -> tuple[float, float, float] | None:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except (OSError, AttributeError):
        return None


def _proc_stat() -> tuple[int, int] | None:
    """(total, busy) jiffies of all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    return sum(fields), sum(fields) - fields[3] - fields[4]  # minus idle and iowait


class OtherLoad:
    """How much CPU other processes used between ``start()`` and ``stop()``: all CPUs'
    busy time (/proc/stat) minus this process's own CPU time, as a fraction of all
    CPUs' time. A disturbed run shows here even when the load average looked quiet."""

    def start(self) -> OtherLoad:
        self.stat, self.own = _proc_stat(), sum(os.times()[:4])
        return self

    def stop(self) -> float | None:
        end, own = _proc_stat(), sum(os.times()[:4])
        if self.stat is None or end is None:
            return None
        total = end[0] - self.stat[0]
        if total <= 0:
            return None
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        others = (end[1] - self.stat[1]) - (own - self.own) * hz
        return round(min(1.0, max(0.0, others / total)), 3)


def cpu_busy_fraction(interval: float = 0.5) -> float | None:
    """Fraction of all CPUs' time spent busy during ``interval`` seconds while this
    process sleeps (from /proc/stat; None elsewhere): what other processes use right now.
    Unlike the load average it does not remember a run that just finished."""
    load = OtherLoad().start()
    time.sleep(interval)
    return load.stop()


# =========================================================================== peaks


def probe_fma_gflops(threads: int, *, tries: int = 7, iterations: int = 20_000_000) -> float:
    """Best of ``tries`` runs of the C++ FMA-throughput loop on ``threads`` threads."""
    return max(_cpu.fma_peak_gflops(threads, iterations) for _ in range(tries))


def probe_copy_gbps(threads: int, *, nbytes: int = 256 << 20, tries: int = 7) -> float:
    """Best copy bandwidth (bytes read + bytes written per second, GB/s) of ``np.copyto``
    on ``nbytes``, by one thread and by ``threads`` Python threads each copying a slice."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # page in

    def split_copy(k: int) -> None:
        bounds = np.linspace(0, src.size, k + 1).astype(np.int64)
        workers = [
            threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b]))
            for a, b in zip(bounds[1:-1], bounds[2:])
        ]
        for w in workers:
            w.start()
        np.copyto(dst[: bounds[1]], src[: bounds[1]])
        for w in workers:
            w.join()

    best = math.inf
    for k in sorted({1, max(1, threads)}):
        for _ in range(tries):
            start = time.perf_counter()
            split_copy(k)
            best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def machine_peaks(
    threads: int, *, reprobe: bool = False, quick: bool = False, refresh: bool = True
) -> dict:
    """This machine's measured fp32 FMA peak (GFLOP/s) and copy bandwidth (GB/s) on
    ``threads`` threads, cached in ``cache_file()`` keyed by CPU model, ISA and threads.

    The first run measures (best of 7, ~2 s) and stores the figures. A peak is a maximum
    and background load only lowers a measurement, so later runs (``refresh``) take a
    short probe and raise the cached figures when it beats them; ``reprobe`` measures in
    full and replaces them (new hardware, or a first probe that was too optimistic).
    ``quick`` measures briefly and caches nothing (tests).
    """
    now = datetime.datetime.now().isoformat(timespec="seconds")
    base = {"cpu": cpu_model(), "isa": _cpu.isa(), "threads": threads}
    if quick:
        return {
            **base,
            "fma_gflops": round(probe_fma_gflops(threads, tries=3, iterations=2_000_000), 1),
            "copy_gbps": round(probe_copy_gbps(threads, nbytes=32 << 20, tries=3), 2),
            "measured": now,
            "load_average": load_average(),
            "source": "quick probe, not cached",
        }
    key = f"{base['cpu']} | {base['isa']} | threads={threads}"
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = None if reprobe else cache.get(key)
    if entry and {"fma_gflops", "copy_gbps"} <= set(entry):
        if not refresh:
            return {**entry, "source": f"cached in {path}"}
        fma = probe_fma_gflops(threads, tries=3)
        copy = probe_copy_gbps(threads, nbytes=64 << 20, tries=3)
        if fma <= entry["fma_gflops"] and copy <= entry["copy_gbps"]:
            return {**entry, "source": f"cached in {path}"}
        entry = {
            **entry,
            "fma_gflops": round(max(fma, entry["fma_gflops"]), 1),
            "copy_gbps": round(max(copy, entry["copy_gbps"]), 2),
            "measured": now,
            "load_average": load_average(),
        }
        how = "cached, raised by this run's probe"
    else:
        entry = {
            **base,
            "fma_gflops": round(probe_fma_gflops(threads), 1),
            "copy_gbps": round(probe_copy_gbps(threads), 2),
            "measured": now,
            "load_average": load_average(),
        }
        how = "measured now"
    cache[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=2))
        os.replace(tmp, path)
        source = f"{how}, cached in {path}"
    except OSError as exc:
        source = f"{how} (not cached: {exc})"
    return {**entry, "source": source}


def gemm_ceiling_probes() -> dict[str, Callable[[], float]]:
    """GFLOP/s ceilings for a GEMM, ~50 ms each on the current thread count: the FMA
    loop (the machine's peak right now: this CPU's clock drifts by a few percent over
    minutes, so a peak cached from another minute flatters or wrongs a run) and
    fastconv's micro-kernel with its operands in L1 (what no blocking can beat)."""
    return {
        "fma_loop": lambda: _cpu.fma_peak_gflops(get_num_threads(), 20_000_000),
        "micro_kernel": lambda: _cpu.gemm_kernel_peak_gflops(get_num_threads(), 100_000),
    }


# =========================================================================== report header


def describe_machine(peaks: dict, threads: int) -> dict:
    """What a report must say about where it was measured."""
    import fastconv

    torch = torch_or_none()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": _cpu.isa(),
        "threads": threads,
        "fma_peak_gflops": peaks.get("fma_gflops"),
        "copy_gbps": peaks.get("copy_gbps"),
        "peaks_source": peaks.get("source"),
        "peaks_measured": peaks.get("measured"),
        "peaks_load_average": peaks.get("load_average"),
        "load_average": load_average(),
        "cpu_busy_before": cpu_busy_fraction(),
        "fastconv": fastconv.__version__,
        "numpy": np.__version__,
        "blas": blas_info(),
        "torch": getattr(torch, "__version__", None),
        "python": platform.python_version(),
        "env": {
            k: os.environ[k]
            for k in (
                "OMP_WAIT_POLICY",
                "GOMP_SPINCOUNT",
                "OPENBLAS_THREAD_TIMEOUT",
                "OMP_NUM_THREADS",
                "FASTCONV_ISA",
            )
            if k in os.environ
        },
    }
