"""gemm writes C and nothing else: C is a view into a larger buffer whose frame holds
NaN, and after the call the frame must hold the same NaN bits.

A micro-tile that writes a row or column past C's edge (an off-by-one in the edge tiles,
a partial tile merged with the full tile's width) lands in the frame here -- in the
next row of a contiguous C, or past the end of its buffer, it could go unnoticed or
corrupt the heap. Shapes leave a remainder for every micro-kernel's mr x nr tile, K
spans several blocks, C is written in place, at 1 and 3 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close_scaled

import fastconv
from fastconv.functional import _cpu_gemm

FRAME = 3  # rows and columns of frame on each side of C


def framed(m, n, dtype, rng):
    """A C of (m, n) inside a NaN frame; returns (C, the whole buffer)."""
    buffer = np.full((m + 2 * FRAME, n + 2 * FRAME), np.nan, dtype)
    c = buffer[FRAME:-FRAME, FRAME:-FRAME]
    c[...] = rng.integers(-3, 4, (m, n))
    return c, buffer


def assert_frame_untouched(buffer, what):
    inside = np.zeros(buffer.shape, bool)
    inside[FRAME:-FRAME, FRAME:-FRAME] = True
    frame = buffer[~inside]
    written = ~np.isnan(frame)
    assert not written.any(), f"{what}: {int(written.sum())} elements written outside C"


SHAPES = [(1, 1, 1), (5, 7, 3), (17, 33, 9), (31, 49, 700), (66, 23, 130), (9, 130, 257)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("beta", [0.0, -2.0])
def test_gemm_writes_only_inside_c(threads, dtype, beta):
    rng = np.random.default_rng(3)
    before = fastconv.get_num_threads()
    fastconv.set_num_threads(threads)
    try:
        for index, name in enumerate(fastconv._cpu.gemm_kernels(np.dtype(dtype).name)):
            for m, n, k in SHAPES:
                for trans_a, trans_b in ((False, False), (True, True)):
                    a = rng.integers(-3, 4, (k, m) if trans_a else (m, k)).astype(dtype)
                    b = rng.integers(-3, 4, (n, k) if trans_b else (k, n)).astype(dtype)
                    c, buffer = framed(m, n, dtype, rng)
                    want = 2.0 * ((a.T if trans_a else a) @ (b.T if trans_b else b))
                    want = want + beta * c.astype(np.float64)
                    what = f"{name} {m}x{n}x{k} trans={trans_a, trans_b} beta={beta}"
                    got = _cpu_gemm(a, b, c, 2.0, beta, trans_a, trans_b, index)
                    assert got is c, what
                    assert_frame_untouched(buffer, what)
                    assert_close_scaled(c, want, k + 1, err_msg=what)
    finally:
        fastconv.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("threads", [1, 3])
def test_c_aliasing_an_operand_over_several_blocks(threads, dtype):
    """gemm(a, b, a) and friends, with K over two 256-deep blocks: the kernel writes C
    after the first block and packs the second afterwards, so an aliased operand would be
    read half-overwritten. The result must be that of the inputs before the call."""
    rng = np.random.default_rng(5)
    n = 300
    before = fastconv.get_num_threads()
    fastconv.set_num_threads(threads)
    try:
        for trans_a, trans_b in ((False, False), (True, False), (False, True)):
            for what in ("c is a", "c is b", "c is a.T", "c is a shifted by a column"):
                a = rng.integers(-3, 4, (n, n)).astype(dtype)
                b = rng.integers(-3, 4, (n, n)).astype(dtype)
                c = {"c is a": a, "c is b": b, "c is a.T": a.T}.get(what)
                if c is None:  # A and C one column apart in one buffer
                    buffer = rng.integers(-3, 4, (n, n + 1)).astype(dtype)
                    a, c = buffer[:, :n], buffer[:, 1:]
                a0, b0, c0 = a.copy(), b.copy(), c.copy()
                want = 2.0 * ((a0.T if trans_a else a0) @ (b0.T if trans_b else b0)) - c0
                got = fastconv.gemm(a, b, c, alpha=2.0, beta=-1.0, trans_a=trans_a, trans_b=trans_b)
                assert got is c, what
                np.testing.assert_array_equal(c, want, err_msg=f"{what} {trans_a, trans_b}")
    finally:
        fastconv.set_num_threads(before)
