"""``fastconv bench``: fastconv against a vectorised NumPy peer and PyTorch, in one process.

Every case (a GEMM shape, a conv layer and direction, a pooling op, a training step) is
run by every implementation present -- ``fastconv``, ``numpy`` (OpenBLAS ``matmul``; for
convolution an im2col + matmul baseline written here, for pooling ``fastconv.reference``)
and ``torch`` (PyTorch CPU, when installed) -- alternating A B C A B C in this process, so
that turbo, thermal and background-load drift hit all of them alike. Each implementation's
result is first checked against ``fastconv.reference`` (computed once per case, in float64,
on the real input or on its first images). Reported per implementation: best and median
time, GFLOP/s (GB/s for memory-bound pooling), % of this machine's measured peak (an FMA
throughput probe and a copy-bandwidth probe, measured once and cached in
``~/.cache/fastconv/machine.json``), speedup against each peer, the algorithm fastconv
chose and the maximum error against the reference.

    fastconv bench --op all                      # everything, real design.md shapes
    fastconv bench --op conv --layers 'resnet_3x3_*' --direction fwd,dx
    fastconv bench --op gemm --threads 1         # single-thread figures
    fastconv bench --op all --markdown           # the README table

The building blocks are importable (``benchmarks/`` uses them): ``time_alternating``,
``thread_count``, the case lists (``CONV_LAYERS``, ``GEMM_CASES``, ``POOL_CASES``,
``TRAIN_CASES``), the case builders (``conv_case`` ...), ``run_case`` and ``summarize``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fnmatch
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import _C, reference
from . import functional as F

__all__ = [
    "CONV_LAYERS",
    "GEMM_CASES",
    "IMPLS",
    "POOL_CASES",
    "THREE_BY_THREE_S1",
    "TRAIN_CASES",
    "Case",
    "ConvLayer",
    "GemmCase",
    "PoolCase",
    "Timing",
    "TrainCase",
    "add_arguments",
    "conv_case",
    "format_table",
    "gbps",
    "gemm_case",
    "geomean",
    "machine_peaks",
    "numpy_conv2d",
    "numpy_conv2d_input",
    "numpy_conv2d_weight",
    "pool_case",
    "run",
    "run_case",
    "summarize",
    "thread_count",
    "time_alternating",
    "torch_or_none",
    "train_case",
]

IMPLS = ("fastconv", "numpy", "torch")
EPS32 = float(np.finfo(np.float32).eps)

# =========================================================================== timing


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


def torch_or_none():
    """PyTorch if it is installed, else None (the torch peer is then left out)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


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
    before = F.get_num_threads(), (torch.get_num_threads() if torch else None)
    F.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    limiter = _blas_limiter(n)
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        F.set_num_threads(before[0])
        if torch is not None:
            torch.set_num_threads(before[1])


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


# Seconds to sleep after each sample of an implementation, outside the timing, so that
# its idle worker threads stop spinning before the next implementation runs. Measured
# on the design machine (CPU time burnt during a 200 ms sleep after one call): OpenBLAS
# ~105 ms (it busy-waits 2**28 cycles), fastconv's and PyTorch's OpenMP workers 5-9 ms.
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
        elif name == "numpy" and op in ("gemm", "conv"):
            out[name] = default_settle_s()
        else:
            out[name] = OMP_SETTLE_S
    return out


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


def format_markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """The same table as ``format_table`` in GitHub markdown."""
    header = [key for key, _ in columns]
    text = [spec == "s" for _, spec in columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if t else "---:" for t in text) + "|",
    ]
    for row in rows:
        cells = [("-" if row.get(k) is None else format(row[k], s)) for k, s in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# =========================================================================== machine peaks


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


def cache_file() -> Path:
    """``$FASTCONV_CACHE_DIR/machine.json``, else ``$XDG_CACHE_HOME/fastconv`` or
    ``~/.cache/fastconv``."""
    root = os.environ.get("FASTCONV_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "fastconv")
    return Path(root) / "machine.json"


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


def probe_fma_gflops(threads: int, *, tries: int = 7, iterations: int = 20_000_000) -> float:
    """Best of ``tries`` runs of the C++ FMA-throughput loop on ``threads`` threads."""
    return max(_C.fma_peak_gflops(threads, iterations) for _ in range(tries))


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
    base = {"cpu": cpu_model(), "isa": _C.isa(), "threads": threads}
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


# =========================================================================== case lists


@dataclass(frozen=True)
class ConvLayer:
    """One row of the design.md conv layer set (square inputs and kernels)."""

    name: str
    n: int
    c: int
    h: int
    k: int
    r: int
    stride: int = 1
    pad: int = 0
    groups: int = 1

    @property
    def out_hw(self) -> int:
        return (self.h + 2 * self.pad - self.r) // self.stride + 1

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.h)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.c // self.groups, self.r, self.r)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.k, self.out_hw, self.out_hw)

    @property
    def flops(self) -> int:
        """Direct-convolution FLOPs (2 per multiply-add); the same for fwd, dx and dw."""
        return 2 * self.n * self.k * self.out_hw**2 * (self.c // self.groups) * self.r**2

    def reduction_length(self, direction: str) -> int:
        if direction == "fwd":
            return (self.c // self.groups) * self.r**2
        if direction == "dx":
            return (self.k // self.groups) * self.r**2
        return self.n * self.out_hw**2

    def describe(self) -> str:
        g = f" g{self.groups}" if self.groups > 1 else ""
        return (
            f"N{self.n} C{self.c} {self.h}x{self.h} K{self.k} {self.r}x{self.r} "
            f"s{self.stride} p{self.pad}{g}"
        )

    def reduced(self, batch: int | None = None, max_hw: int | None = None) -> ConvLayer:
        """The same layer on at most ``batch`` images of at most ``max_hw`` pixels a side."""
        n = self.n if batch is None else min(self.n, batch)
        h = self.h if max_hw is None else max(self.r, min(self.h, max_hw))
        return replace(self, n=n, h=h)


CONV_LAYERS: tuple[ConvLayer, ...] = (
    ConvLayer("resnet_stem_7x7s2", 8, 3, 224, 64, 7, 2, 3),
    ConvLayer("resnet_3x3_56", 8, 64, 56, 64, 3, 1, 1),
    ConvLayer("resnet_1x1_56_up", 8, 64, 56, 256, 1, 1, 0),
    ConvLayer("resnet_1x1_56_down", 8, 256, 56, 64, 1, 1, 0),
    ConvLayer("resnet_1x1s2_56", 8, 256, 56, 128, 1, 2, 0),
    ConvLayer("resnet_3x3_28", 8, 128, 28, 128, 3, 1, 1),
    ConvLayer("resnet_3x3_14", 8, 256, 14, 256, 3, 1, 1),
    ConvLayer("resnet_3x3_7", 8, 512, 7, 512, 3, 1, 1),
    ConvLayer("vgg_3x3_112", 2, 64, 112, 128, 3, 1, 1),
    ConvLayer("googlenet_5x5_28", 8, 192, 28, 32, 5, 1, 2),
    ConvLayer("alexnet_3x3_13", 8, 384, 13, 384, 3, 1, 1),
    ConvLayer("mobilenet_dw3x3_56", 8, 144, 56, 144, 3, 1, 1, 144),
    ConvLayer("cifar_first_3x3", 64, 3, 32, 32, 3, 1, 1),
    ConvLayer("lenet_5x5", 64, 1, 28, 6, 5, 1, 0),
)
CONV_BY_NAME = {layer.name: layer for layer in CONV_LAYERS}
# The dense 3x3 stride-1 layers issue 5 judges Winograd on.
THREE_BY_THREE_S1 = (
    "resnet_3x3_56",
    "resnet_3x3_28",
    "resnet_3x3_14",
    "resnet_3x3_7",
    "vgg_3x3_112",
    "alexnet_3x3_13",
)
CONV_DIRECTIONS = ("fwd", "dx", "dw")


@dataclass(frozen=True)
class GemmCase:
    """C (m x n) = A (m x k) @ B (k x n), float32, row-major."""

    name: str
    m: int
    n: int
    k: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k

    def reduced(self, max_dim: int) -> GemmCase:
        return replace(self, m=min(self.m, max_dim), n=min(self.n, max_dim), k=min(self.k, max_dim))


GEMM_CASES: tuple[GemmCase, ...] = (
    GemmCase("square_512", 512, 512, 512),
    GemmCase("square_1024", 1024, 1024, 1024),
    GemmCase("square_2048", 2048, 2048, 2048),
    GemmCase("conv_64x3136x576", 64, 3136, 576),
    GemmCase("conv_256x3136x64", 256, 3136, 64),
    GemmCase("conv_512x49x4608", 512, 49, 4608),
    GemmCase("conv_128x784x1152", 128, 784, 1152),
)
GEMM_BY_NAME = {case.name: case for case in GEMM_CASES}


@dataclass(frozen=True)
class PoolCase:
    """A pooling op on an NCHW float32 input (``op`` is the fastconv/torch name)."""

    name: str
    op: str  # max_pool2d | avg_pool2d
    shape: tuple[int, int, int, int]
    kernel: int
    stride: int
    pad: int = 0

    def reduced(self, batch: int | None = None, max_hw: int | None = None) -> PoolCase:
        n, c, h, w = self.shape
        n = n if batch is None else min(n, batch)
        h, w = (h, w) if max_hw is None else (min(h, max_hw), min(w, max_hw))
        return replace(self, shape=(n, c, h, w))


POOL_CASES: tuple[PoolCase, ...] = (
    PoolCase("max_pool2d_3x3s2p1", "max_pool2d", (32, 64, 112, 112), 3, 2, 1),
    PoolCase("avg_pool2d_2x2s2", "avg_pool2d", (32, 64, 112, 112), 2, 2, 0),
)
POOL_BY_NAME = {case.name: case for case in POOL_CASES}
POOL_DIRECTIONS = ("fwd", "dx")


@dataclass(frozen=True)
class TrainCase:
    """One SGD training step of ``fastconv.training.build_model``'s demo CNN."""

    name: str
    batch: int
    in_channels: int
    image: int

    def reduced(self, batch: int) -> TrainCase:
        return replace(self, batch=min(self.batch, batch))


TRAIN_CASES: tuple[TrainCase, ...] = (
    TrainCase("demo_cnn_digits_8x8_b32", 32, 1, 8),  # what `fastconv train` runs
    TrainCase("demo_cnn_32x32x3_b64", 64, 3, 32),  # the same CNN on CIFAR-sized images
)
TRAIN_BY_NAME = {case.name: case for case in TRAIN_CASES}

OPS = ("gemm", "conv", "pool", "train")


# =========================================================================== NumPy conv peer


def _im2col(x: np.ndarray, r: int, s: int, stride: int, pad: int, dilation: int = 1):
    """(N, C*R*S, OH*OW) columns of ``x`` (N, C, H, W), plus (OH, OW)."""
    n, c, h, w = x.shape
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - dilation * (r - 1) - 1) // stride + 1
    ow = (w + 2 * pad - dilation * (s - 1) - 1) // stride + 1
    sn, sc, sh, sw = x.strides
    view = np.lib.stride_tricks.as_strided(
        x,
        (n, c, r, s, oh, ow),
        (sn, sc, sh * dilation, sw * dilation, sh * stride, sw * stride),
        writeable=False,
    )
    return view.reshape(n, c * r * s, oh * ow), (oh, ow)


def numpy_conv2d(x, w, stride=1, pad=0, groups=1, dilation=1):
    """conv2d as im2col + one batched matmul per group (OpenBLAS): the NumPy peer."""
    n, c = x.shape[:2]
    k, cg, r, s = w.shape
    cols, (oh, ow) = _im2col(x, r, s, stride, pad, dilation)
    cols = cols.reshape(n, groups, cg * r * s, oh * ow)
    out = np.matmul(w.reshape(groups, k // groups, cg * r * s), cols)
    return out.reshape(n, k, oh, ow)


def numpy_conv2d_input(input_shape, w, gy, stride=1, pad=0, groups=1, dilation=1):
    """conv2d_input as matmul + col2im (R*S strided slice additions): the NumPy peer."""
    n, c, h, wd = input_shape
    k, cg, r, s = w.shape
    oh, ow = gy.shape[2:]
    wt = w.reshape(groups, k // groups, cg * r * s).transpose(0, 2, 1)
    gcols = np.matmul(wt, gy.reshape(n, groups, k // groups, oh * ow))
    gcols = gcols.reshape(n, c, r, s, oh, ow)
    gx = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), dtype=gy.dtype)
    for i in range(r):
        for j in range(s):
            hi, wj = i * dilation, j * dilation
            gx[
                :,
                :,
                hi : hi + stride * (oh - 1) + 1 : stride,
                wj : wj + stride * (ow - 1) + 1 : stride,
            ] += gcols[:, :, i, j]
    return gx[:, :, pad : pad + h, pad : pad + wd]


def numpy_conv2d_weight(x, weight_shape, gy, stride=1, pad=0, groups=1, dilation=1):
    """conv2d_weight as im2col + batched matmul summed over the batch: the NumPy peer."""
    n = x.shape[0]
    k, cg, r, s = weight_shape
    cols, (oh, ow) = _im2col(x, r, s, stride, pad, dilation)
    cols = cols.reshape(n, groups, cg * r * s, oh * ow)
    g = gy.reshape(n, groups, k // groups, oh * ow)
    return np.matmul(g, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(weight_shape)


# =========================================================================== cases


@dataclass
class Case:
    """One benchmark case, ready to time: zero-argument callables per implementation.

    ``check()`` runs every implementation once on the check inputs and returns
    {impl: max |result - reference| / max |reference|}; ``work`` is FLOPs (or bytes for
    ``unit == 'GB/s'``) per call of the timed callables.
    """

    op: str
    name: str
    direction: str
    shape: str
    impls: dict[str, Callable[[], Any]]
    check: Callable[[], dict[str, float]]
    work: float
    unit: str = "GFLOP/s"
    algorithm: str | None = None
    tolerance: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Ceilings timed in the same alternation as the implementations: zero-argument
    # callables that run a probe and return its rate; the result keeps each one's best.
    probes: dict[str, Callable[[], float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.op} {self.name}" + (f" {self.direction}" if self.direction else "")


def _as_numpy(result: Any) -> np.ndarray:
    if hasattr(result, "detach"):
        result = result.detach().numpy()
    return np.asarray(result, dtype=np.float64)


def max_error(result: Any, expected: np.ndarray) -> float:
    """max |result - expected| / max |expected| (0 when both are all zero)."""
    got = _as_numpy(result)
    if got.shape != expected.shape:
        raise AssertionError(f"shape {got.shape} != reference shape {expected.shape}")
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    if not np.isfinite(err):
        return math.inf
    return err / scale if scale > 0 else err


def _select_impls(wanted: Sequence[str] | None, available: Iterable[str]) -> list[str]:
    available = list(available)
    if wanted is None:
        return available
    return [name for name in available if name in wanted]


def conv_backward_algorithm(layer: ConvLayer, direction: str) -> str:
    """Which kernel fastconv's CPU backward runs for ``layer`` (``direction`` dx or dw),
    as the library's own backward dispatch reports it."""
    import fastconv

    query = (
        fastconv.conv2d_input_algorithm if direction == "dx" else fastconv.conv2d_weight_algorithm
    )
    return str(
        query(layer.input_shape, layer.weight_shape, layer.stride, layer.pad, 1, layer.groups)
    )


def conv_case(
    layer: ConvLayer,
    direction: str,
    *,
    impls: Sequence[str] | None = None,
    check_batch: int = 2,
    seed: int = 0,
) -> Case:
    """``layer``'s ``direction`` (fwd | dx | dw) for each implementation present.

    The check runs every implementation on the first ``check_batch`` images against
    ``fastconv.reference`` in float64 (dw: the gradient of those images only).
    """
    if direction not in CONV_DIRECTIONS:
        raise ValueError(f"direction must be one of {CONV_DIRECTIONS}, got {direction!r}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(layer.input_shape, dtype=np.float32)
    w = rng.standard_normal(layer.weight_shape, dtype=np.float32)
    w *= np.float32(1.0 / math.sqrt(w[0].size))
    gy = rng.standard_normal(layer.output_shape, dtype=np.float32)
    st, pd, g = layer.stride, layer.pad, layer.groups

    def fastconv_fn(x, w, gy):
        import fastconv

        if direction == "fwd":
            return lambda: fastconv.conv2d(x, w, None, st, pd, 1, g)
        if direction == "dx":
            return lambda: fastconv.conv2d_input(x.shape, w, gy, st, pd, 1, g)
        return lambda: fastconv.conv2d_weight(x, w.shape, gy, st, pd, 1, g)

    def numpy_fn(x, w, gy):
        if direction == "fwd":
            return lambda: numpy_conv2d(x, w, st, pd, g)
        if direction == "dx":
            return lambda: numpy_conv2d_input(x.shape, w, gy, st, pd, g)
        return lambda: numpy_conv2d_weight(x, w.shape, gy, st, pd, g)

    makers: dict[str, Callable] = {"fastconv": fastconv_fn, "numpy": numpy_fn}
    torch = torch_or_none()
    if torch is not None:
        aten = torch.ops.aten

        def torch_fn(x, w, gy):
            xt, wt, gyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(gy)
            if direction == "fwd":
                conv = torch.nn.functional.conv2d
                return lambda: conv(xt, wt, None, st, pd, 1, g)
            mask = [direction == "dx", direction == "dw", False]
            pick = 0 if direction == "dx" else 1
            return lambda: aten.convolution_backward(
                gyt, xt, wt, None, [st, st], [pd, pd], [1, 1], False, [0, 0], g, mask
            )[pick]

        makers["torch"] = torch_fn
    names = _select_impls(impls, makers)

    def check() -> dict[str, float]:
        nb = min(layer.n, check_batch)
        xc, gyc = x[:nb], gy[:nb]
        x64, w64, gy64 = (a.astype(np.float64) for a in (xc, w, gyc))
        if direction == "fwd":
            ref = reference.conv2d(x64, w64, None, st, pd, 1, g)
        elif direction == "dx":
            ref = reference.conv2d_input(x64.shape, w64, gy64, st, pd, 1, g)
        else:
            ref = reference.conv2d_weight(x64, w.shape, gy64, st, pd, 1, g)
        return {name: max_error(makers[name](xc, w, gyc)(), ref) for name in names}

    if direction == "fwd":
        algorithm = F.conv2d_algorithm(layer.input_shape, layer.weight_shape, st, pd, 1, g)
    else:
        algorithm = conv_backward_algorithm(layer, direction)
    return Case(
        op="conv",
        name=layer.name,
        direction=direction,
        shape=layer.describe(),
        impls={name: makers[name](x, w, gy) for name in names},
        check=check,
        work=layer.flops,
        algorithm=algorithm,
        tolerance=32 * layer.reduced(check_batch).reduction_length(direction) * EPS32,
        extra={"layer": dataclasses.asdict(layer)},
    )


def gemm_case(case: GemmCase, *, impls: Sequence[str] | None = None, seed: int = 0) -> Case:
    """C = A @ B into a preallocated C for each implementation (no allocation timed)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((case.m, case.k), dtype=np.float32)
    b = rng.standard_normal((case.k, case.n), dtype=np.float32)
    outs = {name: np.empty((case.m, case.n), np.float32) for name in IMPLS}

    def fastconv_run():
        return F.gemm(a, b, outs["fastconv"])

    def numpy_run():
        return np.matmul(a, b, out=outs["numpy"])

    makers: dict[str, Callable[[], Any]] = {"fastconv": fastconv_run, "numpy": numpy_run}
    torch = torch_or_none()
    if torch is not None:
        at, bt, ct = (torch.from_numpy(v) for v in (a, b, outs["torch"]))

        def torch_run():
            return torch.mm(at, bt, out=ct)

        makers["torch"] = torch_run
    names = _select_impls(impls, makers)

    def check() -> dict[str, float]:
        ref = a.astype(np.float64) @ b.astype(np.float64)
        return {name: max_error(makers[name](), ref) for name in names}

    return Case(
        op="gemm",
        name=case.name,
        direction="",
        shape=f"{case.m}x{case.n}x{case.k}",
        impls={name: makers[name] for name in names},
        check=check,
        work=case.flops,
        tolerance=32 * case.k * EPS32,
        extra={"m": case.m, "n": case.n, "k": case.k},
        probes=gemm_ceiling_probes() if "fastconv" in names else {},
    )


def gemm_ceiling_probes() -> dict[str, Callable[[], float]]:
    """GFLOP/s ceilings for a GEMM, ~50 ms each on the current thread count: the FMA
    loop (the machine's peak right now: this CPU's clock drifts by a few percent over
    minutes, so a peak cached from another minute flatters or wrongs a run) and
    fastconv's micro-kernel with its operands in L1 (what no blocking can beat)."""
    return {
        "fma_loop": lambda: _C.fma_peak_gflops(F.get_num_threads(), 20_000_000),
        "micro_kernel": lambda: _C.gemm_kernel_peak_gflops(F.get_num_threads(), 100_000),
    }


def pool_case(
    case: PoolCase,
    direction: str = "fwd",
    *,
    impls: Sequence[str] | None = None,
    check_batch: int = 2,
    seed: int = 0,
) -> Case:
    """Pooling forward or backward (``dx``); ``work`` is the bytes read and written."""
    if direction not in POOL_DIRECTIONS:
        raise ValueError(f"direction must be one of {POOL_DIRECTIONS}, got {direction!r}")
    import fastconv

    x = np.random.default_rng(seed).standard_normal(case.shape, dtype=np.float32)
    kw = dict(kernel_size=case.kernel, stride=case.stride, padding=case.pad)
    is_max = case.op == "max_pool2d"
    if is_max:
        y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    else:
        y, idx = fastconv.avg_pool2d(x, **kw), None
    gy = np.random.default_rng(seed + 1).standard_normal(y.shape, dtype=np.float32)
    if direction == "fwd":
        nbytes = x.nbytes + y.nbytes
    else:
        nbytes = gy.nbytes + x.nbytes + (idx.nbytes if is_max else 0)

    def lib_fn(lib):
        def make(x, gy, idx):
            if direction == "fwd":
                fn = getattr(lib, case.op)
                return lambda: fn(x, **kw)
            if is_max:
                return lambda: lib.max_pool2d_backward(gy, idx, x.shape)
            return lambda: lib.avg_pool2d_backward(gy, x.shape, **kw)

        return make

    makers: dict[str, Callable] = {"fastconv": lib_fn(fastconv), "numpy": lib_fn(reference)}
    torch = torch_or_none()
    if torch is not None:
        aten = torch.ops.aten
        k2, s2, p2 = [case.kernel] * 2, [case.stride] * 2, [case.pad] * 2

        def torch_fn(x, gy, idx):
            xt, gyt = torch.from_numpy(x), torch.from_numpy(gy)
            if direction == "fwd":
                fn = getattr(torch.nn.functional, case.op)
                return lambda: fn(xt, **kw)
            if is_max:
                it = torch.from_numpy(idx)
                return lambda: aten.max_pool2d_with_indices_backward(
                    gyt, xt, k2, s2, p2, [1, 1], False, it
                )
            return lambda: aten.avg_pool2d_backward(gyt, xt, k2, s2, p2, False, True, None)

        makers["torch"] = torch_fn
    names = _select_impls(impls, makers)

    def check() -> dict[str, float]:
        nb = min(case.shape[0], check_batch)
        xc, gyc = x[:nb], gy[:nb]
        ic = None if idx is None else idx[:nb]
        ref = _as_numpy(lib_fn(reference)(xc.astype(np.float64), gyc.astype(np.float64), ic)())
        return {name: max_error(makers[name](xc, gyc, ic)(), ref) for name in names}

    return Case(
        op="pool",
        name=case.name,
        direction=direction,
        shape="x".join(map(str, case.shape)),
        impls={name: makers[name](x, gy, idx) for name in names},
        check=check,
        work=nbytes,
        unit="GB/s",
        # max_pool2d forward is exact; sums (avg, overlapping windows' gradients)
        # round differently in float32 than in the float64 reference
        tolerance=0.0 if is_max and direction == "fwd" else 1e-6,
        note="numpy = fastconv.reference",
    )


def _model_flops(model: Any, x: np.ndarray) -> float:
    """Forward FLOPs of the Conv2d and Linear layers of ``model`` on ``x`` (one forward
    pass is run with hooks under no_grad)."""
    from . import nn

    total = [0.0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = (
                module.kernel_size
                if isinstance(module.kernel_size, tuple)
                else (module.kernel_size,) * 2
            )
            total[0] += 2.0 * output.size * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total[0] += 2.0 * output.size * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with nn.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def train_case(
    case: TrainCase,
    *,
    impls: Sequence[str] | None = None,
    seed: int = 0,
    lr: float = 0.01,
    momentum: float = 0.9,
) -> Case:
    """One training step (forward, cross-entropy, backward, SGD with momentum, zero_grad)
    of the demo CNN, fastconv vs the same model (same weights) in PyTorch eager.

    ``work`` is 3x the forward FLOPs of the conv and linear layers (forward, input
    gradient, weight gradient). The check runs one step of each with dropout off and
    compares the loss and every parameter gradient with fastconv's in float64... against
    PyTorch's float64 run of the same step (PyTorch is the reference here).
    Raises LookupError when fastconv.training has no ``build_model``.
    """
    try:
        from . import nn, optim, training
    except ImportError as exc:  # the layer library is still in progress
        raise LookupError(f"fastconv.training cannot be imported: {exc}") from exc
    build = getattr(training, "build_model", None)
    if build is None:
        raise LookupError("fastconv.training has no build_model()")
    nn.manual_seed(seed)
    model = build(in_channels=case.in_channels, image_size=(case.image, case.image))
    model.train()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(
        (case.batch, case.in_channels, case.image, case.image), dtype=np.float32
    )
    y = rng.integers(0, 10, size=case.batch)
    criterion = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def fastconv_step():
        logits = model(x)
        loss = criterion(logits, y)
        model.backward(criterion.backward())
        opt.step()
        opt.zero_grad()
        return loss

    makers: dict[str, Callable[[], Any]] = {"fastconv": fastconv_step}
    torch = torch_or_none()
    tmodel = None
    if torch is not None:
        tmodel = nn.to_torch(model)
        tmodel.train()
        topt = torch.optim.SGD(tmodel.parameters(), lr=lr, momentum=momentum)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        ce = torch.nn.functional.cross_entropy

        def torch_step():
            topt.zero_grad(set_to_none=True)
            loss = ce(tmodel(xt), yt)
            loss.backward()
            topt.step()
            return loss

        makers["torch"] = torch_step
    names = _select_impls(impls, makers)
    flops = 3 * _model_flops(model, x)

    def check() -> dict[str, float]:
        # One step's gradients, dropout off, against float64 PyTorch (when installed) or
        # fastconv's own float64 model (then the fastconv error is float32 vs float64).
        import copy

        nb = min(case.batch, 8)
        xc, yc = x[:nb], y[:nb]
        fc = copy.deepcopy(model)
        for m in fc.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        fc64 = copy.deepcopy(fc).double()
        crit = nn.CrossEntropyLoss()

        def fc_grads(mod, xin):
            mod.zero_grad()
            crit(mod(xin), yc)
            mod.backward(crit.backward())
            return {n: p.grad for n, p in mod.named_parameters()}

        got = {"fastconv": fc_grads(fc, xc)}
        if torch is not None:
            t64 = nn.to_torch(fc64)
            t64.zero_grad()
            tout = ce(
                t64(torch.from_numpy(xc.astype(np.float64))), torch.from_numpy(yc.astype(np.int64))
            )
            tout.backward()
            ref = {n: p.grad.numpy() for n, p in t64.named_parameters()}
            if "torch" in names:
                t32 = nn.to_torch(fc)
                t32.zero_grad()
                ce(t32(torch.from_numpy(xc)), torch.from_numpy(yc.astype(np.int64))).backward()
                got["torch"] = {n: p.grad for n, p in t32.named_parameters()}
        else:
            ref = fc_grads(fc64, xc.astype(np.float64))
        return {
            name: max(max_error(got[name][k], np.asarray(ref[k], np.float64)) for k in ref)
            for name in names
        }

    return Case(
        op="train",
        name=case.name,
        direction="step",
        shape=f"N{case.batch} C{case.in_channels} {case.image}x{case.image}",
        impls={name: makers[name] for name in names},
        check=check,
        work=flops,
        tolerance=1e-3,
        note="GFLOP/s = 3 x forward conv+linear FLOPs per step",
        extra={"images_per_step": case.batch},
    )


# =========================================================================== running


def run_case(
    case: Case,
    *,
    rounds: int = 7,
    min_sample_s: float = 0.05,
    settle_s: float | None = None,
    peaks: dict | None = None,
) -> dict:
    """Check every implementation against the reference, then time them alternately.

    Returns a result dict: op, case, direction, shape, algorithm, unit, work and, per
    implementation, best_ms, median_ms, rate (GFLOP/s or GB/s at the best time),
    pct_peak, max_err, ok (max_err within tolerance) and speedup {peer: peer best / best}.
    """
    errors = case.check()
    probe_rates: dict[str, list[float]] = {name: [] for name in case.probes}

    def recording(name: str, probe: Callable[[], float]) -> Callable[[], None]:
        return lambda: probe_rates[name].append(probe())

    timed = {**case.impls, **{f"probe {n}": recording(n, p) for n, p in case.probes.items()}}
    timings = time_alternating(
        timed,
        rounds=rounds,
        min_sample_s=min_sample_s,
        settle=settle_times(timed, case.op, settle_s),
    )
    timings = {name: t for name, t in timings.items() if name in case.impls}
    ceilings = {name: max(rates) for name, rates in probe_rates.items() if rates}
    peak = None
    if peaks is not None:
        peak = peaks.get("copy_gbps") if case.unit == "GB/s" else peaks.get("fma_gflops")
    impls = {}
    for name, t in timings.items():
        rate = case.work / t.best / 1e9
        err = errors.get(name)
        impls[name] = {
            "best_ms": t.best * 1e3,
            "median_ms": t.median * 1e3,
            "rate": rate,
            "pct_peak": (100.0 * rate / peak) if peak else None,
            "pct_ceilings": {c: 100.0 * rate / v for c, v in ceilings.items()},
            "max_err": err,
            "ok": None if err is None or case.tolerance is None else bool(err <= case.tolerance),
            "samples_ms": [s * 1e3 for s in t.samples],
            "speedup": {peer: pt.best / t.best for peer, pt in timings.items() if peer != name},
        }
    return {
        "op": case.op,
        "case": case.name,
        "direction": case.direction,
        "shape": case.shape,
        "algorithm": case.algorithm,
        "unit": case.unit,
        "work": case.work,
        "tolerance": case.tolerance,
        "note": case.note,
        "ceilings": ceilings,
        "impls": impls,
        **case.extra,
    }


def summarize(results: list[dict]) -> list[dict]:
    """Per op group and direction: geometric mean of fastconv's speedup over each peer,
    the slowest case, and the issue targets (conv: geomean vs torch >= 1.0 per direction,
    no layer < 0.7, 3x3 stride-1 subset >= 1.3 fwd and dx; gemm: >= 1.0 vs numpy, no
    case < 0.8, >= 80% of peak at 2048)."""
    out = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["op"], r["direction"]), []).append(r)
    for (op, direction), rows in groups.items():
        fc_rows = [r for r in rows if "fastconv" in r["impls"]]
        for peer in ("torch", "numpy"):
            pairs = [
                (r["case"], r["impls"]["fastconv"]["speedup"][peer])
                for r in fc_rows
                if peer in r["impls"]
            ]
            if not pairs:
                continue
            entry: dict[str, Any] = {
                "op": op,
                "direction": direction,
                "peer": peer,
                "cases": len(pairs),
                "geomean": geomean(v for _, v in pairs),
                "min": min(v for _, v in pairs),
                "min_case": min(pairs, key=lambda p: p[1])[0],
            }
            if op == "conv" and peer == "torch":
                entry["target"] = "geomean >= 1.0, no layer < 0.7"
                entry["meets"] = entry["geomean"] >= 1.0 and entry["min"] >= 0.7
                sub = [v for name, v in pairs if name in THREE_BY_THREE_S1]
                if sub and direction in ("fwd", "dx"):
                    entry["geomean_3x3_s1"] = geomean(sub)
                    entry["cases_3x3_s1"] = len(sub)
                    entry["target"] += "; 3x3 stride-1 geomean >= 1.3"
                    entry["meets"] = entry["meets"] and entry["geomean_3x3_s1"] >= 1.3
            if op == "gemm" and peer == "numpy":
                entry["target"] = "geomean >= 1.0, no case < 0.8"
                big = [r for r in fc_rows if r["case"] == "square_2048"]
                fc = big[0]["impls"]["fastconv"] if big else {}
                entry["pct_peak_2048"] = fc.get("pct_peak")
                for ceiling, pct_of in fc.get("pct_ceilings", {}).items():
                    entry[f"pct_{ceiling}_2048"] = pct_of
                # The peak of the same minutes when it was timed alongside, else the
                # cached one.
                pct = entry.get("pct_fma_loop_2048", entry["pct_peak_2048"])
                if pct is not None:
                    entry["target"] += ", >= 80% of peak at 2048"
                entry["meets"] = (
                    entry["geomean"] >= 1.0 and entry["min"] >= 0.8 and (pct is None or pct >= 80.0)
                )
            out.append(entry)
    return out


def format_summary(summary: list[dict]) -> str:
    lines = []
    for s in summary:
        d = f" {s['direction']}" if s["direction"] else ""
        line = (
            f"{s['op']}{d}: fastconv vs {s['peer']} geomean {s['geomean']:.2f}x over "
            f"{s['cases']} cases, min {s['min']:.2f}x ({s['min_case']})"
        )
        if "geomean_3x3_s1" in s:
            line += f", 3x3 stride-1 geomean {s['geomean_3x3_s1']:.2f}x"
        if s.get("pct_peak_2048") is not None:
            line += f", {s['pct_peak_2048']:.0f}% of the cached peak at 2048"
        if s.get("pct_fma_loop_2048") is not None:
            line += f" ({s['pct_fma_loop_2048']:.0f}% of the FMA loop timed alongside"
            if s.get("pct_micro_kernel_2048") is not None:
                line += f", {s['pct_micro_kernel_2048']:.0f}% of the micro-kernel in L1"
            line += ")"
        if "target" in s:
            line += f"  [target: {s['target']}: {'met' if s['meets'] else 'NOT met'}]"
        lines.append(line)
    return "\n".join(lines)


def _ordered_impls(results: list[dict]) -> list[str]:
    seen = {name for r in results for name in r["impls"]}
    return [name for name in IMPLS if name in seen]


def long_rows(results: list[dict]) -> list[dict]:
    """One row per (case, direction, implementation) for the terminal table."""
    rows = []
    for r in results:
        first = True
        for name in IMPLS:
            if name not in r["impls"]:
                continue
            i = r["impls"][name]
            row = {
                "case": r["case"] if first else "",
                "dir": r["direction"] if first else "",
                "impl": name,
                "algorithm": (r["algorithm"] or "") if name == "fastconv" else "",
                "best_ms": i["best_ms"],
                "median_ms": i["median_ms"],
                "rate": i["rate"],
                "%peak": i["pct_peak"],
                "max_err": i["max_err"],
                "ok": None if i["ok"] is None else ("ok" if i["ok"] else "FAIL"),
            }
            for peer, v in i["speedup"].items():
                row[f"x_{peer}"] = v
            rows.append(row)
            first = False
    return rows


def terminal_table(results: list[dict]) -> str:
    unit = results[0]["unit"]
    impls = _ordered_impls(results)
    cols = [
        ("case", "s"),
        ("dir", "s"),
        ("impl", "s"),
        ("algorithm", "s"),
        ("best_ms", ".3f"),
        ("median_ms", ".3f"),
        (unit, ".1f"),
        ("%peak", ".1f"),
    ]
    cols += [(f"x_{p}", ".2f") for p in impls]
    cols += [("max_err", ".1e"), ("ok", "s")]
    rows = long_rows(results)
    for row in rows:
        row[unit] = row.pop("rate")
    return format_table(rows, cols)


def compact_rows(results: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """One row per case and direction: fastconv's figures, each peer's time and rate,
    fastconv's speedup over each peer (the README table)."""
    impls = _ordered_impls(results)
    unit = results[0]["unit"]
    short = "GF/s" if unit == "GFLOP/s" else unit
    cols = [("case", "s"), ("dir", "s"), ("algorithm", "s")]
    for name in impls:
        cols += [(f"{name} ms", ".3g"), (f"{name} {short}", ".1f")]
        if name == "fastconv":
            cols.append(("fastconv %peak", ".0f"))
    cols += [(f"x {p}", ".2f") for p in impls if p != "fastconv"]
    cols.append(("max err", ".0e"))
    rows = []
    order = {d: i for i, d in enumerate(CONV_DIRECTIONS)}
    # direction-major (all fwd rows, then dx, then dw): as the summaries are
    for r in sorted(results, key=lambda r: order.get(r["direction"], 0)):
        row: dict[str, Any] = {
            "case": r["case"],
            "dir": r["direction"],
            "algorithm": r["algorithm"],
        }
        for name, i in r["impls"].items():
            row[f"{name} ms"] = i["best_ms"]
            row[f"{name} {short}"] = i["rate"]
        fc = r["impls"].get("fastconv")
        if fc is not None:
            row["fastconv %peak"] = fc["pct_peak"]
            row["max err"] = fc["max_err"]
            for p, v in fc["speedup"].items():
                row[f"x {p}"] = v
        rows.append(row)
    cols = [(k, f) for k, f in cols if any(row.get(k) not in (None, "") for row in rows)]
    return rows, cols


def describe_machine(peaks: dict, threads: int) -> dict:
    """What a report must say about where it was measured."""
    import fastconv

    torch = torch_or_none()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": _C.isa(),
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


def busy_warning(meta: dict) -> str | None:
    """A warning when other processes used the CPUs: > 10% during the run, > 25% just
    before it, or (without /proc/stat) a 1-minute load average above half the cores."""
    la, cores = meta.get("load_average"), meta.get("cores") or 1
    busy, during = meta.get("cpu_busy_before"), meta.get("cpu_others_during")
    if during is not None and during > 0.1:
        what = f"other processes used {100 * during:.0f}% of the {cores} cores during the run"
    elif busy is not None:
        if busy <= 0.25:
            return None
        what = f"other processes kept {100 * busy:.0f}% of the {cores} cores busy just before"
    elif not la or la[0] <= 0.5 * cores:
        return None
    else:
        what = f"load average {la[0]} on {cores} cores"
    return (
        f"warning: the machine is busy ({what}): timings "
        "are noisy, and spinning OpenMP workers (fastconv's and PyTorch's) lose their "
        "cores to other processes, which can slow small calls tenfold; re-run on a quiet "
        "machine, or run both sides with OMP_WAIT_POLICY=PASSIVE."
    )


def format_header(meta: dict) -> str:
    la = meta["load_average"]
    return (
        f"fastconv {meta['fastconv']} | {meta['cpu']}, {meta['cores']} cores | "
        f"ISA path {meta['isa']} | {meta['threads']} threads\n"
        f"measured peak ({meta['threads']} threads): {meta['fma_peak_gflops']} GFLOP/s fp32 FMA, "
        f"{meta['copy_gbps']} GB/s copy ({meta['peaks_source']}, {meta['peaks_measured']})\n"
        f"peers: numpy {meta['numpy']} [{meta['blas']}], torch {meta['torch'] or 'not installed'}"
        f" | {meta['date']} | load average {la[0] if la else '?'}"
        + (f" {la[1]} {la[2]}" if la else "")
        + (
            f" | CPUs {100 * meta['cpu_busy_before']:.0f}% busy before the start"
            if meta.get("cpu_busy_before") is not None
            else ""
        )
        + (f" | {meta['mode']}" if meta.get("mode") else "")
        + "".join(f" | {k}={v}" for k, v in meta.get("env", {}).items())
        + (f"\n{busy_warning(meta)}" if busy_warning(meta) else "")
    )


def format_markdown_report(meta: dict, results: list[dict], summary: list[dict]) -> str:
    """The README section: header, one table per op group, the summary lines."""
    la = meta["load_average"]
    out = [
        f"Measured {meta['date'][:10]} with `fastconv bench {meta.get('argv', '')}`".rstrip() + ": "
        f"{meta['cpu']}, {meta['cores']} cores, ISA path `{meta['isa']}`, "
        f"{meta['threads']} threads; measured peak {meta['fma_peak_gflops']} GFLOP/s fp32 "
        f"(FMA loop) and {meta['copy_gbps']} GB/s (copy); numpy {meta['numpy']} "
        f"({meta['blas']}), torch {meta['torch'] or 'not installed'}; "
        f"load average {' '.join(map(str, la)) if la else 'unknown'}"
        + (
            f" at the start, {' '.join(map(str, meta['load_average_after']))} at the end"
            if meta.get("load_average_after")
            else ""
        )
        + (
            f", CPUs {100 * meta['cpu_busy_before']:.0f}% busy just before the start"
            if meta.get("cpu_busy_before") is not None
            else ""
        )
        + (
            f", other processes used {100 * meta['cpu_others_during']:.0f}% of the CPUs "
            "during the run"
            if meta.get("cpu_others_during") is not None
            else ""
        )
        + (f"; {meta['mode']}" if meta.get("mode") else "")
        + "".join(f"; `{k}={v}`" for k, v in meta.get("env", {}).items())
        + ".",
        "",
    ]
    if busy_warning(meta):
        out += [f"*{busy_warning(meta)}*", ""]
    for op in OPS:
        rows = [r for r in results if r["op"] == op]
        if not rows:
            continue
        table_rows, cols = compact_rows(rows)
        out += [
            f"**{op}** ({rows[0]['unit']}; best of {meta.get('rounds', '?')} alternating "
            "rounds; `x peer` = peer time / fastconv time)",
            "",
            format_markdown(table_rows, cols),
            "",
        ]
        lines = [s for s in summary if s["op"] == op]
        if lines:
            out += ["```", format_summary(lines), "```", ""]
    return "\n".join(out)


def plot_results(results: list[dict], path: str, meta: dict | None = None) -> bool:
    """A PNG bar chart of GFLOP/s (GB/s) per case and implementation, one panel per op
    group and direction; False when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    panels: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        panels.setdefault((r["op"], r["direction"]), []).append(r)
    fig = Figure(figsize=(12, 3.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    colors = {"fastconv": "tab:blue", "numpy": "tab:gray", "torch": "tab:orange"}
    for ax, ((op, direction), rows) in zip(axes, panels.items()):
        impls = _ordered_impls(rows)
        width = 0.8 / max(1, len(impls))
        xs = np.arange(len(rows))
        for j, name in enumerate(impls):
            vals = [r["impls"][name]["rate"] if name in r["impls"] else 0.0 for r in rows]
            ax.bar(
                xs + (j - (len(impls) - 1) / 2) * width,
                vals,
                width,
                label=name,
                color=colors.get(name),
            )
        ax.set_xticks(xs, [r["case"] for r in rows], rotation=90, fontsize=8)
        ax.set_ylabel(rows[0]["unit"])
        ax.set_title(f"{op} {direction}".strip())
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if meta:
        fig.suptitle(
            f"fastconv {meta.get('fastconv')} | {meta.get('cpu')}, "
            f"{meta.get('threads')} threads, {meta.get('isa')} | peak "
            f"{meta.get('fma_peak_gflops')} GFLOP/s, {meta.get('copy_gbps')} GB/s | "
            f"{str(meta.get('date', ''))[:10]}",
            fontsize=10,
        )
    fig.savefig(path, dpi=100)
    return True


# =========================================================================== the command


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _match(names: Sequence[str], patterns: list[str] | None) -> list[str]:
    if not patterns:
        return list(names)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


@dataclass
class Plan:
    """Which cases to build, lazily: (label, builder) pairs."""

    items: list[tuple[str, Callable[[], Case]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def build_plan(
    ops: Sequence[str],
    *,
    layers: list[str] | None = None,
    directions: list[str] | None = None,
    impls: list[str] | None = None,
    mode: str = "full",
) -> Plan:
    """The cases of ``ops`` filtered by case name patterns (``layers``) and directions.

    ``mode``: 'full' (design.md shapes), 'quick' (conv batch <= 2, pool batch <= 4) or
    'smoke' (tiny shapes, for tests).
    """
    plan = Plan()
    all_names = list(GEMM_BY_NAME) + list(CONV_BY_NAME) + list(POOL_BY_NAME) + list(TRAIN_BY_NAME)
    if layers:
        unknown = [p for p in layers if not _match(all_names, [p])]
        if unknown:
            raise ValueError(f"no case matches {', '.join(unknown)}; cases: {', '.join(all_names)}")
    for op in ops:
        if op == "gemm":
            for name in _match(list(GEMM_BY_NAME), layers):
                case = GEMM_BY_NAME[name]
                if mode == "smoke":
                    case = case.reduced(96)
                plan.items.append((f"gemm {name}", lambda c=case: gemm_case(c, impls=impls)))
        elif op == "conv":
            dirs = [d for d in CONV_DIRECTIONS if directions is None or d in directions]
            for name in _match(list(CONV_BY_NAME), layers):
                layer = CONV_BY_NAME[name]
                if mode == "quick":
                    layer = layer.reduced(batch=2)
                elif mode == "smoke":
                    layer = layer.reduced(batch=1, max_hw=12)
                for d in dirs:
                    plan.items.append(
                        (f"conv {name} {d}", lambda ly=layer, d=d: conv_case(ly, d, impls=impls))
                    )
        elif op == "pool":
            dirs = [d for d in POOL_DIRECTIONS if directions is None or d in directions]
            for name in _match(list(POOL_BY_NAME), layers):
                case = POOL_BY_NAME[name]
                if mode == "quick":
                    case = case.reduced(batch=4)
                elif mode == "smoke":
                    case = case.reduced(batch=2, max_hw=16)
                for d in dirs:
                    plan.items.append(
                        (f"pool {name} {d}", lambda c=case, d=d: pool_case(c, d, impls=impls))
                    )
        elif op == "train":
            for name in _match(list(TRAIN_BY_NAME), layers):
                case = TRAIN_BY_NAME[name]
                if mode == "smoke":
                    case = case.reduced(batch=4)
                plan.items.append((f"train {name}", lambda c=case: train_case(c, impls=impls)))
        else:
            raise ValueError(f"unknown op {op!r}: choose from {', '.join(OPS)} or all")
    return plan


class _Progress:
    """tqdm on stderr when installed (and stderr is a terminal), else nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(
                    total=total,
                    file=sys.stderr,
                    unit="case",
                    disable=None,
                    dynamic_ncols=True,
                    leave=False,
                )

    def describe(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(label)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_plan(
    plan: Plan,
    *,
    rounds: int,
    min_sample_s: float,
    settle_s: float | None,
    peaks: dict,
    progress: bool = True,
) -> tuple[list[dict], list[str]]:
    """Build and run every case of ``plan`` in turn; returns (results, skipped reasons)."""
    results, skipped = [], list(plan.skipped)
    bar = _Progress(len(plan.items), progress)
    try:
        for label, build in plan.items:
            bar.describe(label)
            try:
                case = build()
            except LookupError as exc:
                skipped.append(f"{label}: {exc}")
                bar.step()
                continue
            results.append(
                run_case(
                    case, rounds=rounds, min_sample_s=min_sample_s, settle_s=settle_s, peaks=peaks
                )
            )
            del case
            bar.step()
    finally:
        bar.close()
    return results, skipped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fastconv bench`` options (called by fastconv.cli)."""
    parser.description = (
        "Time fastconv against a vectorised NumPy peer and PyTorch (when installed), "
        "alternating in one process; report best/median time, GFLOP/s or GB/s, % of the "
        "measured peak, speedups, fastconv's algorithm and the max error vs the reference."
    )
    parser.add_argument(
        "--op",
        default="all",
        help="conv, gemm, pool, train or all (comma-separated list allowed; default all)",
    )
    parser.add_argument(
        "--layers",
        metavar="NAMES",
        help="comma-separated case names or "
        "shell patterns, e.g. 'resnet_3x3_*,vgg_3x3_112' or 'square_2048'",
    )
    parser.add_argument(
        "--direction", metavar="DIRS", help="conv: fwd,dx,dw; pool: fwd,dx (default all)"
    )
    parser.add_argument(
        "--impls",
        metavar="NAMES",
        help=f"implementations to run, of {','.join(IMPLS)} (default all present)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds, conv batch <= 2, "
        "pool batch <= 4: a rough picture in a fraction of the time",
    )
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for fastconv, torch and numpy's BLAS (default: fastconv's current count)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="alternating rounds per case (default 7; --quick 3)",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=None,
        metavar="S",
        help="repeat short calls so one sample lasts >= S seconds (default 0.05; --quick 0.02)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        metavar="S",
        help="sleep S seconds after every sample so the implementation's "
        "spinning worker threads go idle before the next one runs (default "
        "0.02, and 0.12 after numpy's OpenBLAS unless OPENBLAS_THREAD_TIMEOUT "
        "is set)",
    )
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (matplotlib)")
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        nargs="?",
        const="-",
        help="print (or write to PATH) the markdown report for README",
    )
    parser.add_argument(
        "--readme",
        metavar="PATH",
        help="replace the text between "
        "'<!-- bench-SECTION:start -->' and '<!-- bench-SECTION:end -->' in "
        "PATH with the markdown report (e.g. benchmarks/README.md)",
    )
    parser.add_argument(
        "--section", default="table", help="the SECTION of --readme (default: table)"
    )
    parser.add_argument(
        "--from-json",
        metavar="PATH",
        help="measure nothing: print the "
        "report (and write --markdown/--readme/--plot) from a saved --json",
    )
    parser.add_argument(
        "--reprobe",
        action="store_true",
        help="measure the machine's peak "
        "FMA throughput and copy bandwidth again and update the cache",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _command_line(args: argparse.Namespace) -> str:
    """The options of this run, as one would type them (for the report header)."""
    parts = [f"--op {args.op}"]
    for opt in ("layers", "direction", "impls", "threads", "repeat"):
        value = getattr(args, opt)
        if value is not None:
            parts.append(f"--{opt} {value}")
    parts += [f"--{flag}" for flag in ("quick", "smoke") if getattr(args, flag)]
    return " ".join(parts)


def update_readme(path: str, text: str, section: str = "table") -> None:
    """Replace what lies between ``<!-- bench-SECTION:start -->`` and
    ``<!-- bench-SECTION:end -->`` in ``path`` with ``text``."""
    start, end = f"<!-- bench-{section}:start -->", f"<!-- bench-{section}:end -->"
    doc = Path(path).read_text()
    i, j = doc.find(start), doc.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{path} has no {start} ... {end} markers")
    Path(path).write_text(doc[: i + len(start)] + "\n" + text.strip() + "\n" + doc[j:])


def report(
    meta: dict,
    results: list[dict],
    summary: list[dict],
    skipped: list[str],
    args: argparse.Namespace,
) -> int:
    """Write the files the options ask for (first: a closed stdout must not lose them),
    then print the tables; returns the exit status."""
    status = 0
    if args.json and not args.from_json:
        Path(args.json).write_text(
            json.dumps(
                {"meta": meta, "results": results, "summary": summary, "skipped": skipped},
                indent=2,
                default=float,
            )
        )
    text = format_markdown_report(meta, results, summary) if (args.markdown or args.readme) else ""
    if args.markdown and args.markdown != "-":
        Path(args.markdown).write_text(text + "\n")
    if args.readme:
        try:
            update_readme(args.readme, text, args.section)
        except (OSError, ValueError) as exc:
            print(f"fastconv bench: --readme: {exc}", file=sys.stderr)
            status = 2
    if args.plot and results and not plot_results(results, args.plot, meta):
        print("fastconv bench: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
    if args.markdown == "-":
        print(text)
    else:
        for op in OPS:
            rows = [r for r in results if r["op"] == op]
            if rows:
                print(
                    f"\n== {op} ({rows[0]['unit']}, best of {meta.get('rounds')}; x_peer = "
                    f"peer best / this best)"
                    f"{' -- ' + rows[0]['note'] if rows[0]['note'] else ''}"
                )
                print(terminal_table(rows))
        if summary:
            print()
            print(format_summary(summary))
        if meta.get("load_average_after"):
            print(f"load average at the end: {' '.join(map(str, meta['load_average_after']))}")
        if meta.get("cpu_others_during") is not None:
            print(
                f"other processes used {100 * meta['cpu_others_during']:.0f}% of the CPUs "
                "during the run"
                + (
                    " -- a disturbed run: re-run on a quiet machine"
                    if meta["cpu_others_during"] > 0.1
                    else ""
                )
            )
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    failed = [
        f"{r['case']} {r['direction']} {name}"
        for r in results
        for name, i in r["impls"].items()
        if i["ok"] is False
    ]
    if failed:
        print(
            f"fastconv bench: results outside the error tolerance: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return status


def run(args: argparse.Namespace) -> int:
    """``fastconv bench``: returns the exit status (2 on bad arguments, 1 when a result
    fails its correctness check)."""
    if args.from_json:
        try:
            saved = json.loads(Path(args.from_json).read_text())
            meta, results = saved["meta"], saved["results"]
        except (OSError, ValueError, KeyError) as exc:
            print(f"fastconv bench: --from-json: {exc}", file=sys.stderr)
            return 2
        if args.markdown != "-":
            print(format_header(meta))
        return report(meta, results, summarize(results), saved.get("skipped", []), args)
    ops_arg = _split(args.op) or ["all"]
    ops = list(OPS) if "all" in ops_arg else ops_arg
    bad = [o for o in ops if o not in OPS]
    impls = _split(args.impls)
    directions = _split(args.direction)
    errors = []
    if bad:
        errors.append(f"--op: unknown {', '.join(bad)} (choose from {', '.join(OPS)}, all)")
    if impls and not set(impls) <= set(IMPLS):
        errors.append(f"--impls: choose from {', '.join(IMPLS)}")
    if directions and not set(directions) <= set(CONV_DIRECTIONS):
        errors.append(f"--direction: choose from {', '.join(CONV_DIRECTIONS)}")
    if args.threads is not None and args.threads < 1:
        errors.append("--threads must be >= 1")
    if args.repeat is not None and args.repeat < 1:
        errors.append("--repeat must be >= 1")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = None
    if not errors:
        try:
            plan = build_plan(
                ops, layers=_split(args.layers), directions=directions, impls=impls, mode=mode
            )
        except ValueError as exc:
            errors.append(str(exc))
    if errors or plan is None:
        for e in errors:
            print(f"fastconv bench: error: {e}", file=sys.stderr)
        return 2
    if not plan.items:
        print("fastconv bench: no case matches these options", file=sys.stderr)
        return 2
    rounds = args.repeat or {"full": 7, "quick": 3, "smoke": 1}[mode]
    min_time = (
        args.min_time
        if args.min_time is not None
        else {"full": 0.05, "quick": 0.02, "smoke": 0.0}[mode]
    )
    settle = args.settle if args.settle is not None else (0.0 if mode == "smoke" else None)
    threads = args.threads or F.get_num_threads()
    markdown_only = args.markdown == "-"
    with thread_count(threads):
        peaks = machine_peaks(threads, reprobe=args.reprobe, quick=mode == "smoke")
        meta = describe_machine(peaks, threads)
        meta.update(
            rounds=rounds,
            min_sample_s=min_time,
            settle_s=(
                settle
                if settle is not None
                else {"numpy (gemm, conv)": default_settle_s(), "others": OMP_SETTLE_S}
            ),
            mode={"full": "", "quick": "--quick: reduced batches", "smoke": "--smoke: tiny shapes"}[
                mode
            ],
            argv=_command_line(args),
        )
        if not markdown_only:
            print(format_header(meta), flush=True)
        others = OtherLoad().start()
        results, skipped = run_plan(
            plan,
            rounds=rounds,
            min_sample_s=min_time,
            settle_s=settle,
            peaks=peaks,
            progress=not args.no_progress,
        )
    meta["load_average_after"] = load_average()
    meta["cpu_others_during"] = others.stop()
    return report(meta, results, summarize(results), skipped, args)
