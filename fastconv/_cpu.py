"""The CPU backend: the only Python that calls the compiled kernels in ``fastconv._C``.

``functional`` validates and normalises every argument, then calls one function here per
op; these pass contiguous arrays and the normalised geometry to C++ in one call.
"""

from __future__ import annotations

import operator
import os
import warnings
from contextlib import contextmanager

import numpy as np

from .geometry import ConvGeometry, PoolWindow

try:
    from . import _C
except ImportError as exc:  # an unbuilt checkout: say how to build, not just "no module"
    from pathlib import Path

    raise ImportError(
        f"fastconv's compiled kernels (fastconv._C) could not be imported from "
        f"{Path(__file__).parent}: {exc}. In a source checkout, run ./dev-build.sh first "
        "(or install the package: python -m pip install .)."
    ) from exc

__version__ = _C.__version__


def contiguous(x: np.ndarray) -> np.ndarray:
    """x when it is C-contiguous and aligned to its itemsize (what the kernels index),
    else such a copy (an array over an odd byte offset is contiguous but unaligned)."""
    if x.flags.c_contiguous and x.flags.aligned:
        return x
    return np.array(x, order="C")


# --------------------------------------------------------------------------- machine


def isa() -> str:
    """The ISA tier the kernels run: 'baseline', 'avx2+fma' or 'avx512f'."""
    return _C.isa()


def openmp_version() -> int:
    return int(_C.openmp_version())


def fma_peak_gflops(threads: int, iterations: int = 20_000_000) -> float:
    """GFLOP/s of a register-only FMA loop on ``threads`` threads: the machine's peak."""
    return float(_C.fma_peak_gflops(threads, iterations))


def gemm_kernel_peak_gflops(threads: int, calls: int = 20_000) -> float:
    """GFLOP/s of the GEMM micro-kernel with its operands in L1: no blocking beats it."""
    return float(_C.gemm_kernel_peak_gflops(threads, calls))


def isa_tiers() -> list[str]:
    """Every ISA tier this CPU runs, lowest first (FASTCONV_ISA caps the list)."""
    return list(_C.isa_tiers())


def set_isa(name: str) -> None:
    """Run the kernels of ISA tier ``name`` (one of ``isa_tiers()``) from now on.

    Process-wide; it waits for running kernels to finish. Meant for tests and
    benchmarks that compare tiers in one process.
    """
    if name not in isa_tiers():
        raise ValueError(f"ISA tier must be one of {isa_tiers()}, got {name!r}")
    _C.set_isa(name)


@contextmanager
def use_isa(name: str):
    """Run the kernels of ISA tier ``name`` inside the block, then restore the tier."""
    previous = isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def gemm_kernels(dtype: str) -> list[str]:
    """The GEMM micro-kernels of every ISA tier up to the active one, lowest first."""
    return list(_C.gemm_kernels(dtype))


# The thread-count bound. Every kernel sizes per-thread buffers and OpenMP teams by the
# setting, so an absurd one (10**9) crashes the interpreter -- a refused allocation, or
# libgomp exiting when it cannot create the threads -- instead of raising. Up to
# THREADS_PER_CPU threads per usable CPU are allowed (mild oversubscription can help
# around I/O or other work), and never fewer than MIN_THREAD_LIMIT, so code that asks
# for a fixed count (tests comparing 1, 2, 3 and 8 threads) runs on any machine.
THREADS_PER_CPU = 4
MIN_THREAD_LIMIT = 64


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def max_num_threads() -> int:
    """The largest count set_num_threads accepts: THREADS_PER_CPU per usable CPU, at least
    MIN_THREAD_LIMIT."""
    return max(MIN_THREAD_LIMIT, THREADS_PER_CPU * usable_cpus())


def set_num_threads(n: int) -> None:
    """Threads the kernels use, process-wide: 1 to max_num_threads(); ``n`` is an int
    (functional.set_num_threads checks its kind first)."""
    n = operator.index(n)
    limit = max_num_threads()
    if not 1 <= n <= limit:
        raise ValueError(
            f"n must lie in [1, {limit}], got {n}: the bound is {THREADS_PER_CPU} threads "
            f"per CPU this process may use ({usable_cpus()} CPUs here), never below "
            f"{MIN_THREAD_LIMIT}; more threads only oversubscribe the machine"
        )
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return int(_C.get_num_threads())


def _bound_default_threads() -> None:
    """The default comes from OpenMP (OMP_NUM_THREADS); an absurd value there is brought
    down to max_num_threads(), with a warning, before any kernel can run with it."""
    default, limit = get_num_threads(), max_num_threads()
    if default > limit:
        warnings.warn(
            f"OpenMP's default of {default} threads (OMP_NUM_THREADS?) exceeds fastconv's "
            f"bound of {limit}; using {limit} threads",
            RuntimeWarning,
            stacklevel=2,
        )
        _C.set_num_threads(limit)


_bound_default_threads()


# --------------------------------------------------------------------------- plain calls

# The common valid call in one C++ step (no Python validation): each returns the result,
# or None when any argument is not of the plain kind -- errors included -- and the
# caller then takes the validating path. See bindings.cpp.
conv2d_plain = _C.conv2d_plain
max_pool2d_plain = _C.max_pool2d_plain
gemm_plain = _C.gemm_plain


def last_algorithms() -> dict[str, str]:
    """What the calling thread's last CPU call of each conv op ran, by op name."""
    return _C.last_algorithms()


# --------------------------------------------------------------------------- convolution


def conv_params(input_shape, weight_shape, out_hw, geometry: ConvGeometry, dtype) -> _C.ConvParams:
    """The C++ description of one convolution (input_shape is NCHW)."""
    n, c, h, w = input_shape
    k, _, r, s = weight_shape
    top, _, left, _ = geometry.padding
    return _C.ConvParams(
        batch=n,
        in_channels=c,
        in_h=h,
        in_w=w,
        out_channels=k,
        kernel_h=r,
        kernel_w=s,
        out_h=out_hw[0],
        out_w=out_hw[1],
        stride_h=geometry.stride[0],
        stride_w=geometry.stride[1],
        pad_top=top,
        pad_left=left,
        dilation_h=geometry.dilation[0],
        dilation_w=geometry.dilation[1],
        groups=geometry.groups,
        single_precision=np.dtype(dtype) == np.float32,
    )


def conv2d(x, weight, bias, geometry: ConvGeometry, out_hw, algorithm=None) -> np.ndarray:
    x, weight = contiguous(x), contiguous(weight)
    bias = None if bias is None else contiguous(bias)
    out = np.empty((x.shape[0], weight.shape[0], *out_hw), dtype=x.dtype)
    params = conv_params(x.shape, weight.shape, out_hw, geometry, x.dtype)
    _C.conv2d_forward(x, weight, bias, out, params, algorithm)
    return out


def conv2d_input(
    input_size, weight, grad_output, geometry: ConvGeometry, algorithm=None
) -> np.ndarray:
    grad_input = np.empty(input_size, dtype=weight.dtype)
    params = conv_params(input_size, weight.shape, grad_output.shape[2:], geometry, weight.dtype)
    _C.conv2d_backward_input(
        contiguous(grad_output), contiguous(weight), grad_input, params, algorithm
    )
    return grad_input


def conv2d_weight(
    x, weight_size, grad_output, geometry: ConvGeometry, algorithm=None
) -> np.ndarray:
    grad_weight = np.empty(weight_size, dtype=x.dtype)
    params = conv_params(x.shape, weight_size, grad_output.shape[2:], geometry, x.dtype)
    _C.conv2d_backward_weight(
        contiguous(x), contiguous(grad_output), grad_weight, params, algorithm
    )
    return grad_weight


def conv2d_algorithms() -> tuple[str, ...]:
    return tuple(_C.conv2d_algorithms)


def conv2d_input_algorithms() -> tuple[str, ...]:
    return tuple(_C.conv2d_input_algorithms)


def conv2d_weight_algorithms() -> tuple[str, ...]:
    return tuple(_C.conv2d_weight_algorithms)


# The float32 convolution precision ("highest" or "high"): a process-wide default
# and a per-thread override, both kept in C++ where the plain calls read them.
set_default_conv_precision = _C.set_default_conv_precision
default_conv_precision = _C.default_conv_precision
set_thread_conv_precision = _C.set_thread_conv_precision
thread_conv_precision = _C.thread_conv_precision


def conv2d_plan(direction: str, input_shape, weight_shape, out_hw, geometry, dtype) -> str:
    """What a conv pass ('forward', 'input' or 'weight') runs for these shapes (pure)."""
    params = conv_params(input_shape, weight_shape, out_hw, geometry, dtype)
    select = {
        "forward": _C.select_conv_algorithm,
        "input": _C.select_input_grad_plan,
        "weight": _C.select_weight_grad_plan,
    }[direction]
    return select(params)


def selector_thresholds(defaults: bool) -> dict[str, int]:
    return dict(_C.conv_tuning(defaults))


def set_selector_thresholds(values: dict[str, int]) -> None:
    _C.set_conv_tuning(list(values.items()))


# --------------------------------------------------------------------------- pooling


def pool_params(planes, in_hw, out_hw, window: PoolWindow, count_include_pad=True, divisor=0):
    return _C.PoolParams(
        planes=planes,
        in_h=in_hw[0],
        in_w=in_hw[1],
        out_h=out_hw[0],
        out_w=out_hw[1],
        kernel_h=window.kernel[0],
        kernel_w=window.kernel[1],
        stride_h=window.stride[0],
        stride_w=window.stride[1],
        pad_h=window.padding[0],
        pad_w=window.padding[1],
        dilation_h=window.dilation[0],
        dilation_w=window.dilation[1],
        count_include_pad=bool(count_include_pad),
        divisor_override=int(divisor),
    )


def max_pool2d(x, window: PoolWindow, out_hw, return_indices: bool):
    n, c, h, w = x.shape
    out = np.empty((n, c, *out_hw), dtype=x.dtype)
    # Indices cost 8 bytes per output to write: only made when asked for.
    indices = np.empty((n, c, *out_hw), dtype=np.int64) if return_indices else None
    if n > 0:
        _C.max_pool2d_forward(
            contiguous(x).reshape(n * c, h, w),
            out.reshape(n * c, *out_hw),
            None if indices is None else indices.reshape(n * c, *out_hw),
            pool_params(n * c, (h, w), out_hw, window),
        )
    return out, indices


# max_pool2d's backward scatters to the recorded indices: no window is read.
_SCATTER_WINDOW = PoolWindow((1, 1), (1, 1), (0, 0), (1, 1), False)


def max_pool2d_backward(grad_output, indices, input_size) -> np.ndarray:
    n, c, h, w = input_size
    out_hw = grad_output.shape[2:]
    grad_input = np.empty(input_size, dtype=grad_output.dtype)
    if grad_input.size:
        if out_hw[0] * out_hw[1] == 0:
            grad_input.fill(0)
        else:
            _C.max_pool2d_backward(
                contiguous(grad_output).reshape(n * c, *out_hw),
                contiguous(indices).reshape(n * c, *out_hw),
                grad_input.reshape(n * c, h, w),
                pool_params(n * c, (h, w), out_hw, _SCATTER_WINDOW),
            )
    return grad_input


def avg_pool2d(x, window: PoolWindow, out_hw, count_include_pad, divisor) -> np.ndarray:
    n, c, h, w = x.shape
    out = np.empty((n, c, *out_hw), dtype=x.dtype)
    if n > 0:
        _C.avg_pool2d_forward(
            contiguous(x).reshape(n * c, h, w),
            out.reshape(n * c, *out_hw),
            pool_params(n * c, (h, w), out_hw, window, count_include_pad, divisor),
        )
    return out


def avg_pool2d_backward(grad_output, input_size, window: PoolWindow, count_include_pad, divisor):
    n, c, h, w = input_size
    out_hw = grad_output.shape[2:]
    grad_input = np.empty(input_size, dtype=grad_output.dtype)
    if n > 0:
        _C.avg_pool2d_backward(
            contiguous(grad_output).reshape(n * c, *out_hw),
            grad_input.reshape(n * c, h, w),
            pool_params(n * c, (h, w), out_hw, window, count_include_pad, divisor),
        )
    return grad_input


# --------------------------------------------------------------------------- GEMM


def gemm(a, b, out, alpha: float, beta: float, trans_a: bool, trans_b: bool, kernel_index=-1):
    """out = alpha * op(a) @ op(b) + beta * out, in place; operands may be strided views
    whose strides are whole elements, and must not overlap out."""
    _C.gemm(a, b, out, alpha, beta, trans_a, trans_b, kernel_index)


# --------------------------------------------------------------------------- clamps


def clamp(x, lo: float, hi, out=None):
    """x clamped to [lo, hi] (hi None: no upper bound) in one threaded pass, into
    ``out`` (a new array when None; may be x itself)."""
    out = np.empty_like(x) if out is None else out
    _C.clamp_forward(x, out, lo, hi)
    return out


def clamp_backward(grad, out, lo: float, hi):
    """grad where out > lo (hi None; NaN too) or lo < out < hi, else 0: a clamp's
    input gradient."""
    grad_input = np.empty_like(grad)
    _C.clamp_backward(grad, out, grad_input, lo, hi)
    return grad_input


# --------------------------------------------------------------------------- batch norm


def batch_norm_stats(rows):
    """Per-channel mean and biased variance of (N, C, S) rows."""
    c = rows.shape[1]
    mean, var = np.empty(c, dtype=rows.dtype), np.empty(c, dtype=rows.dtype)
    _C.batch_norm_stats(rows, mean, var)
    return mean, var


# batch_norm_apply's fused clamps, by name (the kernel's BatchNormClamp)
BATCH_NORM_CLAMPS = {None: 0, "relu": 1, "relu6": 2}


def batch_norm_apply(
    rows, mean, invstd, weight, bias, keep_xhat: bool = True, clamp=None, xhat_out=None
):
    """(xhat, out): xhat = (x - mean) * invstd, out = clamp(xhat * weight + bias), on
    (N, C, S); ``clamp`` None, 'relu' or 'relu6'; xhat is None (and never written)
    unless ``keep_xhat``, and is written into ``xhat_out`` when that is given."""
    xhat = (np.empty_like(rows) if xhat_out is None else xhat_out) if keep_xhat else None
    out = np.empty_like(rows)
    _C.batch_norm_apply(rows, mean, invstd, weight, bias, xhat, out, BATCH_NORM_CLAMPS[clamp])
    return xhat, out


def batch_norm_backward(grad_rows, xhat, scale, batch_statistics: bool, input_grad: bool):
    """(grad_input or None, sum_g, sum_gx) on (N, C, S) rows; scale = weight * invstd."""
    c = xhat.shape[1]
    sum_g, sum_gx = np.empty(c, dtype=xhat.dtype), np.empty(c, dtype=xhat.dtype)
    grad = np.empty_like(xhat) if input_grad else None
    _C.batch_norm_backward(grad_rows, xhat, scale, batch_statistics, sum_g, sum_gx, grad)
    return grad, sum_g, sum_gx


# --------------------------------------------------------------------------- optimizers


def optimizer_step(kind: str, dtype, *args) -> None:
    """One fused step of optimizer ``kind`` ('sgd', 'adam', 'adagrad', 'rmsprop') over a
    group's parameters of one dtype: C-contiguous, aligned, writeable arrays, updated in
    place (see csrc/optim/optim.h for the arguments)."""
    suffix = "f32" if np.dtype(dtype) == np.float32 else "f64"
    getattr(_C, f"{kind}_step_{suffix}")(*args)
