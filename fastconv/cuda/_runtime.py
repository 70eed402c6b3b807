"""Device-array plumbing shared by every CUDA kernel module.

* ``ingest``: any accepted input (a Numba device array, the simulator's fake device
  array, or any object exposing ``__cuda_array_interface__``) -> a C-contiguous Numba
  device array, copied on the device when the input is strided;
* ``pick_stream``: the stream a call runs on (the first input that carries one);
* ``empty`` / ``zeros``: allocation on that stream;
* ``kernel``: the compiled-kernel cache (explicit signatures, compiled once per
  process and configuration, and kept on disk by Numba for the next process; under
  the simulator "compiling" is free and lazy);
* small element-wise kernels: fill, strided copies, row broadcast, split-K reduction.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from typing import Any, Callable, NamedTuple

import numpy as np
from numba import cuda, types

try:  # numba-cuda
    from numba.cuda.core import config as _config
except ImportError:  # pragma: no cover - the CUDA target bundled with older numba
    from numba.core import config as _config

#: True under the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1).
SIMULATOR = bool(_config.ENABLE_CUDASIM)

#: Threads per block of the one-thread-per-element kernels.
ELEMENTWISE_THREADS = 256
#: The largest grid dimension y (and z) a launch may have.
MAX_GRID_Y = 65535
#: Streaming multiprocessors assumed when the device does not say (the simulator).
DEFAULT_SM_COUNT = 80

NUMBA_TYPES = {
    np.dtype(np.float32): types.float32,
    np.dtype(np.float64): types.float64,
    np.dtype(np.int64): types.int64,
    np.dtype(np.int32): types.int32,
}


class KernelSource(NamedTuple):
    """A kernel before compilation: its Python function, explicit signature and, where
    it is always launched with one block size, that size (compiled in as launch bounds,
    so ptxas may budget registers for it)."""

    fn: Callable
    sig: Any
    max_threads: int | None = None


def source(sig: Any, max_threads: int | None = None) -> Callable[[Callable], KernelSource]:
    """Decorator used in place of ``cuda.jit(sig)``: ``kernel`` compiles it once."""
    return lambda fn: KernelSource(fn, sig, max_threads)


def jit_options(src: KernelSource) -> dict:
    """The keyword arguments ``cuda.jit`` compiles ``src`` with (none under the
    simulator, which takes none)."""
    if SIMULATOR or not src.max_threads:
        return {}
    return {"launch_bounds": src.max_threads}


#: Numba's on-disk cache of compiled kernels (beside each kernel's source file, or in
#: NUMBA_CACHE_DIR): a new process loads a kernel compiled before instead of compiling
#: it. FASTCONV_CUDA_DISK_CACHE=0 turns it off.
DISK_CACHE = os.environ.get("FASTCONV_CUDA_DISK_CACHE", "1") != "0"


_lock = threading.Lock()
_kernels: dict[tuple, Any] = {}
_sources_only = threading.local()


def kernel(key: tuple, build: Callable[[], KernelSource]) -> Any:
    """The compiled kernel cached under ``key``, built and compiled on first use.

    ``cuda.jit`` with the explicit signature compiles eagerly (on a GPU) exactly once
    per key; under the simulator it only wraps the function. Inside ``sources_only()``
    the uncompiled ``KernelSource`` is returned instead (offline compile checks).
    """
    if getattr(_sources_only, "on", False):
        return build()
    found = _kernels.get(key)
    if found is None:
        with _lock:
            found = _kernels.get(key)
            if found is None:
                src = build()
                cache = DISK_CACHE and not SIMULATOR
                found = cuda.jit(src.sig, cache=cache, **jit_options(src))(src.fn)
                _kernels[key] = found
    return found


@contextlib.contextmanager
def sources_only():
    """Within this block the kernel factories return ``KernelSource``s (no compilation)."""
    _sources_only.on = True
    try:
        yield
    finally:
        _sources_only.on = False


def compiled_kernels() -> list[tuple]:
    """Keys of the kernels compiled so far in this process (for tests and benchmarks)."""
    return sorted(_kernels, key=repr)


def nb(dtype: Any) -> types.Type:
    return NUMBA_TYPES[np.dtype(dtype)]


def c_array(dtype: Any, ndim: int = 1) -> types.Array:
    """A C-contiguous array type (the layout every main kernel takes)."""
    return types.Array(nb(dtype), ndim, "C")


def any_array(dtype: Any, ndim: int) -> types.Array:
    """An array type of any layout (strided copies)."""
    return types.Array(nb(dtype), ndim, "A")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def sm_count() -> int:
    if SIMULATOR:
        return DEFAULT_SM_COUNT
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:  # pragma: no cover - depends on the driver
        return DEFAULT_SM_COUNT


# --------------------------------------------------------------------------- arrays


def _is_numba_array(x: Any) -> bool:
    return bool(getattr(x, "__cuda_ndarray__", False))


def as_device(x: Any) -> Any:
    """A Numba device array viewing ``x`` (no copy)."""
    if _is_numba_array(x):
        return x
    if SIMULATOR:
        if isinstance(x, np.ndarray):
            # functional's reshape of a simulated device array can hand back the wrapped
            # NumPy array; it is simulated device memory, so wrap it again.
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

            return FakeCUDAArray(x)
        raise TypeError(
            f"{type(x).__name__} exposes __cuda_array_interface__, which the Numba CUDA "
            "simulator cannot read; pass numba.cuda device arrays"
        )
    if hasattr(x, "__cuda_array_interface__"):
        # sync=False: we run on the producer's stream instead of blocking the host on it.
        return cuda.as_cuda_array(x, sync=False)
    raise TypeError(f"expected a CUDA device array, got {type(x).__name__}")


def device_pointer(x: Any) -> int:
    """The address of a device array's first element (its host buffer's under the
    simulator)."""
    if SIMULATOR:
        return int(np.asarray(x).__array_interface__["data"][0])
    return int(x.__cuda_array_interface__["data"][0])


def stream_of(x: Any) -> Any:
    s = getattr(x, "stream", 0)
    return s if s else 0


def pick_stream(*arrays: Any) -> Any:
    """The stream of the first array that carries one, else the default stream (0)."""
    for a in arrays:
        if a is not None:
            s = stream_of(a)
            if s:
                return s
    return 0


def is_contiguous(x: Any) -> bool:
    return bool(x.is_c_contiguous()) and all(s > 0 for s, n in zip(x.strides, x.shape) if n > 1)


def empty(shape: tuple, dtype: Any, stream: Any) -> Any:
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype), stream=stream)


_workspaces = threading.local()


def workspace(size: int, dtype: Any, stream: Any) -> Any:
    """A flat device buffer of ``size`` elements for a call's intermediate results (the
    split-K partial sums), reused by the next call instead of allocated again.

    Kept per host thread and stream: work on one stream runs in order, so a call's
    kernels are done with it before the next call's on that stream use it; two threads
    never share one. It grows to the largest size asked for."""
    buffers = getattr(_workspaces, "buffers", None)
    if buffers is None:
        buffers = _workspaces.buffers = {}
    key = (id(stream) if stream else 0, np.dtype(dtype).str)
    found = buffers.get(key)
    if found is None or found[1].size < size:
        # the stream is kept with its buffer: its id cannot be reused while it is cached
        found = buffers[key] = (stream, empty((max(size, 1),), dtype, stream))
    return found[1][:size]


def zeros(shape: tuple, dtype: Any, stream: Any) -> Any:
    out = empty(shape, dtype, stream)
    fill(out, 0, stream)
    return out


def flat(x: Any) -> Any:
    """1-D view of a C-contiguous device array."""
    return x.reshape(x.size)


def ingest(x: Any, stream: Any) -> Any:
    """``x`` as a C-contiguous Numba device array (copied on the device if strided)."""
    d = as_device(x)
    if d.size == 0 or is_contiguous(d):
        return d
    return contiguous_copy(d, stream)


def launch_1d(n: int, threads: int = ELEMENTWISE_THREADS) -> tuple[int, int]:
    return max(1, cdiv(n, threads)), threads


def sync_to_host(d: Any, stream: Any) -> np.ndarray:
    """Copy a (small) device array to the host and wait for it."""
    if stream:
        host = d.copy_to_host(stream=stream)
        stream.synchronize()
        return host
    return d.copy_to_host()


# --------------------------------------------------------------------------- element-wise


def _fill_kernel(dtype):
    def build():
        @source(types.void(c_array(dtype), nb(dtype)))
        def fill_kernel(out, value):
            i = cuda.grid(1)
            if i < out.size:
                out[i] = value

        return fill_kernel

    return kernel(("fill", np.dtype(dtype).str), build)


def fill(x: Any, value: float, stream: Any) -> None:
    if x.size:
        grid, block = launch_1d(x.size)
        _fill_kernel(x.dtype)[grid, block, stream](flat(x), value)


def _copy_kernel(dtype, ndim):
    def build():
        sig = types.void(any_array(dtype, ndim), c_array(dtype, ndim))
        if ndim == 1:

            @source(sig)
            def copy1(src, dst):
                i = cuda.grid(1)
                if i < dst.shape[0]:
                    dst[i] = src[i]

            return copy1
        if ndim == 2:

            @source(sig)
            def copy2(src, dst):
                i = cuda.grid(1)
                n1 = dst.shape[1]
                if i < dst.size:
                    a = i // n1
                    dst[a, i - a * n1] = src[a, i - a * n1]

            return copy2
        if ndim == 3:

            @source(sig)
            def copy3(src, dst):
                i = cuda.grid(1)
                n1, n2 = dst.shape[1], dst.shape[2]
                if i < dst.size:
                    a = i // (n1 * n2)
                    rest = i - a * (n1 * n2)
                    b = rest // n2
                    dst[a, b, rest - b * n2] = src[a, b, rest - b * n2]

            return copy3

        @source(sig)
        def copy4(src, dst):
            i = cuda.grid(1)
            n1, n2, n3 = dst.shape[1], dst.shape[2], dst.shape[3]
            if i < dst.size:
                a = i // (n1 * n2 * n3)
                rest = i - a * (n1 * n2 * n3)
                b = rest // (n2 * n3)
                rest = rest - b * (n2 * n3)
                c = rest // n3
                dst[a, b, c, rest - c * n3] = src[a, b, c, rest - c * n3]

        return copy4

    return kernel(("copy", np.dtype(dtype).str, ndim), build)


def contiguous_copy(x: Any, stream: Any) -> Any:
    """A C-contiguous device copy of a strided device array (ndim 1..4)."""
    if not 1 <= x.ndim <= 4:
        raise ValueError(f"strided device arrays of {x.ndim} dims are not supported")
    out = empty(x.shape, x.dtype, stream)
    grid, block = launch_1d(out.size)
    _copy_kernel(x.dtype, x.ndim)[grid, block, stream](x, out)
    return out


def _scatter_kernel(dtype):
    """dst (any layout, 2-D) = src (C-contiguous): writes a result back into a strided c."""

    def build():
        @source(types.void(c_array(dtype, 2), any_array(dtype, 2)))
        def scatter2(src, dst):
            i = cuda.grid(1)
            n1 = src.shape[1]
            if i < src.size:
                a = i // n1
                dst[a, i - a * n1] = src[a, i - a * n1]

        return scatter2

    return kernel(("scatter2", np.dtype(dtype).str), build)


def copy_into_strided(src: Any, dst: Any, stream: Any) -> None:
    if src.size:
        grid, block = launch_1d(src.size)
        _scatter_kernel(src.dtype)[grid, block, stream](src, dst)


def _broadcast_rows_kernel(dtype):
    def build():
        @source(types.void(c_array(dtype), c_array(dtype), types.int64))
        def broadcast_rows_kernel(bias, out, n):
            i = cuda.grid(1)
            if i < out.size:
                out[i] = bias[i % n]

        return broadcast_rows_kernel

    return kernel(("broadcast_rows", np.dtype(dtype).str), build)


def broadcast_rows(bias: Any, rows: int, stream: Any) -> Any:
    n = bias.shape[0]
    out = empty((rows, n), bias.dtype, stream)
    if out.size:
        grid, block = launch_1d(out.size)
        _broadcast_rows_kernel(bias.dtype)[grid, block, stream](flat(bias), flat(out), n)
    return out


def _sum_splits_kernel(dtype):
    """out[i] = sum_s parts[s * n + i]: the deterministic second pass of split-K."""

    def build():
        @source(types.void(c_array(dtype), c_array(dtype), types.int64, types.int64))
        def sum_splits(parts, out, n, splits):
            i = cuda.grid(1)
            if i < n:
                acc = parts[i]
                for s in range(1, splits):
                    acc += parts[s * n + i]
                out[i] = acc

        return sum_splits

    return kernel(("sum_splits", np.dtype(dtype).str), build)


def sum_splits(parts: Any, out: Any, splits: int, stream: Any) -> None:
    n = out.size
    grid, block = launch_1d(n)
    _sum_splits_kernel(out.dtype)[grid, block, stream](flat(parts), flat(out), n, splits)


def gcd(a: int, b: int) -> int:
    return math.gcd(a, b)


def to_device(host: np.ndarray, stream: Any) -> Any:
    return cuda.to_device(host, stream=stream)
