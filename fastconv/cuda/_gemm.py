"""SGEMM / DGEMM: C = alpha * op(A) @ op(B) + beta * C, 2-D block tiling.

Kernel ``gemm-{tile}-{nn,nt,tn,tt}-{f32,f64}``: one thread block per ``BM x BN`` tile of
C (see ``_tiles``), the tiles enumerated on a 1-D grid (no 65535 limit on M). A and B
are C-contiguous (passed flat); the transposes are compile-time flags that choose, per
operand, the load order that reads global memory along its contiguous axis. The A tile
is stored transposed (``As[k, m]``) so the inner product reads rows of both tiles.
``beta == 0`` skips the read of C (NaN in C does not propagate), the BLAS rule.

The main loop (``_gen.emit_main_loop``) is double-buffered: the next slice is read
from global memory into registers while the current one is multiplied from shared
memory, then stored into the other buffer, one barrier per step.
"""

from __future__ import annotations

import numpy as np
from numba import types

from . import _gen
from . import _runtime as rt
from ._tiles import TileConfig


def emit_gemm(cfg: TileConfig, dtype, trans_a: bool, trans_b: bool) -> str:
    dt = np.dtype(dtype).name
    nt, bk = cfg.threads, cfg.bk
    la, lb = cfg.bm * bk // nt, cfg.bn * bk // nt
    src = _gen.Source()
    with src.block("def gemm(A, B, C, M, N, K, alpha, beta):"):
        _gen.emit_shared_tiles(src, cfg, dt)
        src(
            "tid = cuda.threadIdx.x",
            f"row0 = cuda.blockIdx.y * {cfg.bm}",
            f"col0 = cuda.blockIdx.x * {cfg.bn}",
        )
        _gen.emit_thread_bases(src, cfg)
        # Each thread keeps one index along each operand's contiguous axis. Rows of A
        # past M and columns of B past N are clamped to the last one: they only feed
        # outputs that are never stored, so their loads need no guard. The reduction's
        # tail is guarded (zeros), in the one step that reaches past K.
        if trans_a:  # A is (K, M): threads walk M
            step_rows = nt // cfg.bm
            src(
                f"a_m = tid % {cfg.bm}",
                f"a_k = tid // {cfg.bm}",
                "a_ptr = a_k * M + min(row0 + a_m, M - 1)",
                f"a_rows = {step_rows} * M",
                f"a_step = {bk} * M",
                f"a_s = a_k * {cfg.bm + _gen.PAD} + a_m",
            )
            a_load = [
                (f"k0 + a_k < K - {t * step_rows}", f"A[uint64(a_ptr + {t} * a_rows)]")
                for t in range(la)
            ]
            a_store = [f"{t * step_rows * (cfg.bm + _gen.PAD)}" for t in range(la)]
        else:  # A is (M, K): threads walk K
            step_rows = nt // bk
            src(
                f"a_k = tid % {bk}",
                f"a_m = tid // {bk}",
                "a_ptr = (row0 + a_m) * K + a_k",
                f"a_rows = {step_rows} * K",
                "a_last = (M - 1 - row0 - a_m) * K",
                f"a_step = {bk}",
                f"a_s = a_k * {cfg.bm + _gen.PAD} + a_m",
            )
            a_load = [
                ("k0 + a_k < K", f"A[uint64(a_ptr + min({t} * a_rows, a_last))]") for t in range(la)
            ]
            a_store = [f"{t * step_rows}" for t in range(la)]
        if trans_b:  # B is (N, K): threads walk K
            step_cols = nt // bk
            src(
                f"b_k = tid % {bk}",
                f"b_n = tid // {bk}",
                "b_ptr = (col0 + b_n) * K + b_k",
                f"b_cols = {step_cols} * K",
                "b_last = (N - 1 - col0 - b_n) * K",
                f"b_step = {bk}",
                f"b_s = b_k * {cfg.bn + _gen.PAD} + b_n",
            )
            b_load = [
                ("k0 + b_k < K", f"B[uint64(b_ptr + min({t} * b_cols, b_last))]") for t in range(lb)
            ]
            b_store = [f"{t * step_cols}" for t in range(lb)]
        else:  # B is (K, N): threads walk N
            step_rows = nt // cfg.bn
            src(
                f"b_n = tid % {cfg.bn}",
                f"b_k = tid // {cfg.bn}",
                "b_ptr = b_k * N + min(col0 + b_n, N - 1)",
                f"b_cols = {step_rows} * N",
                f"b_step = {bk} * N",
                f"b_s = b_k * {cfg.bn + _gen.PAD} + b_n",
            )
            b_load = [
                (f"k0 + b_k < K - {t * step_rows}", f"B[uint64(b_ptr + {t} * b_cols)]")
                for t in range(lb)
            ]
            b_store = [f"{t * step_rows * (cfg.bn + _gen.PAD)}" for t in range(lb)]

        def load(src):
            _gen.emit_guarded_loads(src, "va", a_load, dt)
            _gen.emit_guarded_loads(src, "vb", b_load, dt)
            src("a_ptr += a_step", "b_ptr += b_step", f"k0 += {bk}")

        src("k0 = 0", f"steps = (K + {bk - 1}) // {bk}")
        _gen.emit_main_loop(src, cfg, dt, load, a_store, b_store)
        rows, cols = _gen.owned(cfg)
        for j, col in enumerate(cols):
            src(f"cn{j} = col0 + {col}", f"cok{j} = cn{j} < N")
        for i, row in enumerate(rows):
            src(f"r = row0 + {row}")
            with src.block("if r < M:"):
                src("rN = r * N")
                for j in range(cfg.tn):
                    with src.block(f"if cok{j}:"):
                        src(f"v = alpha * c{i}_{j}")
                        with src.block("if beta != 0:"):
                            src(f"v += beta * C[rN + cn{j}]")
                        src(f"C[rN + cn{j}] = v")
    return src.text()


def gemm_kernel(cfg: TileConfig, dtype, trans_a: bool, trans_b: bool):
    def build():
        dt = rt.nb(dtype)
        sig = types.void(
            rt.c_array(dtype), rt.c_array(dtype), rt.c_array(dtype), *([types.int64] * 3), dt, dt
        )
        text = emit_gemm(cfg, dtype, trans_a, trans_b)
        fn = _gen.load("gemm", text).gemm
        return rt.KernelSource(fn, sig, _gen.launch_bounds(cfg, dtype))

    key = ("gemm", cfg.name, "t" if trans_a else "n", "t" if trans_b else "n", np.dtype(dtype).str)
    return rt.kernel(key, build)


def launch_gemm(
    cfg: TileConfig,
    a,
    b,
    c,
    m: int,
    n: int,
    k: int,
    alpha: float,
    beta: float,
    trans_a: bool,
    trans_b: bool,
    stream,
) -> None:
    """C (contiguous, M x N) = alpha op(a) op(b) + beta C, with contiguous a and b.

    Column tiles on grid x, row tiles on grid y; past the grid's 65535 rows of tiles,
    one launch per band of rows (A's and C's rows offset by views).
    """
    band = rt.MAX_GRID_Y * cfg.bm
    if trans_a and m > band:  # a band of A^T's columns would need A's row stride
        a, trans_a = rt.contiguous_copy(a.T, stream), False
    kernel = gemm_kernel(cfg, c.dtype, trans_a, trans_b)
    fa, fb, fc = rt.flat(a), rt.flat(b), rt.flat(c)
    for r0 in range(0, m, band):
        rows = min(band, m - r0)
        a_view = fa[r0 * k :] if r0 else fa
        grid = (rt.cdiv(n, cfg.bn), rt.cdiv(rows, cfg.bm))
        kernel[grid, cfg.threads, stream](a_view, fb, fc[r0 * n :], rows, n, k, alpha, beta)
