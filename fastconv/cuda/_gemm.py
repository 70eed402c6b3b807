"""SGEMM / DGEMM: C = alpha * op(A) @ op(B) + beta * C, 2-D block tiling.

Kernel ``gemm-{tile}-{nn,nt,tn,tt}-{f32,f64}``: one thread block per ``BM x BN`` tile of
C (see ``_tiles``), the tiles enumerated on a 1-D grid (no 65535 limit on M). A and B
are C-contiguous; the transposes are compile-time flags that choose, per operand, the
load order that reads global memory along its contiguous axis. The A tile is stored
transposed (``As[k, m]``) so the inner product reads it as a broadcast. ``beta == 0``
skips the read of C (NaN in C does not propagate), the BLAS rule.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, types

from . import _runtime as rt
from ._tiles import SMEM_PAD, TileConfig, mma_step


def gemm_kernel(cfg: TileConfig, dtype, trans_a: bool, trans_b: bool):
    def build():
        BM, BN, BK, TM, TN = cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn
        NT = cfg.threads
        RY, RX = BM // TM, BN // TN
        LA, LB = BM * BK // NT, BN * BK // NT
        A_SHAPE, B_SHAPE = (BK, BM + SMEM_PAD), (BK, BN + SMEM_PAD)  # compile-time
        DT = rt.nb(dtype)
        TMN = TM * TN
        SC = np.dtype(dtype).type
        TA, TB = bool(trans_a), bool(trans_b)
        mma = mma_step(cfg)
        mat = rt.c_array(dtype, 2)
        sig = types.void(mat, mat, mat, types.int64, types.int64, types.int64, DT, DT)

        @rt.source(sig)
        def gemm(A, B, C, M, N, K, alpha, beta):
            As = cuda.shared.array(A_SHAPE, DT)
            Bs = cuda.shared.array(B_SHAPE, DT)
            acc = cuda.local.array(TMN, DT)
            ra = cuda.local.array(TM, DT)
            rb = cuda.local.array(TN, DT)
            tid = cuda.threadIdx.x
            ty = tid // RX
            tx = tid - ty * RX
            n_tiles = (N + BN - 1) // BN
            bm = cuda.blockIdx.x // n_tiles
            row0 = bm * BM
            col0 = (cuda.blockIdx.x - bm * n_tiles) * BN
            for i in range(TM * TN):
                acc[i] = 0
            for k0 in range(0, K, BK):
                for t in range(LA):
                    e = tid + t * NT
                    if TA:  # A is (K, M): consecutive threads walk M
                        kk = e // BM
                        m = e - kk * BM
                    else:  # A is (M, K): consecutive threads walk K
                        m = e // BK
                        kk = e - m * BK
                    gm = row0 + m
                    gk = k0 + kk
                    v = SC(0)
                    if gm < M and gk < K:
                        v = A[gk, gm] if TA else A[gm, gk]
                    As[kk, m] = v
                for t in range(LB):
                    e = tid + t * NT
                    if TB:  # B is (N, K)
                        n = e // BK
                        kk = e - n * BK
                    else:  # B is (K, N)
                        kk = e // BN
                        n = e - kk * BN
                    gn = col0 + n
                    gk = k0 + kk
                    v = SC(0)
                    if gn < N and gk < K:
                        v = B[gn, gk] if TB else B[gk, gn]
                    Bs[kk, n] = v
                cuda.syncthreads()
                mma(As, Bs, acc, ra, rb, ty, tx)
                cuda.syncthreads()
            for i in range(TM):
                r = row0 + ty + i * RY
                if r < M:
                    for j in range(TN):
                        c = col0 + tx + j * RX
                        if c < N:
                            v = alpha * acc[i * TN + j]
                            if beta != 0:
                                v += beta * C[r, c]
                            C[r, c] = v

        return gemm

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
    """C (contiguous, M x N) = alpha op(a) op(b) + beta C, with contiguous a and b."""
    blocks = rt.cdiv(m, cfg.bm) * rt.cdiv(n, cfg.bn)
    gemm_kernel(cfg, c.dtype, trans_a, trans_b)[blocks, cfg.threads, stream](
        a, b, c, m, n, k, alpha, beta
    )
