"""The CPU GEMM: fastconv.gemm / matmul / linear and every registered micro-kernel.

Every micro-kernel usable on this CPU (``fastconv._cpu.gemm_kernels(dtype)``: the portable
one and, where CPUID allows, the AVX2+FMA one) is run on its own through
``fastconv.functional._cpu_gemm(..., kernel_index)``, as XNNPACK tests every kernel of its
registry; the public ``fastconv.gemm`` runs the dispatched one.

Accuracy: results are compared with float64 NumPy on the same inputs, with the tolerance
``c * K * eps * max|ref|`` of ``helpers.assert_close_scaled`` (K the reduction length; K + 1
when beta * C adds one more term). Integer-valued inputs make every summation order exact,
so those cases are compared bit for bit: they catch indexing, packing and edge-tile errors
that a tolerance could hide.

Determinism (gemm.h): each C element is reduced over K in the same order
whatever the thread count, so results are bit-identical across repeated runs and between 1
and 2 threads.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import assert_close_scaled

import fastconv
from fastconv.functional import _cpu_gemm

DTYPES = [np.float32, np.float64]
TRANS = [(False, False), (False, True), (True, False), (True, True)]


def kernels(dtype) -> list[str]:
    return list(fastconv._cpu.gemm_kernels(np.dtype(dtype).name))


def kernel_params():
    """(dtype, kernel index) for every registered kernel, with readable ids."""
    return [
        pytest.param(dt, i, id=f"{np.dtype(dt).name}-{name}")
        for dt in DTYPES
        for i, name in enumerate(kernels(dt))
    ]


def operands(rng, m, n, k, dtype, trans_a=False, trans_b=False, ints=False):
    """a, b such that op(a) is m x k and op(b) is k x n (C-contiguous storage)."""
    a_shape = (k, m) if trans_a else (m, k)
    b_shape = (n, k) if trans_b else (k, n)
    if ints:
        a = rng.integers(-4, 5, a_shape)
        b = rng.integers(-4, 5, b_shape)
    else:
        a = rng.standard_normal(a_shape)
        b = rng.standard_normal(b_shape)
    return a.astype(dtype), b.astype(dtype)


def expected(a, b, c=None, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """alpha * op(a) @ op(b) + beta * c in float64 (c is not read when beta == 0)."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    out = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    if c is not None and beta != 0:
        out = out + beta * np.asarray(c, dtype=np.float64)
    return out


def red_len(k, beta):
    return k + (1 if beta != 0 else 0)


def run_kernel(index, a, b, c=None, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    return _cpu_gemm(a, b, c, float(alpha), float(beta), trans_a, trans_b, index)


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_kernel_registry(dtype):
    names = kernels(dtype)
    assert names, "no GEMM micro-kernel registered"
    assert len(set(names)) == len(names), names
    prefix = "f32-gemm-" if dtype == np.float32 else "f64-gemm-"
    assert all(name.startswith(prefix) for name in names), names
    assert "portable" in names[0], f"the portable kernel must fill the first slot: {names}"
    # One kernel per ISA tier the CPU runs, in tier order.
    tiers = {"baseline": ["portable"], "avx2+fma": ["portable", "avx2"]}
    tiers["avx512f"] = tiers["avx2+fma"] + ["avx512"]
    expected = tiers[fastconv._cpu.isa()]
    assert len(names) == len(expected), names
    assert all(tier in name for tier, name in zip(expected, names)), names


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dispatch_runs_the_last_registered_kernel(dtype):
    """gemm_kernels lists kernels in dispatch order: the default path is the last one."""
    rng = np.random.default_rng(1)
    a, b = operands(rng, 37, 41, 300, dtype)
    last = len(kernels(dtype)) - 1
    assert fastconv.gemm(a, b).tobytes() == run_kernel(last, a, b).tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_unknown_kernel_index_is_refused(dtype):
    a = np.ones((2, 2), dtype)
    with pytest.raises(ValueError, match="no such gemm kernel"):
        run_kernel(len(kernels(dtype)), a, a)
    with pytest.raises(ValueError, match="no such gemm kernel"):
        run_kernel(-2, a, a)


# --------------------------------------------------------------------------- random shapes


def _random_shapes(seed=2024, count=26, max_macs=6_000_000):
    rng = np.random.default_rng(seed)

    def dim():
        u = rng.random()
        if u < 0.45:
            return int(rng.integers(1, 41))
        if u < 0.85:
            return int(rng.integers(41, 201))
        return int(rng.integers(201, 601))

    shapes = []
    while len(shapes) < count:
        m, n, k = dim(), dim(), dim()
        if m * n * k <= max_macs:
            shapes.append((m, n, k))
    return shapes


# Sizes at the micro-tile edges (6x8 / 6x16 / 12x32 f32, 6x4 / 6x8 / 12x16 f64), cache-block
# edges (KC 256; MC 144 and 960; NC 3072 and 1536), primes, ones; narrow C (n a poor multiple
# of the kernel's columns), which runs as C^T = B^T A^T through a staging buffer.
EDGE_SHAPES = [
    (1, 1, 1),
    (1, 1, 600),
    (600, 1, 1),
    (1, 600, 1),
    (1, 599, 2),
    (599, 1, 3),
    (2, 3, 5),
    (6, 16, 1),
    (5, 15, 7),
    (7, 17, 3),
    (4, 8, 256),
    (12, 32, 257),
    (13, 33, 255),
    (97, 89, 83),
    (31, 577, 7),
    (577, 31, 11),
    (127, 131, 509),
    (7, 3100, 21),  # N above one NC panel (3072 f32, 1536 f64)
    (150, 13, 600),  # M above one MC block, K in 3 blocks
    (1000, 64, 30),  # M above one AVX-512 MC block
    (500, 49, 300),  # narrow C: transposed
    (300, 17, 700),  # narrow C, K in 3 blocks
]
SHAPES = EDGE_SHAPES + _random_shapes()


@pytest.mark.parametrize("case", range(len(SHAPES)), ids=lambda i: "x".join(map(str, SHAPES[i])))
def test_random_shapes_every_kernel(case):
    """Random sizes 1..600 (primes, ones, tile edges) through every kernel, both dtypes.

    The transpose combination, alpha and beta rotate with the case; beta == 0 cases get a
    NaN-filled C, which must not leak.
    """
    m, n, k = SHAPES[case]
    trans_a, trans_b = TRANS[case % 4]
    alpha = [1.0, -0.75, 2.5][case % 3]
    beta = [0.0, 1.0, -0.5, 0.0, 0.25][case % 5]
    rng = np.random.default_rng(case)
    for dtype in DTYPES:
        a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
        if beta == 0:
            c0 = np.full((m, n), np.nan, dtype)
        else:
            c0 = rng.standard_normal((m, n)).astype(dtype)
        want = expected(a, b, c0, alpha, beta, trans_a, trans_b)
        for index, name in enumerate(kernels(dtype)):
            c = c0.copy()
            got = run_kernel(index, a, b, c, alpha, beta, trans_a, trans_b)
            assert got is c
            assert got.dtype == dtype
            assert_close_scaled(
                got,
                want,
                red_len(k, beta),
                err_msg=f"{name} m,n,k={m},{n},{k} trans={trans_a, trans_b} "
                f"alpha={alpha} beta={beta}",
            )
        got = fastconv.gemm(a, b, alpha=alpha, trans_a=trans_a, trans_b=trans_b)
        assert got.dtype == dtype
        assert got.shape == (m, n)
        assert_close_scaled(got, expected(a, b, None, alpha, 0.0, trans_a, trans_b), k)


EXACT_SHAPES = [
    (1, 1, 1),
    (6, 16, 1),
    (7, 17, 257),
    (61, 53, 600),
    (5, 300, 513),
    (300, 5, 40),
    (149, 97, 256),
    (18, 48, 96),
]


@pytest.mark.parametrize(("dtype", "index"), kernel_params())
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS)
def test_integer_inputs_are_exact_every_kernel(dtype, index, trans_a, trans_b, threads):
    """Integer-valued operands: every summation order is exact, so compare bit for bit."""
    rng = np.random.default_rng(7)
    for m, n, k in EXACT_SHAPES:
        a, b = operands(rng, m, n, k, dtype, trans_a, trans_b, ints=True)
        c = rng.integers(-9, 10, (m, n)).astype(dtype)
        want_c = expected(a, b, c, 2.0, -3.0, trans_a, trans_b)
        want = expected(a, b, None, 1.0, 0.0, trans_a, trans_b)
        # 2 threads where the library splits the work (it runs small products on one)
        for nthreads in (1, 2) if m * n * k >= 500_000 else (1,):
            threads(nthreads)
            got = run_kernel(index, a, b, c.copy(), 2.0, -3.0, trans_a, trans_b)
            np.testing.assert_array_equal(got, want_c, err_msg=f"{m}x{n}x{k} threads={nthreads}")
            got = run_kernel(index, a, b, None, 1.0, 0.0, trans_a, trans_b)
            np.testing.assert_array_equal(got, want, err_msg=f"{m}x{n}x{k} threads={nthreads}")


# --------------------------------------------------------------------------- alpha, beta, C


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("alpha", [1.0, 0.0, -1.0, 0.3, 4.0])
@pytest.mark.parametrize("beta", [0.0, 1.0, -1.0, 0.5, -2.25])
def test_alpha_beta(dtype, alpha, beta):
    rng = np.random.default_rng(11)
    m, n, k = 29, 35, 270
    a, b = operands(rng, m, n, k, dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    if beta == 0.0:
        c0[::3] = np.nan
        c0[1::3] = np.inf
    want = expected(a, b, c0, alpha, beta)
    for index, name in enumerate(kernels(dtype)):
        c = c0.copy()
        got = run_kernel(index, a, b, c, alpha, beta)
        assert got is c
        assert_close_scaled(got, want, red_len(k, beta), err_msg=name)
    c = c0.copy()
    got = fastconv.gemm(a, b, c, alpha=alpha, beta=beta)
    assert got is c
    assert_close_scaled(got, want, red_len(k, beta))


NAN_SHAPES = [(1, 1, 1), (5, 7, 3), (6, 16, 300), (13, 37, 600), (64, 64, 64), (71, 3, 257)]


@pytest.mark.parametrize(("dtype", "index"), kernel_params())
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_beta_zero_does_not_read_nan_in_c(dtype, index, layout, threads):
    """beta == 0: C is write-only, NaN/inf in it never propagate (edge tiles, several K
    blocks, a C that is not row-contiguous)."""
    rng = np.random.default_rng(3)
    for nthreads in (1, 2):
        threads(nthreads)
        for m, n, k in NAN_SHAPES:
            a, b = operands(rng, m, n, k, dtype)
            if layout == "C":
                parent = np.full((m, n), np.nan, dtype)
                c = parent
            elif layout == "F":
                parent = np.full((n, m), np.nan, dtype)
                c = parent.T
            else:
                parent = np.full((2 * m, 3 * n), np.nan, dtype)
                c = parent[::2, ::3]
            parent[..., ::2] = np.inf
            got = run_kernel(index, a, b, c, 1.5, 0.0)
            assert got is c
            assert_close_scaled(
                got,
                expected(a, b, None, 1.5),
                k,
                err_msg=f"{m}x{n}x{k} {layout} threads={nthreads}",
            )
            if layout == "strided":  # elements outside the view are left alone
                mask = np.ones(parent.shape, bool)
                mask[::2, ::3] = False
                assert not np.isfinite(parent[mask]).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_in_place_into_c(dtype, beta):
    rng = np.random.default_rng(5)
    m, n, k = 23, 40, 19
    a, b = operands(rng, m, n, k, dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    want = expected(a, b, c, 0.5, beta)
    got = fastconv.gemm(a, b, c, alpha=0.5, beta=beta)
    assert got is c
    assert_close_scaled(c, want, red_len(k, beta))
    # A writable non-contiguous view is written in place too, and nothing around it.
    parent = rng.standard_normal((2 * m + 1, 3 * n)).astype(dtype)
    before = parent.copy()
    view = parent[1::2, ::-3]
    want = expected(a, b, view, 0.5, beta)
    got = fastconv.gemm(a, b, view, alpha=0.5, beta=beta)
    assert got is view
    assert_close_scaled(view, want, red_len(k, beta))
    untouched = np.ones(parent.shape, bool)
    untouched[1::2, ::-3] = False
    np.testing.assert_array_equal(parent[untouched], before[untouched])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_read_only_c_gives_a_new_array(dtype, beta):
    rng = np.random.default_rng(6)
    m, n, k = 17, 9, 33
    a, b = operands(rng, m, n, k, dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    c.flags.writeable = False
    before = c.copy()
    got = fastconv.gemm(a, b, c, beta=beta)
    assert got is not c
    assert got.dtype == dtype
    assert got.shape == (m, n)
    np.testing.assert_array_equal(c, before)
    assert_close_scaled(got, expected(a, b, c, 1.0, beta), red_len(k, beta))
    # a broadcast (zero-stride, read-only) C
    row = rng.standard_normal(n).astype(dtype)
    cb = np.broadcast_to(row, (m, n))
    got = fastconv.gemm(a, b, cb, beta=beta)
    assert got is not cb
    np.testing.assert_array_equal(cb, np.broadcast_to(row, (m, n)))
    assert_close_scaled(got, expected(a, b, cb, 1.0, beta), red_len(k, beta))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS)
def test_c_overlapping_an_operand(dtype, beta, trans_a, trans_b):
    """gemm(a, b, a), gemm(a, a, a), gemm(a, b, b), a C that shares memory with A
    partially: the result is computed from the inputs as they were before the call."""
    rng = np.random.default_rng(8)
    n = 45
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    k = n

    def check(x, y, c, what):
        want = expected(x.copy(), y.copy(), c.copy(), 1.25, beta, trans_a, trans_b)
        got = fastconv.gemm(x, y, c, alpha=1.25, beta=beta, trans_a=trans_a, trans_b=trans_b)
        assert got is c, what
        assert_close_scaled(c, want, red_len(k, beta), err_msg=what)

    x = a.copy()
    check(x, b, x, "gemm(a, b, a)")
    x = a.copy()
    check(x, x, x, "gemm(a, a, a)")
    y = b.copy()
    check(a, y, y, "gemm(a, b, b)")
    x = a.copy()
    check(x, b, x.T, "gemm(a, b, a.T)")
    # C shifted one column against A inside the same buffer
    buf = rng.standard_normal((n, n + 1)).astype(dtype)
    check(buf[:, :n], b, buf[:, 1:], "C = A shifted by one column")


def _unaligned(x):
    """A copy of x whose data pointer is not aligned to its itemsize (writable)."""
    raw = bytearray(x.nbytes + 1)
    out = np.frombuffer(raw, dtype=x.dtype, count=x.size, offset=1).reshape(x.shape)
    out[...] = x
    return out


def _odd_strides(x):
    """A view of x's values whose strides are not a multiple of the itemsize."""
    rec = np.zeros(x.shape, dtype=[("v", x.dtype), ("pad", "u1")])
    rec["v"] = x
    view = rec["v"]
    assert any(s % x.itemsize for s in view.strides)
    return view


LAYOUTS = {
    "contiguous": lambda x: x,
    "fortran": np.asfortranarray,
    "every_2nd_3rd": lambda x: np.repeat(np.repeat(x, 2, 0), 3, 1)[::2, ::3],
    "transposed_view": lambda x: np.ascontiguousarray(x.T).T,
    "negative_rows": lambda x: np.ascontiguousarray(x[::-1])[::-1],
    "negative_both": lambda x: np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1],
    "negative_step2": lambda x: np.repeat(np.ascontiguousarray(x[:, ::-1]), 2, 1)[:, ::-2],
    "unaligned": _unaligned,
    "odd_strides": _odd_strides,
}


@pytest.mark.parametrize(("dtype", "index"), kernel_params())
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_strided_operands_every_kernel(dtype, index, layout):
    """Any strides, for A, B and C (written in place), with and without transposes."""
    rng = np.random.default_rng(9)
    make = LAYOUTS[layout]
    for (m, n, k), (trans_a, trans_b) in zip(
        [(19, 37, 41), (64, 33, 300), (7, 70, 17), (40, 16, 6)], TRANS
    ):
        a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        va, vb, vc = make(a), make(b), make(c0)
        np.testing.assert_array_equal(va, a)
        np.testing.assert_array_equal(vb, b)
        want = expected(a, b, c0, -1.5, 0.75, trans_a, trans_b)
        got = run_kernel(index, va, vb, vc, -1.5, 0.75, trans_a, trans_b)
        assert got is vc
        assert_close_scaled(got, want, k + 1, err_msg=f"{layout} {m}x{n}x{k} {trans_a, trans_b}")
        got = fastconv.gemm(va, vb, trans_a=trans_a, trans_b=trans_b)
        assert_close_scaled(
            got,
            expected(a, b, None, 1.0, 0.0, trans_a, trans_b),
            k,
            err_msg=f"{layout} public gemm",
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mixed_layouts_and_views(dtype):
    rng = np.random.default_rng(10)
    big = rng.standard_normal((200, 300)).astype(dtype)
    cases = [
        (big[::2, ::3], big[5:105, 1:51]),  # (100, 100) @ (100, 50)
        (big[10:60, :150:3].T, big[::-4, ::7][:50]),  # (50, 50) @ (50, 43)
        (big[:1, :77], big[:77, 3:4]),  # row @ column
        (big[:, 7][:, None], big[9, ::2][None, :]),  # outer product, K = 1
    ]
    for a, b in cases:
        got = fastconv.gemm(a, b)
        assert_close_scaled(got, expected(a, b), a.shape[1])
        # b.T @ a.T == (a @ b).T, from the same views with both transpose flags set
        got = fastconv.gemm(b, a, trans_a=True, trans_b=True)
        assert_close_scaled(got, expected(a, b).T, a.shape[1])


# --------------------------------------------------------------------------- threads


DETERMINISM_SHAPES = [
    (160, 160, 160),
    (600, 24, 300),
    (24, 600, 300),
    (97, 301, 520),
    (6, 2000, 40),
]


@pytest.mark.parametrize(("dtype", "index"), kernel_params())
def test_bit_identical_across_runs_and_thread_counts(dtype, index, threads):
    """Each C element's K-reduction order does not depend on the thread count."""
    rng = np.random.default_rng(12)
    for m, n, k in DETERMINISM_SHAPES:
        a, b = operands(rng, m, n, k, dtype)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        results = []
        for nthreads in (1, 2, 1, 2):
            threads(nthreads)
            results.append(run_kernel(index, a, b, c0.copy(), 0.7, 0.3).tobytes())
            results.append(run_kernel(index, a, b).tobytes())
        assert all(r == results[0] for r in results[0::2]), f"{m}x{n}x{k} (beta != 0)"
        assert all(r == results[1] for r in results[1::2]), f"{m}x{n}x{k}"
        assert_close_scaled(np.frombuffer(results[1], dtype).reshape(m, n), expected(a, b), k)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_two_threads_are_accurate(dtype, threads):
    threads(2)
    rng = np.random.default_rng(13)
    for m, n, k in [(256, 256, 256), (512, 64, 129), (33, 700, 200)]:
        for trans_a, trans_b in TRANS:
            a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
            got = fastconv.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
            assert_close_scaled(got, expected(a, b, None, 1.0, 0.0, trans_a, trans_b), k)


def test_concurrent_calls_from_python_threads():
    """Kernels release the GIL and are safe to call from several Python threads at once."""
    rng = np.random.default_rng(14)
    problems = [operands(rng, 120 + i, 90 - i, 150 + 3 * i, np.float32) for i in range(6)]
    want = [fastconv.gemm(a, b) for a, b in problems]
    errors = []

    def work(i):
        try:
            for _ in range(5):
                a, b = problems[i]
                if fastconv.gemm(a, b).tobytes() != want[i].tobytes():
                    errors.append(i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(problems))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors


# --------------------------------------------------------------------------- empty


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    ("m", "n", "k"), [(0, 5, 3), (4, 0, 3), (4, 5, 0), (0, 0, 0), (0, 3, 0), (1, 1, 0)]
)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS)
def test_zero_size_dimensions(dtype, m, n, k, trans_a, trans_b):
    a = np.ones((k, m) if trans_a else (m, k), dtype)
    b = np.ones((n, k) if trans_b else (k, n), dtype)
    got = fastconv.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    assert got.shape == (m, n)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, np.zeros((m, n)))
    # beta == 0: C becomes zeros even if it held NaN
    c = np.full((m, n), np.nan, dtype)
    got = fastconv.gemm(a, b, c, alpha=3.0, beta=0.0, trans_a=trans_a, trans_b=trans_b)
    assert got is c
    np.testing.assert_array_equal(c, np.zeros((m, n)))
    # beta != 0: C becomes beta * C
    c = np.arange(m * n, dtype=dtype).reshape(m, n) - 2
    want = 2.5 * c
    got = fastconv.gemm(a, b, c, alpha=3.0, beta=2.5, trans_a=trans_a, trans_b=trans_b)
    assert got is c
    np.testing.assert_array_equal(c, want)
    for index in range(len(kernels(dtype))):
        c = np.full((m, n), np.nan, dtype)
        np.testing.assert_array_equal(
            run_kernel(index, a, b, c, 1.0, 0.0, trans_a, trans_b), np.zeros((m, n))
        )


# --------------------------------------------------------------------------- matmul, linear


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_matmul(dtype):
    rng = np.random.default_rng(15)
    for m, n, k in [(1, 1, 1), (3, 1, 7), (1, 9, 4), (50, 61, 73), (128, 17, 300)]:
        a, b = operands(rng, m, n, k, dtype)
        got = fastconv.matmul(a, b)
        assert got.dtype == dtype
        assert got.shape == (m, n)
        assert_close_scaled(got, expected(a, b), k)
        got = fastconv.matmul(a[::-1], np.asfortranarray(b))
        assert_close_scaled(got, expected(a[::-1], b), k)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("lead", [(), (1,), (13,), (4, 7), (2, 0), (0,), (3, 1, 5)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(dtype, lead, with_bias):
    rng = np.random.default_rng(16)
    in_f, out_f = 37, 21
    x = rng.standard_normal((*lead, in_f)).astype(dtype)
    w = rng.standard_normal((out_f, in_f)).astype(dtype)
    bias = rng.standard_normal(out_f).astype(dtype) if with_bias else None
    want = x.astype(np.float64) @ w.astype(np.float64).T
    if with_bias:
        want = want + bias
    got = fastconv.linear(x, w, bias)
    assert got.shape == (*lead, out_f)
    assert got.dtype == dtype
    assert_close_scaled(got, want, red_len(in_f, 1.0 if with_bias else 0.0))
    ref = fastconv.reference.linear(x, w, bias)
    assert ref.shape == got.shape
    # non-contiguous input, weight and bias
    xs = np.repeat(x, 2, axis=-1)[..., ::2]
    ws = np.asfortranarray(w)
    bs = None if bias is None else np.repeat(bias, 3)[::3]
    got = fastconv.linear(xs, ws, bs)
    assert_close_scaled(got, want, red_len(in_f, 1.0 if with_bias else 0.0))


def test_linear_bias_is_not_modified():
    rng = np.random.default_rng(17)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    w = rng.standard_normal((3, 8)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    before = bias.copy()
    fastconv.linear(x, w, bias)
    np.testing.assert_array_equal(bias, before)


# --------------------------------------------------------------------------- small N


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("narrow", [1, 2, 3, 4])
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS)
def test_small_n_path_against_the_reference(dtype, narrow, trans_a, trans_b):
    """One side of at most four columns (or rows) and a large other operand: gemm runs
    the small-N dot kernels, reading that operand in place where its rows run along k
    (and transposing the problem when m is the narrow side); every layout, alpha and
    beta, a k with a tail past the vector lanes, rows past a multiple of four."""
    rng = np.random.default_rng(narrow)
    k = 1031
    for m, n in ((203, narrow), (narrow, 203)):
        a, b = operands(rng, m, n, k, dtype, trans_a, trans_b)
        c = rng.standard_normal((m, n)).astype(dtype)
        got = fastconv.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
        assert_close_scaled(got, expected(a, b, None, 1.0, 0.0, trans_a, trans_b), k)
        want = expected(a, b, c, -0.5, 2.0, trans_a, trans_b)
        strided = np.zeros((m, 2 * n), dtype)[:, ::2]
        strided[...] = c
        fastconv.gemm(a, b, strided, alpha=-0.5, beta=2.0, trans_a=trans_a, trans_b=trans_b)
        assert_close_scaled(strided, want, k + 1, err_msg=f"{m}x{n}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_n_path_is_the_same_for_any_thread_count(dtype, threads):
    rng = np.random.default_rng(7)
    a, b = operands(rng, 517, 3, 700, dtype)
    results = []
    for count in (1, 2, 3):
        threads(count)
        results.append(fastconv.gemm(a, b))
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
