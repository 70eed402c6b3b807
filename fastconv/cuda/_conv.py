"""Convolution kernels: implicit GEMM (forward and both gradients) and direct kernels.

All arrays are C-contiguous and passed flat (1-D); indices are computed explicitly.
Notation: input (N, C, H, W), weight (K, Cg, R, S), output (N, K, OH, OW), G groups,
Cg = C/G, Kg = K/G, strides sh/sw, top/left padding pt/pl, dilations dh/dw.

Implicit GEMM (no im2col is ever materialised: the B tile is gathered from the image
straight into shared memory), per group g on grid axis z:

* ``conv2d_fwd``:  out[g] (Kg x N*OH*OW) = W[g] (Kg x Cg*R*S) @ im2col(x)[g];
  B column = one output pixel (n, oh, ow), B row = one (c, r, s) tap.
* ``conv2d_dgrad``: grad_input (Cg x N*H*W per group) = W[g]^T @ "col(grad_output)".
  The input pixels are split into the sh*sw stride phases (h mod sh, w mod sw): in one
  phase only the taps r with (h + pt - r*dh) divisible by sh contribute, so each phase
  is a dense GEMM over its own taps (r0, r0 + step, ...) and no FLOP is spent on the
  zeros a strided convolution's transpose would otherwise multiply.
* ``conv2d_wgrad``: grad_weight (Kg x Cg*R*S) = grad_output[g] (Kg x N*OH*OW) @ im2col(x)^T.
  The reduction (N*OH*OW) is long and the output small, so it is split (split-K over
  grid axis z): each split writes its partial tile to a workspace and a second kernel
  sums the splits in a fixed order: deterministic, no atomics.

Direct kernels, for groups with few channels (depthwise, LeNet) where a GEMM tile
would be mostly padding: one thread per output (forward) or per input pixel (dgrad),
and one block per weight element with a shared-memory tree reduction (wgrad).
"""

from __future__ import annotations

import numpy as np
from numba import cuda, types

from . import _gen
from . import _runtime as rt
from ._gen import PAD, Counter, Source
from ._tiles import TileConfig

I64 = types.int64

#: Threads of the one-block-per-weight reduction kernel (a power of two).
REDUCE_THREADS = 16 if rt.SIMULATOR else 256


def _geometry_sig(n_arrays: int, dtype, n_ints: int, index=I64):
    return types.void(*([rt.c_array(dtype)] * n_arrays), *([index] * n_ints))


#: Elements a tensor may have for the 32-bit index variants of the GEMM-shaped kernels.
INT32_LIMIT = 2**31


def index_type(*arrays) -> str:
    """ "int32" when every array has fewer than 2**31 elements, else "int64"."""
    return "int32" if max(a.size for a in arrays) < INT32_LIMIT else "int64"


# --------------------------------------------------------------------------- forward


def emit_conv2d_fwd(cfg: TileConfig, dtype) -> str:
    """out[g] (Kg x N*OH*OW) = W[g] (Kg x Cg*R*S) @ im2col(x)[g], gathered per slice.

    Grid: pixel tiles on x, output-channel tiles on y, groups on z. Each thread loads
    one B column (an output pixel, decoded once) at rows ``b_r + t * BSTEP``; the tap
    (c, r, s) of each row is a counter advanced with carries (no division in the loop).
    Weight rows past Kg and pixels past the end are clamped (their outputs are never
    stored); the taps past Cg*R*S and the padding give zeros.
    """
    dt = np.dtype(dtype).name
    nt, bk, bm, bn = cfg.threads, cfg.bk, cfg.bm, cfg.bn
    la, lb = bm * bk // nt, bn * bk // nt
    a_step, b_step = nt // bk, nt // bn
    src = Source()
    args = "x, w, bias, out, N, C, H, W, K, OH, OW, R, S, sh, sw, pt, pl, dh, dw, groups, has_bias"
    with src.block(f"def conv2d_fwd({args}):"):
        _gen.emit_shared_tiles(src, cfg, dt)
        src(
            "tid = cuda.threadIdx.x",
            "Cg = C // groups",
            "Kg = K // groups",
            "RS = R * S",
            "CRS = Cg * RS",
            "OHW = OH * OW",
            "HW = H * W",
            "NPIX = N * OHW",
            "g = cuda.blockIdx.z",
            f"m0 = cuda.blockIdx.y * {bm}",
            f"n0 = cuda.blockIdx.x * {bn}",
        )
        _gen.emit_thread_bases(src, cfg)
        src(
            f"a_k = tid % {bk}",
            f"a_m = tid // {bk}",
            "a_ptr = (g * Kg + m0 + a_m) * CRS + a_k",
            f"a_rows = {a_step} * CRS",
            "a_last = (Kg - 1 - m0 - a_m) * CRS",
            f"a_s = a_k * {bm + PAD} + a_m",
            f"b_n = tid % {bn}",
            f"b_r = tid // {bn}",
            "col = min(n0 + b_n, NPIX - 1)",
            "ni = col // OHW",
            "p = col - ni * OHW",
            "oh = p // OW",
            f"b_s = b_r * {bn + PAD} + b_n",
        )
        taps = Counter(
            "b",
            ["R", "S"],
            {
                "ih": ("oh * sh - pt", ["0", "dh", "0"]),
                "iw": ("(p - oh * OW) * sw - pl", ["0", "0", "dw"]),
                "xo": ("(ni * C + g * Cg) * HW", ["HW", "0", "0"]),
            },
        )
        taps.emit_init(src, "b_r", str(b_step))
        for t in range(la):
            src(f"a_off{t} = min({t} * a_rows, a_last)")

        def load(src):
            # bounds as differences, so that the int32 variant compares in 32 bits
            src("kin = CRS - k0")
            for t in range(la):
                src(f"va{t} = w[uint64(a_ptr + a_off{t})] if a_k < kin else {dt}(0)")
            for t in range(lb):
                src(
                    f"kt = kin - {t * b_step}",
                    f"vb{t} = x[uint64(b_xo + b_ih * W + b_iw)] if (b_r < kt)"
                    f" & (b_ih >= 0) & (b_ih < H) & (b_iw >= 0) & (b_iw < W) else {dt}(0)",
                )
                taps.emit_advance(src)
            src(f"a_ptr += {bk}", f"k0 += {bk}")

        src("k0 = 0", f"steps = (CRS + {bk - 1}) // {bk}")
        _gen.emit_main_loop(
            src,
            cfg,
            dt,
            load,
            [str(t * a_step) for t in range(la)],
            [str(t * b_step * (bn + PAD)) for t in range(lb)],
        )
        rows, cols = _gen.owned(cfg)
        for j, col in enumerate(cols):
            # out[n, k, p] = out[n*(K-1)*OHW + column + k*OHW] for column = n*OHW + p
            src(
                f"cn = n0 + {col}",
                f"cok{j} = cn < NPIX",
                f"co{j} = (cn // OHW) * (K - 1) * OHW + cn",
            )
        for i, row in enumerate(rows):
            src(f"m = m0 + {row}")
            with src.block("if m < Kg:"):
                src("k = g * Kg + m", f"bv = bias[k] if has_bias else {dt}(0)", "ko = k * OHW")
                for j in range(cfg.tn):
                    with src.block(f"if cok{j}:"):
                        src(f"out[uint64(co{j} + ko)] = c{i}_{j} + bv")
    return src.text()


def conv2d_fwd_kernel(cfg: TileConfig, dtype, index: str = "int32"):
    """The kernel for ``cfg`` and ``dtype``, its index arithmetic in ``index``."""

    def build():
        text = _gen.narrow(emit_conv2d_fwd(cfg, dtype), index)
        fn = _gen.load("conv2d_fwd", text).conv2d_fwd
        sig = _geometry_sig(4, dtype, 17, getattr(types, index))
        return rt.KernelSource(fn, sig, _gen.launch_bounds(cfg, dtype, "conv2d_fwd", index))

    return rt.kernel(("conv2d_fwd", cfg.name, np.dtype(dtype).str, index), build)


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


def emit_conv2d_dgrad(cfg: TileConfig, dtype) -> str:
    """grad_input[g] (Cg x pixels of one stride phase) = W[g]^T @ col(grad_output).

    Grid: pixel tiles on x, input-channel tiles on y, (group, stride phase) on z. In
    phase (a, b) only the taps r = r0 + i*rstep (s likewise) reach a pixel, and output
    row oi = hh + oi0 - i*dri for the pixel's row hh in the phase: exact, no division
    in the loop. Both operands' reduction index (k, i, j) is a counter with carries.
    """
    dt = np.dtype(dtype).name
    nt, bk, bm, bn = cfg.threads, cfg.bk, cfg.bm, cfg.bn
    la, lb = bm * bk // nt, bn * bk // nt
    a_step, b_step = nt // bk, nt // bn
    src = Source()
    args = "gout, w, gin, N, C, H, W, K, OH, OW, R, S, sh, sw, pt, pl, dh, dw, groups"
    with src.block(f"def conv2d_dgrad({args}):"):
        _gen.emit_shared_tiles(src, cfg, dt)
        src(
            "tid = cuda.threadIdx.x",
            "Cg = C // groups",
            "Kg = K // groups",
            "RS = R * S",
            "OHW = OH * OW",
            "HW = H * W",
            "n_phases = sh * sw",
            "g = cuda.blockIdx.z // n_phases",
            "phase = cuda.blockIdx.z - g * n_phases",
            "a = phase // sw",  # this block's input pixels: h = a + hh*sh, w = b + ww*sw
            "b = phase - a * sw",
            "Hc = (H - a + sh - 1) // sh",
            "Wc = (W - b + sw - 1) // sw",
            "HWc = Hc * Wc",
            "NPIX = N * HWc",
            f"m0 = cuda.blockIdx.y * {bm}",
            f"n0 = cuda.blockIdx.x * {bn}",
        )
        with src.block("if n0 >= NPIX:"):  # this phase has fewer pixels than the largest
            src("return")
        src("r0 = -1")
        src("for r in range(R):")
        with src.block("    if r0 < 0 and (a + pt - r * dh) % sh == 0:"):
            src("    r0 = r")
        src("rstep = 1")
        with src.block("while (rstep * dh) % sh != 0:"):
            src("rstep += 1")
        src("Rv = 0 if r0 < 0 else (R - 1 - r0) // rstep + 1", "s0 = -1")
        src("for s in range(S):")
        with src.block("    if s0 < 0 and (b + pl - s * dw) % sw == 0:"):
            src("    s0 = s")
        src("sstep = 1")
        with src.block("while (sstep * dw) % sw != 0:"):
            src("sstep += 1")
        src(
            "Sv = 0 if s0 < 0 else (S - 1 - s0) // sstep + 1",
            "KQ = Kg * Rv * Sv",
            # radices of the counters (a phase without taps has KQ = 0 and loads nothing)
            "Rv1 = max(Rv, 1)",
            "Sv1 = max(Sv, 1)",
            "oi0 = (a + pt - r0 * dh) // sh",  # exact: r0 is the phase's first tap
            "dri = rstep * dh // sh",
            "oj0 = (b + pl - s0 * dw) // sw",
            "dsj = sstep * dw // sw",
        )
        _gen.emit_thread_bases(src, cfg)
        src(
            f"a_k = tid % {bk}",
            f"a_m = tid // {bk}",
            "a_c = (m0 + a_m) * RS",
            f"a_cstep = {a_step} * RS",
            "a_clast = (Cg - 1 - m0 - a_m) * RS",
            f"a_s = a_k * {bm + PAD} + a_m",
            f"b_n = tid % {bn}",
            f"b_r = tid // {bn}",
            "col = min(n0 + b_n, NPIX - 1)",
            "ni = col // HWc",
            "pc = col - ni * HWc",
            "hh = pc // Wc",
            f"b_s = b_r * {bn + PAD} + b_n",
        )
        a_taps = Counter(
            "a",
            ["Rv1", "Sv1"],
            {"wq": ("(g * Kg * Cg) * RS + r0 * S + s0", ["Cg * RS", "rstep * S", "sstep"])},
        )
        a_taps.emit_init(src, "a_k", str(bk))
        b_taps = Counter(
            "b",
            ["Rv1", "Sv1"],
            {
                "oi": ("hh + oi0", ["0", "-dri", "0"]),
                "oj": ("pc - hh * Wc + oj0", ["0", "0", "-dsj"]),
                "go": ("(ni * K + g * Kg) * OHW", ["OHW", "0", "0"]),
            },
        )
        b_taps.emit_init(src, "b_r", str(b_step))
        for t in range(la):
            src(f"a_off{t} = a_c + min({t} * a_cstep, a_clast)")

        def load(src):
            src("kin = KQ - k0")
            for t in range(la):
                src(f"va{t} = w[uint64(a_wq + a_off{t})] if a_k < kin else {dt}(0)")
            a_taps.emit_advance(src)
            for t in range(lb):
                src(
                    f"kt = kin - {t * b_step}",
                    f"vb{t} = gout[uint64(b_go + b_oi * OW + b_oj)] if (b_r < kt) "
                    f"& (b_oi >= 0) & (b_oi < OH) & (b_oj >= 0) & (b_oj < OW) else {dt}(0)",
                )
                b_taps.emit_advance(src)
            src(f"k0 += {bk}")

        src("k0 = 0", f"steps = (KQ + {bk - 1}) // {bk}")
        _gen.emit_main_loop(
            src,
            cfg,
            dt,
            load,
            [str(t * a_step) for t in range(la)],
            [str(t * b_step * (bn + PAD)) for t in range(lb)],
        )
        rows, cols = _gen.owned(cfg)
        for j, col in enumerate(cols):
            src(f"cn = n0 + {col}", f"cok{j} = cn < NPIX")
            with src.block(f"if cok{j}:"):
                src(
                    "nj = cn // HWc",
                    "pj = cn - nj * HWc",
                    "hj = pj // Wc",
                    f"go{j} = (nj * C + g * Cg) * HW + (a + hj * sh) * W + b + (pj - hj * Wc) * sw",
                )
        for i, row in enumerate(rows):
            src(f"c = m0 + {row}")
            with src.block("if c < Cg:"):
                src("co = c * HW")
                for j in range(cfg.tn):
                    with src.block(f"if cok{j}:"):
                        src(f"gin[uint64(go{j} + co)] = c{i}_{j}")
    return src.text()


def conv2d_dgrad_kernel(cfg: TileConfig, dtype, index: str = "int32"):
    """The kernel for ``cfg`` and ``dtype``, its index arithmetic in ``index``."""

    def build():
        text = _gen.narrow(emit_conv2d_dgrad(cfg, dtype), index)
        fn = _gen.load("conv2d_dgrad", text).conv2d_dgrad
        sig = _geometry_sig(3, dtype, 16, getattr(types, index))
        return rt.KernelSource(fn, sig, _gen.launch_bounds(cfg, dtype, "conv2d_dgrad", index))

    return rt.kernel(("conv2d_dgrad", cfg.name, np.dtype(dtype).str, index), build)


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


def emit_conv2d_wgrad(cfg: TileConfig, dtype) -> str:
    """grad_weight[g] (Kg x Cg*R*S) = grad_output[g] (Kg x N*OH*OW) @ im2col(x)^T, over
    this split's pixel range.

    Grid: (c, r, s) column tiles on x, output-channel tiles on y, (group, split) on z.
    Every thread loads at one reduction offset (a pixel, a counter advanced with
    carries); the image offset and tap of each of the block's columns come from
    tables in shared memory, filled once.
    """
    dt = np.dtype(dtype).name
    nt, bk, bm, bn = cfg.threads, cfg.bk, cfg.bm, cfg.bn
    la, lb = bm * bk // nt, bn * bk // nt
    cstep = nt // bk
    src = Source()
    args = "x, gout, ws, N, C, H, W, K, OH, OW, R, S, sh, sw, pt, pl, dh, dw, groups, splits, chunk"
    with src.block(f"def conv2d_wgrad({args}):"):
        _gen.emit_shared_tiles(src, cfg, dt)
        src(
            f"xtab = cuda.shared.array({bn}, int64)",
            f"rtab = cuda.shared.array({bn}, int64)",
            f"stab = cuda.shared.array({bn}, int64)",
            "tid = cuda.threadIdx.x",
            "Cg = C // groups",
            "Kg = K // groups",
            "RS = R * S",
            "CRS = Cg * RS",
            "OHW = OH * OW",
            "HW = H * W",
            "NQ = N * OHW",
            "g = cuda.blockIdx.z // splits",
            "split = cuda.blockIdx.z - g * splits",
            "q_lo = split * chunk",
            "q_hi = min(q_lo + chunk, NQ)",
            f"m0 = cuda.blockIdx.y * {bm}",
            f"n0 = cuda.blockIdx.x * {bn}",
        )
        # columns past the end are clamped to the last (their outputs are never stored)
        with src.block(f"for cl in range(tid, {bn}, {nt}):"):
            src(
                "col = min(n0 + cl, CRS - 1)",
                "c = col // RS",
                "rs = col - c * RS",
                "r = rs // S",
                "rtab[cl] = r * dh",
                "stab[cl] = (rs - r * S) * dw",
                "xtab[cl] = (g * Cg + c) * HW + r * dh * W + (rs - r * S) * dw",
            )
        src("cuda.syncthreads()")
        _gen.emit_thread_bases(src, cfg)
        src(
            f"kk = tid % {bk}",
            f"lrow = tid // {bk}",
            "a_m = m0 + lrow",
            "a_ptr = (g * Kg + a_m) * OHW",
            f"a_mstep = {cstep} * OHW",
            "a_mlast = (Kg - 1 - a_m) * OHW",
            f"a_s = kk * {bm + PAD} + lrow",
            f"b_s = kk * {bn + PAD} + lrow",
            "Xt = xtab[lrow:]",
            "Rt = rtab[lrow:]",
            "St = stab[lrow:]",
        )
        pixels = Counter(
            "q",
            ["OH", "OW"],
            {
                "go": ("0", ["K * OHW", "OW", "1"]),
                "xo": ("-pt * W - pl", ["C * HW", "sh * W", "sw"]),
            },
        )
        pixels.emit_init(src, "q_lo + kk", str(bk))
        for t in range(la):
            src(f"a_off{t} = a_ptr + min({t} * a_mstep, a_mlast)")

        def load(src):
            # hz is 0 (k0 < 2**31) but unknown to the compiler: the table reads stay in
            # the loop instead of being hoisted into 3*LB registers
            src(
                "qin = q_hi - k0",
                "q_ok = kk < qin",
                "hz = k0 >> 62",
                "q_ih = q_d1 * sh - pt",  # the pixel's window corner, from its row and column
                "q_iw = q_d2 * sw - pl",
            )
            for t in range(la):
                src(f"va{t} = gout[uint64(q_go + a_off{t})] if q_ok else {dt}(0)")
            for t in range(lb):
                o = t * cstep
                src(
                    f"ih = q_ih + Rt[hz + {o}]",
                    f"iw = q_iw + St[hz + {o}]",
                    f"vb{t} = x[uint64(q_xo + Xt[hz + {o}])] if q_ok & (ih >= 0) & (ih < H) "
                    f"& (iw >= 0) & (iw < W) else {dt}(0)",
                )
            pixels.emit_advance(src)
            src(f"k0 += {bk}")

        src("k0 = q_lo", f"steps = (q_hi - q_lo + {bk - 1}) // {bk}")
        offsets = [str(t * cstep) for t in range(max(la, lb))]
        _gen.emit_main_loop(src, cfg, dt, load, offsets[:la], offsets[:lb])
        rows, cols = _gen.owned(cfg)
        src("obase = split * K * CRS")
        for j, col in enumerate(cols):
            src(f"cn{j} = n0 + {col}", f"cok{j} = cn{j} < CRS")
        for i, row in enumerate(rows):
            src(f"m = m0 + {row}")
            with src.block("if m < Kg:"):
                src("mo = obase + (g * Kg + m) * CRS")
                for j in range(cfg.tn):
                    with src.block(f"if cok{j}:"):
                        src(f"ws[uint64(mo + cn{j})] = c{i}_{j}")
    return src.text()


def conv2d_wgrad_kernel(cfg: TileConfig, dtype, index: str = "int32"):
    """The kernel for ``cfg`` and ``dtype``, its index arithmetic in ``index``."""

    def build():
        text = _gen.narrow(emit_conv2d_wgrad(cfg, dtype), index)
        fn = _gen.load("conv2d_wgrad", text).conv2d_wgrad
        sig = _geometry_sig(3, dtype, 18, getattr(types, index))
        return rt.KernelSource(fn, sig, _gen.launch_bounds(cfg, dtype, "conv2d_wgrad", index))

    return rt.kernel(("conv2d_wgrad", cfg.name, np.dtype(dtype).str, index), build)


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
