"""Numba CUDA backend of fastconv (``pip install fastconv[cuda]``, i.e. numba-cuda).

``fastconv.functional`` validates and normalises every argument, then calls these
functions when the tensors live on a CUDA device; 3-D inputs arrive already batched.
Nothing here re-validates user input except what addresses memory (pooling indices).

Inputs: Numba device arrays (``numba.cuda.to_device`` ...; under the simulator its fake
device arrays), or any object exposing ``__cuda_array_interface__`` (CuPy arrays, torch
CUDA tensors), wrapped without a copy. Strided inputs are copied to a contiguous device
buffer first (on the device). Results are **Numba device arrays**
(``numba.cuda.cudadrv.devicearray.DeviceNDArray``): ``.copy_to_host()`` gives NumPy, and
they expose ``__cuda_array_interface__``, so ``cupy.asarray(r)`` / ``torch.as_tensor(r,
device="cuda")`` view them without a copy. ``gemm`` with a writable ``c`` writes into
``c`` and returns that same object.

Streams: a call runs on the stream of its first input that carries one (a Numba array
created with ``stream=``, or the producer stream a CAI object declares: we run on it
instead of blocking the host on it), else on the default stream; results are allocated
on that stream. No call waits for the device, except ``max_pool2d_backward`` given
indices this backend's ``max_pool2d`` did not make (or made for windows without input
pixels), which reads one flag back to refuse out-of-range indices before scattering.

Kernels (see the submodules): ``gemm`` 2-D block-tiled SGEMM with register blocking;
``conv2d`` / ``conv2d_input`` / ``conv2d_weight`` implicit GEMM on the same tiling
(stride-phase decomposition for the input gradient, split-K with a deterministic
second pass for the weight gradient), direct kernels for groups with few channels
(depthwise); pooling one thread per output. Each kernel is compiled once per
(tile, dtype, variant) with an explicit signature, the first time it is needed, and
kept in Numba's on-disk cache for the next process (``_runtime.DISK_CACHE``). The
GEMM-shaped kernels are generated as source per tile (``_gen``); their machine code is
in ``machine_code`` and ``benchmarks/README.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

try:
    import numba.cuda  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "fastconv's CUDA backend needs numba-cuda: pip install 'fastconv[cuda]'"
    ) from exc

from . import _conv, _gemm, _pool, _tiles
from . import _runtime as rt
from ._tiles import THRESHOLDS, TILES, TileConfig, force

__all__ = [
    "THRESHOLDS",
    "TILES",
    "KernelVariant",
    "TileConfig",
    "add_batch_dim",
    "avg_pool2d",
    "avg_pool2d_backward",
    "broadcast_rows",
    "channel_sums",
    "conv2d",
    "conv2d_input",
    "conv2d_weight",
    "conv_algorithm",
    "force",
    "gemm",
    "kernel_variants",
    "max_pool2d",
    "max_pool2d_backward",
]

_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max
_MAX_GRID_Y = 65535


def _prepare(*arrays: Any) -> tuple[Any, list]:
    """(stream, contiguous Numba device arrays); None entries stay None."""
    views = [None if a is None else rt.as_device(a) for a in arrays]
    stream = rt.pick_stream(*views)
    return stream, [None if v is None else rt.ingest(v, stream) for v in views]


def add_batch_dim(x):
    """A (1, *x.shape) device array of x: a view when x is contiguous, else a device copy.

    (A strided Numba device array cannot be reshaped in place.)
    """
    d = rt.as_device(x)
    if d.size and not rt.is_contiguous(d):
        d = rt.contiguous_copy(d, rt.stream_of(d))
    return d.reshape((1, *d.shape))


def _check_grid_y(n: int, what: str) -> None:
    if n > _MAX_GRID_Y:
        raise ValueError(f"{what} = {n} exceeds the CUDA grid limit of {_MAX_GRID_Y}")


class KernelVariant(NamedTuple):
    """A kernel the backend launches: its name, its factory and its block size."""

    name: str
    factory: Any  # () -> the compiled kernel (a KernelSource inside sources_only())
    threads: int


def kernel_variants(dtypes=(np.float32, np.float64), tiles=None) -> list[KernelVariant]:
    """The registry: every (kernel, tile, dtype) this backend launches, as KernelVariants.

    By default the tiles the selectors use: float32 every tile, float64 the small one
    only (what ``_tiles.pick_tile`` gives it); ``tiles`` pairs every kernel with every
    tile given. The implicit-GEMM convolutions come with 32-bit index arithmetic, and
    with 64-bit (``-i64``) for tensors of 2**31 elements or more.

    ``factory()`` returns the compiled kernel (or, inside ``_runtime.sources_only()``,
    its source and signature): tests and benchmarks enumerate kernels from here.
    """
    out = []
    for dt in (np.dtype(d) for d in dtypes):
        sfx = dt.name
        if tiles is not None:
            gemm_tiles = wgrad_tiles = tuple(tiles)
        elif dt.itemsize > 4:
            gemm_tiles = wgrad_tiles = _tiles.GEMM_TILES[-1:]
        else:
            gemm_tiles = wgrad_tiles = _tiles.GEMM_TILES
        for t in gemm_tiles:
            for ta in (False, True):
                for tb in (False, True):
                    out.append(
                        KernelVariant(
                            f"gemm-{t.name}-{'nt'[ta]}{'nt'[tb]}-{sfx}",
                            lambda t=t, ta=ta, tb=tb, dt=dt: _gemm.gemm_kernel(t, dt, ta, tb),
                            t.threads,
                        )
                    )
            for kind, factory in (
                ("fwd", _conv.conv2d_fwd_kernel),
                ("dgrad", _conv.conv2d_dgrad_kernel),
            ):
                for index in ("int32", "int64"):  # int64: tensors of 2**31 elements or more
                    out.append(
                        KernelVariant(
                            f"conv2d_{kind}-{t.name}-{sfx}" + ("-i64" if index == "int64" else ""),
                            lambda t=t, dt=dt, f=factory, i=index: f(t, dt, i),
                            t.threads,
                        )
                    )
        for t in wgrad_tiles:
            for index in ("int32", "int64"):
                out.append(
                    KernelVariant(
                        f"conv2d_wgrad-{t.name}-{sfx}" + ("-i64" if index == "int64" else ""),
                        lambda t=t, dt=dt, i=index: _conv.conv2d_wgrad_kernel(t, dt, i),
                        t.threads,
                    )
                )
        for name, factory, threads in (
            ("conv2d_fwd_direct", _conv.conv2d_fwd_direct_kernel, rt.ELEMENTWISE_THREADS),
            ("conv2d_dgrad_direct", _conv.conv2d_dgrad_direct_kernel, rt.ELEMENTWISE_THREADS),
            ("conv2d_wgrad_direct", _conv.conv2d_wgrad_direct_kernel, _conv.REDUCE_THREADS),
            ("channel_sums", _conv.channel_sums_kernel, _conv.REDUCE_THREADS),
            ("max_pool2d_fwd", _pool.max_pool2d_fwd_kernel, rt.ELEMENTWISE_THREADS),
            ("max_pool2d_bwd", _pool.max_pool2d_bwd_kernel, rt.ELEMENTWISE_THREADS),
            ("avg_pool2d_fwd", _pool.avg_pool2d_fwd_kernel, rt.ELEMENTWISE_THREADS),
            ("avg_pool2d_bwd", _pool.avg_pool2d_bwd_kernel, rt.ELEMENTWISE_THREADS),
            ("fill", rt._fill_kernel, rt.ELEMENTWISE_THREADS),
            ("sum_splits", rt._sum_splits_kernel, rt.ELEMENTWISE_THREADS),
            ("broadcast_rows", rt._broadcast_rows_kernel, rt.ELEMENTWISE_THREADS),
            ("scatter2", rt._scatter_kernel, rt.ELEMENTWISE_THREADS),
        ):
            out.append(KernelVariant(f"{name}-{sfx}", lambda f=factory, dt=dt: f(dt), threads))
        for nd in (1, 2, 3, 4):
            out.append(
                KernelVariant(
                    f"copy{nd}-{sfx}",
                    lambda nd=nd, dt=dt: rt._copy_kernel(dt, nd),
                    rt.ELEMENTWISE_THREADS,
                )
            )
    out.append(
        KernelVariant("copy4-int64", lambda: rt._copy_kernel(np.int64, 4), rt.ELEMENTWISE_THREADS)
    )
    out.append(
        KernelVariant(
            "max_pool2d_check-int64", _pool.max_pool2d_check_kernel, rt.ELEMENTWISE_THREADS
        )
    )
    return out


# --------------------------------------------------------------------------- algorithm choice


class ConvChoice(NamedTuple):
    algorithm: str  # "implicit_gemm" | "direct"
    tile: TileConfig | None
    splits: int = 1  # conv2d_weight only


def conv_algorithm(op: str, x_shape, w_shape, out_hw, geometry, itemsize: int = 4) -> ConvChoice:
    """The kernel a convolution runs with, apart from running it (tested by table).

    ``op`` is "forward", "input" or "weight"; shapes are NCHW / KCRS 4-tuples;
    ``itemsize`` that of the dtype (8 for float64).
    """
    n, c, h, w = x_shape
    k, cg, r, s = w_shape
    g = geometry.groups
    kg = k // g
    oh, ow = out_hw
    sms = rt.sm_count()
    few = THRESHOLDS["direct_conv_min_channels"]
    forced = _tiles.forced("algorithm")
    if op == "forward":
        direct = kg < few
        m_dim, n_dim = kg, n * oh * ow
    elif op == "input":
        direct = cg < few
        sh, sw = geometry.stride
        m_dim, n_dim = cg, n * -(-h // sh) * -(-w // sw)
    elif op == "weight":
        direct = kg < few or cg * r * s < few
        m_dim, n_dim = kg, cg * r * s
    else:
        raise ValueError(f"unknown conv op {op!r}")
    if forced is not None:
        direct = forced == "direct"
    if direct:
        return ConvChoice("direct", None)
    # conv2d_weight fills the GPU by splitting its reduction, not by its tile count
    tile = _tiles.pick_tile(m_dim, n_dim, sms, fill=op != "weight", itemsize=itemsize)
    splits = 1
    if op == "weight":
        nq = n * oh * ow
        tiles = rt.cdiv(m_dim, tile.bm) * rt.cdiv(n_dim, tile.bn) * g
        want = rt.cdiv(int(THRESHOLDS["splitk_blocks_per_sm"] * sms), tiles)
        most = max(1, nq // (tile.bk * THRESHOLDS["splitk_min_steps"]))
        splits = _tiles.forced("splits") or max(1, min(want, most))
        splits = max(1, min(splits, _MAX_GRID_Y // g, max(1, rt.cdiv(nq, tile.bk))))
    return ConvChoice("implicit_gemm", tile, splits)


def _conv_ints(n, c, h, w, k, oh, ow, r, s, geometry):
    (sh, sw), (pt, _, pl, _), (dh, dw) = geometry.stride, geometry.padding, geometry.dilation
    return (n, c, h, w, k, oh, ow, r, s, sh, sw, pt, pl, dh, dw, geometry.groups)


# --------------------------------------------------------------------------- convolution


def conv2d(x, weight, bias, geometry):
    """2-D cross-correlation; (N, C, H, W) x (K, Cg, R, S) -> (N, K, OH, OW)."""
    stream, (x, weight, bias) = _prepare(x, weight, bias)
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    oh, ow = geometry.output_size(h, w, (r, s))
    out = rt.empty((n, k, oh, ow), x.dtype, stream)
    if out.size == 0:
        return out
    g = geometry.groups
    ints = (*_conv_ints(n, c, h, w, k, oh, ow, r, s, geometry), int(bias is not None))
    b = rt.flat(bias) if bias is not None else rt.flat(out)  # never read without a bias
    args = (rt.flat(x), rt.flat(weight), b, rt.flat(out), *ints)
    choice = conv_algorithm("forward", x.shape, weight.shape, (oh, ow), geometry, x.dtype.itemsize)
    if choice.algorithm == "direct":
        grid, block = rt.launch_1d(out.size)
        _conv.conv2d_fwd_direct_kernel(x.dtype)[grid, block, stream](*args)
    else:
        t = choice.tile
        _check_grid_y(g, "groups")
        _check_grid_y(rt.cdiv(k // g, t.bm), "output channel tiles")
        grid = (rt.cdiv(n * oh * ow, t.bn), rt.cdiv(k // g, t.bm), g)
        index = _conv.index_type(x, weight, out)
        _conv.conv2d_fwd_kernel(t, x.dtype, index)[grid, t.threads, stream](*args)
    return out


def conv2d_input(input_size, weight, grad_output, geometry):
    """Gradient of conv2d wrt its input, shape ``input_size`` (N, C, H, W)."""
    stream, (weight, grad_output) = _prepare(weight, grad_output)
    n, c, h, w = (int(v) for v in input_size)
    k, _, r, s = weight.shape
    _, _, oh, ow = grad_output.shape
    gin = rt.empty((n, c, h, w), weight.dtype, stream)
    if gin.size == 0:
        return gin
    g = geometry.groups
    args = (
        rt.flat(grad_output),
        rt.flat(weight),
        rt.flat(gin),
        *_conv_ints(n, c, h, w, k, oh, ow, r, s, geometry),
    )
    choice = conv_algorithm(
        "input", (n, c, h, w), weight.shape, (oh, ow), geometry, gin.dtype.itemsize
    )
    if choice.algorithm == "direct":
        grid, block = rt.launch_1d(gin.size)
        _conv.conv2d_dgrad_direct_kernel(gin.dtype)[grid, block, stream](*args)
    else:
        t = choice.tile
        sh, sw = geometry.stride
        _check_grid_y(g * sh * sw, "groups * stride_h * stride_w")
        _check_grid_y(rt.cdiv(c // g, t.bm), "input channel tiles")
        pix = n * rt.cdiv(h, sh) * rt.cdiv(w, sw)
        grid = (rt.cdiv(pix, t.bn), rt.cdiv(c // g, t.bm), g * sh * sw)
        index = _conv.index_type(grad_output, weight, gin)
        _conv.conv2d_dgrad_kernel(t, gin.dtype, index)[grid, t.threads, stream](*args)
    return gin


def conv2d_weight(x, weight_size, grad_output, geometry):
    """Gradient of conv2d wrt its weight, shape ``weight_size`` (K, Cg, R, S)."""
    stream, (x, grad_output) = _prepare(x, grad_output)
    n, c, h, w = x.shape
    k, cg, r, s = (int(v) for v in weight_size)
    _, _, oh, ow = grad_output.shape
    gw = rt.empty((k, cg, r, s), x.dtype, stream)
    if gw.size == 0:
        return gw
    if n * oh * ow == 0:
        rt.fill(gw, 0, stream)
        return gw
    g = geometry.groups
    ints = _conv_ints(n, c, h, w, k, oh, ow, r, s, geometry)
    choice = conv_algorithm("weight", x.shape, (k, cg, r, s), (oh, ow), geometry, x.dtype.itemsize)
    if choice.algorithm == "direct":
        _conv.conv2d_wgrad_direct_kernel(x.dtype)[gw.size, _conv.REDUCE_THREADS, stream](
            rt.flat(x), rt.flat(grad_output), rt.flat(gw), *ints
        )
        return gw
    t, splits = choice.tile, choice.splits
    nq = n * oh * ow
    chunk = rt.cdiv(rt.cdiv(nq, splits), t.bk) * t.bk
    splits = rt.cdiv(nq, chunk)
    ws = rt.flat(gw) if splits == 1 else rt.workspace(splits * gw.size, x.dtype, stream)
    _check_grid_y(rt.cdiv(k // g, t.bm), "output channel tiles")
    grid = (rt.cdiv(cg * r * s, t.bn), rt.cdiv(k // g, t.bm), g * splits)
    index = _conv.index_type(x, grad_output, ws)
    _conv.conv2d_wgrad_kernel(t, x.dtype, index)[grid, t.threads, stream](
        rt.flat(x), rt.flat(grad_output), ws, *ints, splits, chunk
    )
    if splits > 1:
        rt.sum_splits(ws, gw, splits, stream)
    return gw


def channel_sums(grad_output):
    """Gradient of conv2d wrt its bias: (N, K, OH, OW) summed over N, OH, OW -> (K,).

    Deterministic: per-(channel, split) block partial sums, then a fixed-order sum of
    the splits (no atomics).
    """
    stream, (g,) = _prepare(grad_output)
    n, k, oh, ow = g.shape
    out = rt.empty((k,), g.dtype, stream)
    if k == 0:
        return out
    total = n * oh * ow
    if total == 0:
        rt.fill(out, 0, stream)
        return out
    threads = _conv.REDUCE_THREADS
    splits = max(1, min(rt.cdiv(4 * rt.sm_count(), k), rt.cdiv(total, threads * 16), _MAX_GRID_Y))
    chunk = rt.cdiv(total, splits)
    splits = rt.cdiv(total, chunk)
    part = out if splits == 1 else rt.workspace(splits * k, g.dtype, stream)
    _conv.channel_sums_kernel(g.dtype)[(k, splits), threads, stream](
        rt.flat(g), rt.flat(part), n, k, oh * ow, chunk
    )
    if splits > 1:
        rt.sum_splits(part, out, splits, stream)
    return out


# --------------------------------------------------------------------------- pooling


def _pool_ints(window):
    (kh, kw), (sh, sw), (ph, pw) = window.kernel, window.stride, window.padding
    return kh, kw, sh, sw, ph, pw


def max_pool2d(x, window, out_hw):
    """(out, indices): max pooling and the int64 flat h*W + w index of each maximum."""
    stream, (x,) = _prepare(x)
    n, c, h, w = x.shape
    oh, ow = out_hw
    out = rt.empty((n, c, oh, ow), x.dtype, stream)
    idx = rt.empty((n, c, oh, ow), np.int64, stream)
    if out.size:
        grid, block = rt.launch_1d(out.size)
        _pool.max_pool2d_fwd_kernel(x.dtype)[grid, block, stream](
            rt.flat(x),
            rt.flat(out),
            rt.flat(idx),
            n * c,
            h,
            w,
            oh,
            ow,
            *_pool_ints(window),
            *window.dilation,
        )
        (kh, kw), (sh, sw), (ph, pw) = window.kernel, window.stride, window.padding
        dh, dw = window.dilation
        if _every_window_meets(h, oh, kh, sh, ph, dh) and _every_window_meets(
            w, ow, kw, sw, pw, dw
        ):
            _valid_indices.remember(idx, h * w)
    return out, idx


def _every_window_meets(size: int, out: int, k: int, s: int, p: int, d: int) -> bool:
    """Whether every pooling window along one axis holds an input position (then every
    index max_pool2d gives, that of the window's first in-bounds element, is valid)."""
    for o in range(out):
        start = o * s - p
        first = start if start >= 0 else start + rt.cdiv(-start, d) * d
        if first >= size or first > start + (k - 1) * d:
            return False
    return True


class _IndexRegistry:
    """Index arrays this backend's max_pool2d produced and knows to be in range, by
    device pointer (while the array lives): their backward needs no check, so it does
    not wait for the device. Any other indices are checked (one read back)."""

    def __init__(self):
        self._known: dict[int, tuple[int, int, Any]] = {}

    def remember(self, idx, plane: int) -> None:
        import weakref

        key = rt.device_pointer(idx)
        self._known[key] = (plane, idx.size, weakref.ref(idx, lambda _, k=key: self._drop(k)))

    def _drop(self, key: int) -> None:
        self._known.pop(key, None)

    def valid(self, idx, plane: int) -> bool:
        found = self._known.get(rt.device_pointer(idx))
        return found is not None and found[:2] == (plane, idx.size) and found[2]() is not None


_valid_indices = _IndexRegistry()


def max_pool2d_backward(grad_output, indices, input_size):
    """Scatter-add of grad_output to ``indices``; raises ValueError on an index outside
    [0, H*W), checked on the device before anything is written (and skipped, with its
    wait for the device, for indices this backend's max_pool2d made valid)."""
    stream, (grad_output, indices) = _prepare(grad_output, indices)
    n, c, h, w = (int(v) for v in input_size)
    plane = h * w
    count = grad_output.size
    if count and not _valid_indices.valid(indices, plane):
        lohi = rt.to_device(np.array([_INT64_MAX, _INT64_MIN], dtype=np.int64), stream)
        grid, block = rt.launch_1d(count)
        _pool.max_pool2d_check_kernel()[grid, block, stream](rt.flat(indices), lohi, count, plane)
        low, high = (int(v) for v in rt.sync_to_host(lohi, stream))
        if high != _INT64_MIN:
            raise ValueError(
                f"indices must lie in [0, {plane}) (flat positions in an input plane of size "
                f"{(h, w)}), got out-of-range values in [{low}, {high}]"
            )
    gin = rt.zeros((n, c, h, w), grad_output.dtype, stream)
    if count:
        out_plane = grad_output.shape[2] * grad_output.shape[3]
        grid, block = rt.launch_1d(count)
        _pool.max_pool2d_bwd_kernel(gin.dtype)[grid, block, stream](
            rt.flat(grad_output), rt.flat(indices), rt.flat(gin), count, out_plane, plane
        )
    return gin


def avg_pool2d(x, window, out_hw, count_include_pad, divisor_override):
    """Average pooling; ``divisor_override`` 0 means none."""
    stream, (x,) = _prepare(x)
    n, c, h, w = x.shape
    oh, ow = out_hw
    out = rt.empty((n, c, oh, ow), x.dtype, stream)
    if out.size:
        grid, block = rt.launch_1d(out.size)
        _pool.avg_pool2d_fwd_kernel(x.dtype)[grid, block, stream](
            rt.flat(x),
            rt.flat(out),
            n * c,
            h,
            w,
            oh,
            ow,
            *_pool_ints(window),
            int(bool(count_include_pad)),
            int(divisor_override),
        )
    return out


def avg_pool2d_backward(grad_output, input_size, window, count_include_pad, divisor_override):
    """Gradient of avg_pool2d wrt its input (a gather: no atomics)."""
    stream, (grad_output,) = _prepare(grad_output)
    n, c, h, w = (int(v) for v in input_size)
    _, _, oh, ow = grad_output.shape
    gin = rt.empty((n, c, h, w), grad_output.dtype, stream)
    if gin.size:
        if oh * ow == 0:
            rt.fill(gin, 0, stream)
            return gin
        grid, block = rt.launch_1d(gin.size)
        _pool.avg_pool2d_bwd_kernel(gin.dtype)[grid, block, stream](
            rt.flat(grad_output),
            rt.flat(gin),
            n * c,
            h,
            w,
            oh,
            ow,
            *_pool_ints(window),
            int(bool(count_include_pad)),
            int(divisor_override),
        )
    return gin


# --------------------------------------------------------------------------- GEMM


def _matrix(x, stream):
    """(contiguous matrix, transposed?): a column-major view is used as its transpose."""
    if x.size == 0 or rt.is_contiguous(x):
        return x, False
    if rt.is_contiguous(x.T):
        return x.T, True
    return rt.contiguous_copy(x, stream), False


def _writable(c) -> bool:
    cai = getattr(c, "__cuda_array_interface__", None)
    return not (cai is not None and cai.get("data", (0, False))[1])


def gemm(a, b, c, alpha, beta, trans_a, trans_b):
    """alpha * op(a) @ op(b) + beta * c; into ``c`` (returned) when c is writable."""
    views = [rt.as_device(a), rt.as_device(b), None if c is None else rt.as_device(c)]
    stream = rt.pick_stream(*views)
    da, flip_a = _matrix(views[0], stream)
    db, flip_b = _matrix(views[1], stream)
    ta, tb = bool(trans_a) != flip_a, bool(trans_b) != flip_b
    m, k = (da.shape[1], da.shape[0]) if ta else da.shape
    n = db.shape[0] if tb else db.shape[1]
    dc = views[2]
    if c is None or beta == 0:
        beta = 0.0
    if dc is not None and _writable(c):
        if rt.is_contiguous(dc):
            target, write_back = dc, False
        else:
            target = rt.contiguous_copy(dc, stream) if beta else rt.empty((m, n), da.dtype, stream)
            write_back = True
    elif beta:
        target, write_back = rt.contiguous_copy(dc, stream), False  # read-only c: a new array
    else:
        target, write_back = rt.empty((m, n), da.dtype, stream), False
    if m * n:
        tile = _tiles.pick_tile(m, n, rt.sm_count(), itemsize=da.dtype.itemsize)
        _gemm.launch_gemm(tile, da, db, target, m, n, k, alpha, beta, ta, tb, stream)
    if write_back:
        rt.copy_into_strided(target, dc, stream)
    return c if dc is not None and _writable(c) else target


def broadcast_rows(bias, rows):
    """A new (rows, len(bias)) device array with ``bias`` in every row (linear's C)."""
    stream, (bias,) = _prepare(bias)
    return rt.broadcast_rows(bias, int(rows), stream)
