"""Convolution kernels: implicit GEMM (forward and both gradients) and direct kernels.

All arrays are C-contiguous and passed flat (1-D); indices are computed explicitly.
Notation: input (N, C, H, W), weight (K, Cg, R, S), output (N, K, OH, OW), G groups,
Cg = C/G, Kg = K/G, strides sh/sw, top/left padding pt/pl, dilations dh/dw.

Implicit GEMM (no im2col is ever materialised: the B tile is gathered from the image
straight into shared memory), per group g on grid axis y:

* ``conv2d_fwd``:  out[g] (Kg x N*OH*OW) = W[g] (Kg x Cg*R*S) @ im2col(x)[g];
  B column = one output pixel (n, oh, ow), B row = one (c, r, s) tap.
* ``conv2d_dgrad``: grad_input (Cg x N*H*W per group) = W[g]^T @ "col(grad_output)".
  The input pixels are split into the sh*sw stride phases (h mod sh, w mod sw): in one
  phase only the taps r with (h + pt - r*dh) divisible by sh contribute, so each phase
  is a dense GEMM over its own taps (r0, r0 + step, ...) and no FLOP is spent on the
  zeros a strided convolution's transpose would otherwise multiply.
* ``conv2d_wgrad``: grad_weight (Kg x Cg*R*S) = grad_output[g] (Kg x N*OH*OW) @ im2col(x)^T.
  The reduction (N*OH*OW) is long and the output small, so it is split (split-K over
  grid axis y): each split writes its partial tile to a workspace and a second kernel
  sums the splits in a fixed order: deterministic, no atomics.

Direct kernels, for groups with few channels (depthwise, LeNet) where a GEMM tile
would be mostly padding: one thread per output (forward) or per input pixel (dgrad),
and one block per weight element with a shared-memory tree reduction (wgrad).
"""

from __future__ import annotations

import numpy as np
from numba import cuda, types

from . import _runtime as rt
from ._tiles import SMEM_PAD, TileConfig, mma_step

I64 = types.int64

#: Threads of the one-block-per-weight reduction kernel (a power of two).
REDUCE_THREADS = 16 if rt.SIMULATOR else 256


def _geometry_sig(n_arrays: int, dtype, n_ints: int):
    return types.void(*([rt.c_array(dtype)] * n_arrays), *([I64] * n_ints))


# --------------------------------------------------------------------------- forward


def conv2d_fwd_kernel(cfg: TileConfig, dtype):
    def build():
        BM, BN, BK, TM, TN = cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn
        NT = cfg.threads
        RY, RX = BM // TM, BN // TN
        LA, LB = BM * BK // NT, BN * BK // NT
        BSTEP = NT // BN
        A_SHAPE, B_SHAPE = (BK, BM + SMEM_PAD), (BK, BN + SMEM_PAD)  # compile-time
        DT = rt.nb(dtype)
        TMN = TM * TN
        SC = np.dtype(dtype).type
        mma = mma_step(cfg)

        @rt.source(_geometry_sig(4, dtype, 17))
        def conv2d_fwd(
            x, w, bias, out, N, C, H, W, K, OH, OW, R, S, sh, sw, pt, pl, dh, dw, groups, has_bias
        ):
            As = cuda.shared.array(A_SHAPE, DT)
            Bs = cuda.shared.array(B_SHAPE, DT)
            acc = cuda.local.array(TMN, DT)
            ra = cuda.local.array(TM, DT)
            rb = cuda.local.array(TN, DT)
            cofs = cuda.local.array(TN, types.int64)
            Cg = C // groups
            Kg = K // groups
            RS = R * S
            CRS = Cg * RS
            OHW = OH * OW
            HW = H * W
            NPIX = N * OHW
            g = cuda.blockIdx.y
            n_tiles = (NPIX + BN - 1) // BN
            bm = cuda.blockIdx.x // n_tiles
            m0 = bm * BM
            n0 = (cuda.blockIdx.x - bm * n_tiles) * BN
            tid = cuda.threadIdx.x
            ty = tid // RX
            tx = tid - ty * RX
            # The B column this thread loads is the same at every step: decode it once.
            bcol = tid % BN
            brow = tid // BN
            col = n0 + bcol
            col_ok = col < NPIX
            ni = col // OHW
            p = col - ni * OHW
            oh = p // OW
            ih0 = oh * sh - pt
            iw0 = (p - oh * OW) * sw - pl
            xbase = (ni * C + g * Cg) * HW
            wbase = g * Kg * CRS
            for i in range(TM * TN):
                acc[i] = 0
            for k0 in range(0, CRS, BK):
                for t in range(LA):
                    e = tid + t * NT
                    am = e // BK
                    ak = e - am * BK
                    gm = m0 + am
                    q = k0 + ak
                    v = SC(0)
                    if gm < Kg and q < CRS:
                        v = w[wbase + gm * CRS + q]
                    As[ak, am] = v
                for t in range(LB):
                    kk = brow + t * BSTEP
                    q = k0 + kk
                    v = SC(0)
                    if col_ok and q < CRS:
                        c = q // RS
                        rs = q - c * RS
                        r = rs // S
                        ih = ih0 + r * dh
                        iw = iw0 + (rs - r * S) * dw
                        if ih >= 0 and ih < H and iw >= 0 and iw < W:
                            v = x[xbase + c * HW + ih * W + iw]
                    Bs[kk, bcol] = v
                cuda.syncthreads()
                mma(As, Bs, acc, ra, rb, ty, tx)
                cuda.syncthreads()
            for j in range(TN):  # output offset of each owned column (-1: past the end)
                col = n0 + tx + j * RX
                cofs[j] = -1
                if col < NPIX:
                    ni = col // OHW
                    cofs[j] = ni * K * OHW + col - ni * OHW
            for i in range(TM):
                m = m0 + ty + i * RY
                if m < Kg:
                    k = g * Kg + m
                    b = bias[k] if has_bias else SC(0)
                    for j in range(TN):
                        if cofs[j] >= 0:
                            out[cofs[j] + k * OHW] = acc[i * TN + j] + b

        return conv2d_fwd

    return rt.kernel(("conv2d_fwd", cfg.name, np.dtype(dtype).str), build)


def conv2d_fwd_direct_kernel(dtype):
    def build():
        SC = np.dtype(dtype).type

        @rt.source(_geometry_sig(4, dtype, 17))
        def conv2d_fwd_direct(
            x, w, bias, out, N, C, H, W, K, OH, OW, R, S, sh, sw, pt, pl, dh, dw, groups, has_bias
        ):
            i = cuda.grid(1)
            OHW = OH * OW
            if i < N * K * OHW:
                Cg = C // groups
                Kg = K // groups
                nk = i // OHW
                p = i - nk * OHW
                n = nk // K
                k = nk - n * K
                oh = p // OW
                ih0 = oh * sh - pt
                iw0 = (p - oh * OW) * sw - pl
                xb = (n * C + (k // Kg) * Cg) * H * W
                wb = k * Cg * R * S
                acc = SC(0)
                for c in range(Cg):
                    for r in range(R):
                        ih = ih0 + r * dh
                        if ih >= 0 and ih < H:
                            for s in range(S):
                                iw = iw0 + s * dw
                                if iw >= 0 and iw < W:
                                    acc += (
                                        x[xb + (c * H + ih) * W + iw] * w[wb + (c * R + r) * S + s]
                                    )
                if has_bias:
                    acc += bias[k]
                out[i] = acc

        return conv2d_fwd_direct

    return rt.kernel(("conv2d_fwd_direct", np.dtype(dtype).str), build)


# --------------------------------------------------------------------------- grad input


def conv2d_dgrad_kernel(cfg: TileConfig, dtype):
    def build():
        BM, BN, BK, TM, TN = cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn
        NT = cfg.threads
        RY, RX = BM // TM, BN // TN
        LA, LB = BM * BK // NT, BN * BK // NT
        BSTEP = NT // BN
        A_SHAPE, B_SHAPE = (BK, BM + SMEM_PAD), (BK, BN + SMEM_PAD)  # compile-time
        DT = rt.nb(dtype)
        TMN = TM * TN
        SC = np.dtype(dtype).type
        mma = mma_step(cfg)

        @rt.source(_geometry_sig(3, dtype, 16))
        def conv2d_dgrad(gout, w, gin, N, C, H, W, K, OH, OW, R, S, sh, sw, pt, pl, dh, dw, groups):
            As = cuda.shared.array(A_SHAPE, DT)
            Bs = cuda.shared.array(B_SHAPE, DT)
            acc = cuda.local.array(TMN, DT)
            ra = cuda.local.array(TM, DT)
            rb = cuda.local.array(TN, DT)
            Cg = C // groups
            Kg = K // groups
            OHW = OH * OW
            HW = H * W
            n_phases = sh * sw
            g = cuda.blockIdx.y // n_phases
            phase = cuda.blockIdx.y - g * n_phases
            a = phase // sw  # this block's input pixels: h = a + hh*sh, w = b + ww*sw
            b = phase - a * sw
            Hc = (H - a + sh - 1) // sh
            Wc = (W - b + sw - 1) // sw
            NPIX = N * Hc * Wc
            n_tiles = (N * ((H + sh - 1) // sh) * ((W + sw - 1) // sw) + BN - 1) // BN
            bm = cuda.blockIdx.x // n_tiles
            m0 = bm * BM
            n0 = (cuda.blockIdx.x - bm * n_tiles) * BN
            if n0 >= NPIX:  # this phase has fewer pixels than the largest one
                return
            # Taps of this phase: r = r0 + t*rstep for t < Rv (likewise s).
            r0 = -1
            for r in range(R):
                if r0 < 0 and (a + pt - r * dh) % sh == 0:
                    r0 = r
            rstep = 1
            while (rstep * dh) % sh != 0:
                rstep += 1
            Rv = 0 if r0 < 0 else (R - 1 - r0) // rstep + 1
            s0 = -1
            for s in range(S):
                if s0 < 0 and (b + pl - s * dw) % sw == 0:
                    s0 = s
            sstep = 1
            while (sstep * dw) % sw != 0:
                sstep += 1
            Sv = 0 if s0 < 0 else (S - 1 - s0) // sstep + 1
            RSv = Rv * Sv
            KQ = Kg * RSv
            tid = cuda.threadIdx.x
            ty = tid // RX
            tx = tid - ty * RX
            bcol = tid % BN
            brow = tid // BN
            col = n0 + bcol
            col_ok = col < NPIX
            HWc = Hc * Wc
            ni = col // HWc
            pc = col - ni * HWc
            hh = pc // Wc
            ti0 = a + hh * sh + pt  # i*sh = h + pt - r*dh
            tj0 = b + (pc - hh * Wc) * sw + pl
            gbase = (ni * K + g * Kg) * OHW
            for i in range(TM * TN):
                acc[i] = 0
            for k0 in range(0, KQ, BK):
                for t in range(LA):  # A[c, (k, r, s)] = w[g*Kg + k, c, r, s]
                    e = tid + t * NT
                    am = e // BK
                    ak = e - am * BK
                    c = m0 + am
                    q = k0 + ak
                    v = SC(0)
                    if c < Cg and q < KQ:
                        k = q // RSv
                        rem = q - k * RSv
                        ri = rem // Sv
                        r = r0 + ri * rstep
                        s = s0 + (rem - ri * Sv) * sstep
                        v = w[(((g * Kg + k) * Cg + c) * R + r) * S + s]
                    As[ak, am] = v
                for t in range(LB):  # B[(k, r, s), pixel] = grad_output[n, k, i, j]
                    kk = brow + t * BSTEP
                    q = k0 + kk
                    v = SC(0)
                    if col_ok and q < KQ:
                        k = q // RSv
                        rem = q - k * RSv
                        ri = rem // Sv
                        ti = ti0 - (r0 + ri * rstep) * dh
                        tj = tj0 - (s0 + (rem - ri * Sv) * sstep) * dw
                        if ti >= 0 and tj >= 0:
                            oi = ti // sh
                            oj = tj // sw
                            if oi < OH and oj < OW:
                                v = gout[gbase + k * OHW + oi * OW + oj]
                    Bs[kk, bcol] = v
                cuda.syncthreads()
                mma(As, Bs, acc, ra, rb, ty, tx)
                cuda.syncthreads()
            for j in range(TN):
                col = n0 + tx + j * RX
                if col < NPIX:
                    ni = col // HWc
                    pc = col - ni * HWc
                    hh = pc // Wc
                    pix = (a + hh * sh) * W + b + (pc - hh * Wc) * sw
                    for i in range(TM):
                        c = m0 + ty + i * RY
                        if c < Cg:
                            gin[(ni * C + g * Cg + c) * HW + pix] = acc[i * TN + j]

        return conv2d_dgrad

    return rt.kernel(("conv2d_dgrad", cfg.name, np.dtype(dtype).str), build)


def conv2d_dgrad_direct_kernel(dtype):
    def build():
        SC = np.dtype(dtype).type

        @rt.source(_geometry_sig(3, dtype, 16))
        def conv2d_dgrad_direct(
            gout, w, gin, N, C, H, W, K, OH, OW, R, S, sh, sw, pt, pl, dh, dw, groups
        ):
            idx = cuda.grid(1)
            HW = H * W
            if idx < N * C * HW:
                Cg = C // groups
                Kg = K // groups
                nc = idx // HW
                pix = idx - nc * HW
                n = nc // C
                c = nc - n * C
                g = c // Cg
                cl = c - g * Cg
                h = pix // W
                wq = pix - h * W
                acc = SC(0)
                for r in range(R):
                    ti = h + pt - r * dh
                    if ti >= 0 and ti % sh == 0 and ti // sh < OH:
                        oi = ti // sh
                        for s in range(S):
                            tj = wq + pl - s * dw
                            if tj >= 0 and tj % sw == 0 and tj // sw < OW:
                                oj = tj // sw
                                for k in range(g * Kg, (g + 1) * Kg):
                                    acc += (
                                        gout[((n * K + k) * OH + oi) * OW + oj]
                                        * w[((k * Cg + cl) * R + r) * S + s]
                                    )
                gin[idx] = acc

        return conv2d_dgrad_direct

    return rt.kernel(("conv2d_dgrad_direct", np.dtype(dtype).str), build)


# --------------------------------------------------------------------------- grad weight


def conv2d_wgrad_kernel(cfg: TileConfig, dtype):
    def build():
        BM, BN, BK, TM, TN = cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn
        NT = cfg.threads
        RY, RX = BM // TM, BN // TN
        LA, LB = BM * BK // NT, BN * BK // NT
        CSTEP = NT // BK
        A_SHAPE, B_SHAPE = (BK, BM + SMEM_PAD), (BK, BN + SMEM_PAD)  # compile-time
        DT = rt.nb(dtype)
        TMN = TM * TN
        SC = np.dtype(dtype).type
        mma = mma_step(cfg)

        @rt.source(_geometry_sig(3, dtype, 18))
        def conv2d_wgrad(
            x, gout, ws, N, C, H, W, K, OH, OW, R, S, sh, sw, pt, pl, dh, dw, groups, splits, chunk
        ):
            As = cuda.shared.array(A_SHAPE, DT)
            Bs = cuda.shared.array(B_SHAPE, DT)
            acc = cuda.local.array(TMN, DT)
            ra = cuda.local.array(TM, DT)
            rb = cuda.local.array(TN, DT)
            coff = cuda.local.array(LB, types.int64)  # per loaded column: c*H*W, r*dh, s*dw
            roff = cuda.local.array(LB, types.int64)
            soff = cuda.local.array(LB, types.int64)
            Cg = C // groups
            Kg = K // groups
            RS = R * S
            CRS = Cg * RS
            OHW = OH * OW
            HW = H * W
            NQ = N * OHW
            g = cuda.blockIdx.y // splits
            split = cuda.blockIdx.y - g * splits
            q_lo = split * chunk
            q_hi = min(q_lo + chunk, NQ)
            n_tiles = (CRS + BN - 1) // BN
            bm = cuda.blockIdx.x // n_tiles
            m0 = bm * BM
            n0 = (cuda.blockIdx.x - bm * n_tiles) * BN
            tid = cuda.threadIdx.x
            ty = tid // RX
            tx = tid - ty * RX
            kk = tid % BK  # every load of this thread is at reduction offset kk
            lrow = tid // BK
            for t in range(LB):
                col = n0 + lrow + t * CSTEP
                if col < CRS:
                    c = col // RS
                    rs = col - c * RS
                    r = rs // S
                    coff[t] = (g * Cg + c) * HW
                    roff[t] = r * dh
                    soff[t] = (rs - r * S) * dw
                else:
                    coff[t] = -1  # past the last column: never loaded
                    roff[t] = 0
                    soff[t] = 0
            for i in range(TM * TN):
                acc[i] = 0
            for k0 in range(q_lo, q_hi, BK):
                q = k0 + kk
                q_ok = q < q_hi
                n = q // OHW
                p = q - n * OHW
                oi = p // OW
                ih0 = oi * sh - pt
                iw0 = (p - oi * OW) * sw - pl
                gbase = (n * K + g * Kg) * OHW + p
                xbase = n * C * HW
                for t in range(LA):  # A[k, q] = grad_output[n, g*Kg + k, p]
                    m = lrow + t * CSTEP
                    v = SC(0)
                    if q_ok and m0 + m < Kg:
                        v = gout[gbase + (m0 + m) * OHW]
                    As[kk, m] = v
                for t in range(LB):  # B[q, (c, r, s)] = x[n, g*Cg + c, ih, iw]
                    ih = ih0 + roff[t]
                    iw = iw0 + soff[t]
                    v = SC(0)
                    if q_ok and coff[t] >= 0 and ih >= 0 and ih < H and iw >= 0 and iw < W:
                        v = x[xbase + coff[t] + ih * W + iw]
                    Bs[kk, lrow + t * CSTEP] = v
                cuda.syncthreads()
                mma(As, Bs, acc, ra, rb, ty, tx)
                cuda.syncthreads()
            obase = split * K * CRS
            for i in range(TM):
                m = m0 + ty + i * RY
                if m < Kg:
                    for j in range(TN):
                        col = n0 + tx + j * RX
                        if col < CRS:
                            ws[obase + (g * Kg + m) * CRS + col] = acc[i * TN + j]

        return conv2d_wgrad

    return rt.kernel(("conv2d_wgrad", cfg.name, np.dtype(dtype).str), build)


def conv2d_wgrad_direct_kernel(dtype):
    def build():
        SC = np.dtype(dtype).type
        DT = rt.nb(dtype)
        NT = REDUCE_THREADS

        @rt.source(_geometry_sig(3, dtype, 16))
        def conv2d_wgrad_direct(
            x, gout, gw, N, C, H, W, K, OH, OW, R, S, sh, sw, pt, pl, dh, dw, groups
        ):
            part = cuda.shared.array(NT, DT)
            widx = cuda.blockIdx.x  # one block per weight element (k, c, r, s)
            Cg = C // groups
            Kg = K // groups
            RS = R * S
            k = widx // (Cg * RS)
            rest = widx - k * (Cg * RS)
            c = rest // RS
            rs = rest - c * RS
            r = rs // S
            s = rs - r * S
            cin = (k // Kg) * Cg + c
            OHW = OH * OW
            HW = H * W
            tid = cuda.threadIdx.x
            acc = SC(0)
            for q in range(tid, N * OHW, NT):
                n = q // OHW
                p = q - n * OHW
                oi = p // OW
                ih = oi * sh - pt + r * dh
                iw = (p - oi * OW) * sw - pl + s * dw
                if ih >= 0 and ih < H and iw >= 0 and iw < W:
                    acc += gout[(n * K + k) * OHW + p] * x[(n * C + cin) * HW + ih * W + iw]
            part[tid] = acc
            cuda.syncthreads()
            half = NT // 2
            while half > 0:
                if tid < half:
                    part[tid] += part[tid + half]
                cuda.syncthreads()
                half //= 2
            if tid == 0:
                gw[widx] = part[0]

        return conv2d_wgrad_direct

    return rt.kernel(("conv2d_wgrad_direct", np.dtype(dtype).str), build)


# --------------------------------------------------------------------------- grad bias


def channel_sums_kernel(dtype):
    """part[split, k] = sum of grad_output[n, k, :, :] over this split's (n, pixel) range:
    one block per (channel, split), a strided loop then a shared-memory tree."""

    def build():
        SC = np.dtype(dtype).type
        DT = rt.nb(dtype)
        NT = REDUCE_THREADS

        @rt.source(types.void(rt.c_array(dtype), rt.c_array(dtype), I64, I64, I64, I64))
        def channel_sums(g, part, N, K, HW, chunk):
            acc_s = cuda.shared.array(NT, DT)
            k = cuda.blockIdx.x
            split = cuda.blockIdx.y
            tid = cuda.threadIdx.x
            lo = split * chunk
            hi = min(lo + chunk, N * HW)
            acc = SC(0)
            for q in range(lo + tid, hi, NT):
                n = q // HW
                acc += g[(n * K + k) * HW + q - n * HW]
            acc_s[tid] = acc
            cuda.syncthreads()
            half = NT // 2
            while half > 0:
                if tid < half:
                    acc_s[tid] += acc_s[tid + half]
                cuda.syncthreads()
                half //= 2
            if tid == 0:
                part[split * K + k] = acc_s[0]

        return channel_sums

    return rt.kernel(("channel_sums", np.dtype(dtype).str), build)
