"""Pooling kernels: one thread per output (forward) or per input pixel (avg backward).

Consecutive threads handle consecutive outputs of a row, so stores are coalesced and
loads are (for stride 1) too. Planes (N*C) are flattened; arrays are passed flat.

* ``max_pool2d_fwd``: PyTorch's CPU rule, as ``fastconv.reference``: the window is
  scanned row-major from -inf and an element is taken when ``v > best or isnan(v)``;
  the index starts at the first in-bounds (h0, w0) of the window.
* ``max_pool2d_check``: flags any index outside [0, H*W) (atomics only on a bad index,
  so the common case is a plain streaming read); the host reads the flag once.
* ``max_pool2d_bwd``: scatter-add with atomics (indices may repeat across windows).
* ``avg_pool2d_fwd`` / ``avg_pool2d_bwd``: PyTorch's divisor rule; the backward is a
  gather over the windows that contain the pixel: no atomics, deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, types

from . import _runtime as rt

I64 = types.int64
NEG_INF = -math.inf


def max_pool2d_fwd_kernel(dtype):
    def build():
        SC = np.dtype(dtype).type
        sig = types.void(rt.c_array(dtype), rt.c_array(dtype), rt.c_array(np.int64), *([I64] * 13))

        @rt.source(sig)
        def max_pool2d_fwd(x, out, idx, planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw):
            i = cuda.grid(1)
            OHW = OH * OW
            if i < planes * OHW:
                plane = i // OHW
                p = i - plane * OHW
                oh = p // OW
                hs = oh * sh - ph
                ws = (p - oh * OW) * sw - pw
                h0 = hs
                while h0 < 0:
                    h0 += dh
                w0 = ws
                while w0 < 0:
                    w0 += dw
                best = SC(NEG_INF)
                bidx = h0 * W + w0
                base = plane * H * W
                for r in range(kh):
                    h = hs + r * dh
                    if h >= 0 and h < H:
                        for s in range(kw):
                            w = ws + s * dw
                            if w >= 0 and w < W:
                                v = x[base + h * W + w]
                                if v > best or math.isnan(v):
                                    best = v
                                    bidx = h * W + w
                out[i] = best
                idx[i] = bidx

        return max_pool2d_fwd

    return rt.kernel(("max_pool2d_fwd", np.dtype(dtype).str), build)


def max_pool2d_check_kernel():
    def build():
        @rt.source(types.void(rt.c_array(np.int64), rt.c_array(np.int64), I64, I64))
        def max_pool2d_check(idx, lohi, n, plane):
            i = cuda.grid(1)
            if i < n:
                v = idx[i]
                if v < 0 or v >= plane:
                    cuda.atomic.min(lohi, 0, v)
                    cuda.atomic.max(lohi, 1, v)

        return max_pool2d_check

    return rt.kernel(("max_pool2d_check",), build)


def max_pool2d_bwd_kernel(dtype):
    def build():
        sig = types.void(rt.c_array(dtype), rt.c_array(np.int64), rt.c_array(dtype), I64, I64, I64)

        @rt.source(sig)
        def max_pool2d_bwd(gout, idx, gin, n, out_plane, in_plane):
            i = cuda.grid(1)
            if i < n:
                v = idx[i]
                if v >= 0 and v < in_plane:  # validated before launch; never write outside
                    cuda.atomic.add(gin, (i // out_plane) * in_plane + v, gout[i])

        return max_pool2d_bwd

    return rt.kernel(("max_pool2d_bwd", np.dtype(dtype).str), build)


def avg_pool2d_fwd_kernel(dtype):
    def build():
        SC = np.dtype(dtype).type
        sig = types.void(rt.c_array(dtype), rt.c_array(dtype), *([I64] * 13))

        @rt.source(sig)
        def avg_pool2d_fwd(
            x, out, planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw, count_include_pad, divisor
        ):
            i = cuda.grid(1)
            OHW = OH * OW
            if i < planes * OHW:
                plane = i // OHW
                p = i - plane * OHW
                oh = p // OW
                hs = oh * sh - ph
                ws = (p - oh * OW) * sw - pw
                he = min(hs + kh, H + ph)
                we = min(ws + kw, W + pw)
                h0 = max(hs, 0)
                w0 = max(ws, 0)
                h1 = min(he, H)
                w1 = min(we, W)
                total = SC(0)
                if h1 > h0 and w1 > w0:
                    base = plane * H * W
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            total += x[base + h * W + w]
                    if divisor != 0:
                        d = divisor
                    elif count_include_pad:
                        d = (he - hs) * (we - ws)
                    else:
                        d = (h1 - h0) * (w1 - w0)
                    total = total / SC(d)
                out[i] = total

        return avg_pool2d_fwd

    return rt.kernel(("avg_pool2d_fwd", np.dtype(dtype).str), build)


def avg_pool2d_bwd_kernel(dtype):
    def build():
        SC = np.dtype(dtype).type
        sig = types.void(rt.c_array(dtype), rt.c_array(dtype), *([I64] * 13))

        @rt.source(sig)
        def avg_pool2d_bwd(
            gout, gin, planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw, count_include_pad, divisor
        ):
            i = cuda.grid(1)
            HW = H * W
            if i < planes * HW:
                plane = i // HW
                p = i - plane * HW
                h = p // W
                w = p - h * W
                # windows oh with oh*sh - ph <= h < oh*sh - ph + kh
                oh0 = max((h + ph - kh) // sh + 1, 0)
                oh1 = min((h + ph) // sh + 1, OH)
                ow0 = max((w + pw - kw) // sw + 1, 0)
                ow1 = min((w + pw) // sw + 1, OW)
                total = SC(0)
                base = plane * OH * OW
                for oh in range(oh0, oh1):
                    hs = oh * sh - ph
                    he = min(hs + kh, H + ph)
                    nh = min(he, H) - max(hs, 0)
                    for ow in range(ow0, ow1):
                        ws = ow * sw - pw
                        we = min(ws + kw, W + pw)
                        if divisor != 0:
                            d = divisor
                        elif count_include_pad:
                            d = (he - hs) * (we - ws)
                        else:
                            d = nh * (min(we, W) - max(ws, 0))
                        total += gout[base + oh * OW + ow] / SC(d)
                gin[i] = total

        return avg_pool2d_bwd

    return rt.kernel(("avg_pool2d_bwd", np.dtype(dtype).str), build)
