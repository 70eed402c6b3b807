"""The C++ pooling kernels against the NumPy reference and PyTorch.

A broad generated set of arguments -- kernels 1-5 (non-square), strides 1-3, padding
0..k//2, dilation 1-3, ceil_mode, count_include_pad, divisor_override (negative too),
float32 and float64 -- on planes from 1x1 up to ~70 wide, so that the AVX2 row kernels
(stride 1 and 2, blocks of 8 output columns, border columns, ragged ends) and the
portable kernels are both exercised. The cases and checks are in ``pool_helpers``.

Max pooling is compared bit for bit, values *and* indices, including NaN (a NaN in the
window wins; the last NaN in scan order gives the index), all -inf windows and ties
(the first maximum wins). Average pooling forward is bitwise too (the kernels sum each
window row-major, as PyTorch does); its backward sums contributions in another order
and is compared with a tolerance scaled by the number of contributions.

PyTorch's max_pool2d returns an out-of-range index for a window that holds no in-bounds
element (e.g. H=1, kernel 2, dilation 2, padding 1) and its backward then writes out of
bounds: such cases are never given to torch. fastconv must return -inf there and its
backward must refuse an out-of-range index with ValueError.

The ISA tiers, the memory bounds of the kernels and the hypothesis fuzz are in
``test_pooling_isa``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from pool_helpers import (
    KINDS,
    Case,
    check_avg_vs_reference,
    check_avg_vs_torch,
    check_max_vs_reference,
    check_max_vs_torch,
    generated_cases,
    vector_path_cases,
)

import fastconv
from fastconv import reference as ref


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a thread pool only adds overhead
    yield torch
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- generated sets

BLOCKS = range(6)
PER_BLOCK = 50


@pytest.mark.parametrize("block", BLOCKS)
def test_max_pool2d_generated_vs_reference(block):
    for case in generated_cases(1000 + block, PER_BLOCK):
        check_max_vs_reference(case)


@pytest.mark.parametrize("block", BLOCKS)
def test_avg_pool2d_generated_vs_reference(block):
    for case in generated_cases(2000 + block, PER_BLOCK):
        check_avg_vs_reference(case)


@pytest.mark.parametrize("block", BLOCKS)
def test_max_pool2d_generated_vs_torch(torch, block):
    cases = [c for c in generated_cases(1000 + block, PER_BLOCK) if not c.has_empty_max_window()]
    assert len(cases) > PER_BLOCK // 2
    for case in cases:
        check_max_vs_torch(torch, case)


@pytest.mark.parametrize("block", BLOCKS)
def test_avg_pool2d_generated_vs_torch(torch, block):
    for case in generated_cases(2000 + block, PER_BLOCK):
        check_avg_vs_torch(torch, case)


def test_generated_set_is_broad():
    """The generated set really covers what the module docstring claims."""
    cases = [c for b in BLOCKS for c in generated_cases(1000 + b, PER_BLOCK)]
    cases += [c for b in BLOCKS for c in generated_cases(2000 + b, PER_BLOCK)]
    seen = lambda f: {f(c) for c in cases}  # noqa: E731
    assert seen(lambda c: c.kernel[0]) == {1, 2, 3, 4, 5}
    assert seen(lambda c: c.kernel[0] != c.kernel[1]) == {True, False}
    assert {1, 2, 3} <= seen(lambda c: c.stride[1] if c.stride else 0)
    assert None in seen(lambda c: c.stride)
    assert {1, 2, 3} <= seen(lambda c: c.dilation[0])
    assert seen(lambda c: c.ceil_mode) == {True, False}
    assert seen(lambda c: c.count_include_pad) == {True, False}
    assert {None, 1, -2, -5, 7} <= seen(lambda c: c.divisor_override)
    assert seen(lambda c: c.dtype) == {"float32", "float64"}
    assert seen(lambda c: c.kind) == set(KINDS)
    assert any(c.padding[1] == c.kernel[1] // 2 > 0 for c in cases)
    assert any(c.shape[3] >= 64 for c in cases)
    assert any(c.shape[2:] == (1, 1) for c in cases)
    assert any(c.shape[2] == 1 and c.shape[3] > 1 for c in cases)
    assert any(c.shape[3] == 1 and c.shape[2] > 1 for c in cases)


# --------------------------------------------------------------------------- AVX2 row kernels


def test_vector_row_kernels_vs_reference():
    cases = vector_path_cases()
    assert len(cases) > 900
    for case in cases[::2]:  # half; the baseline-ISA and guard-page tests take others
        check_max_vs_reference(case)
        check_avg_vs_reference(case)


def test_vector_row_kernels_vs_torch(torch):
    for case in vector_path_cases()[::7]:
        if not case.has_empty_max_window():
            check_max_vs_torch(torch, case)
        check_avg_vs_torch(torch, case)


def plain_2x2_cases() -> list[Case]:
    """2x2 windows at stride 2 without padding on rows of fewer than 16 outputs (the flat
    SSE2/scalar path): even and odd sizes, every fill kind, both dtypes."""
    cases = []
    rng = np.random.default_rng(11)
    for h, w in ((2, 2), (8, 8), (4, 4), (9, 7), (6, 30), (5, 31), (3, 10), (16, 24)):
        for kind in KINDS:
            for dtype in ("float32", "float64"):
                cases.append(
                    Case(
                        shape=(2, 3, h, w),
                        kernel=(2, 2),
                        stride=(2, 2),
                        padding=(0, 0),
                        dilation=(1, 1),
                        ceil_mode=False,
                        count_include_pad=True,
                        divisor_override=None,
                        dtype=dtype,
                        kind=kind,
                        seed=int(rng.integers(2**31)),
                    )
                )
    return cases


def test_plain_2x2_narrow_rows_vs_reference():
    for case in plain_2x2_cases():
        check_max_vs_reference(case)


def test_plain_2x2_narrow_rows_vs_torch(torch):
    for case in plain_2x2_cases():
        check_max_vs_torch(torch, case)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_common_layers_vs_torch(torch, dtype):
    """The 2x2/2, 3x3/2 and 3x3/1 layers of real networks, multi-threaded sizes."""
    layers = [
        ((2, 2), (2, 2), (0, 0)),
        ((3, 3), (2, 2), (1, 1)),
        ((3, 3), (1, 1), (1, 1)),
        ((3, 3), (2, 2), (0, 0)),
    ]
    for i, (kernel, stride, padding) in enumerate(layers):
        for ceil_mode in (False, True):
            for kind in ("relu_ints", "special"):
                case = Case(
                    (2, 3, 57, 66),
                    kernel,
                    stride,
                    padding,
                    (1, 1),
                    ceil_mode,
                    True,
                    None,
                    dtype,
                    kind,
                    100 + i,
                )
                check_max_vs_torch(torch, case)
                check_avg_vs_torch(torch, case)
                check_max_vs_reference(case)


# --------------------------------------------------------------------------- semantics by hand


def test_nan_wins_and_the_last_nan_gives_the_index(torch):
    for w in (5, 40):  # scalar path and vector path
        x = np.arange(2 * w, dtype=np.float32).reshape(1, 1, 2, w)
        x[0, 0, 0, 1] = np.nan
        x[0, 0, 1, 0] = np.nan  # both in window (0, 0) of a 2x2 kernel: the last one wins
        x[0, 0, 1, 3] = np.nan
        out, idx = fastconv.max_pool2d(x, 2, stride=1, return_indices=True)
        assert np.isnan(out[0, 0, 0, 0])
        assert idx[0, 0, 0, 0] == w
        assert np.isnan(out[0, 0, 0, 1])
        assert idx[0, 0, 0, 1] == 1
        assert np.isnan(out[0, 0, 0, 2])
        assert idx[0, 0, 0, 2] == w + 3
        assert not np.isnan(out[0, 0, 0, 4:]).any()
        t_out, t_idx = torch.nn.functional.max_pool2d(
            torch.from_numpy(x), 2, 1, return_indices=True
        )
        np.testing.assert_array_equal(out, t_out.numpy())
        np.testing.assert_array_equal(idx, t_idx.numpy())


def test_all_neg_inf_window_gives_neg_inf_and_first_in_bounds_index(torch):
    for w in (6, 48):
        x = np.full((1, 1, 3, w), -np.inf, np.float32)
        x[0, 0, 2, -1] = 1.0
        out, idx = fastconv.max_pool2d(x, 3, stride=1, padding=1, return_indices=True)
        assert out[0, 0, 0, 0] == -np.inf
        assert idx[0, 0, 0, 0] == 0  # window starts at (-1, -1): first in-bounds is (0, 0)
        for col in range(1, w - 3):  # rows 0-1 of these windows are all -inf
            assert out[0, 0, 0, col] == -np.inf
            assert idx[0, 0, 0, col] == col - 1
        assert out[0, 0, 2, -1] == 1.0
        assert idx[0, 0, 2, -1] == 3 * w - 1
        t_out, t_idx = torch.nn.functional.max_pool2d(
            torch.from_numpy(x), 3, 1, 1, return_indices=True
        )
        np.testing.assert_array_equal(out, t_out.numpy())
        np.testing.assert_array_equal(idx, t_idx.numpy())


def test_ties_first_maximum_wins(torch):
    for w in (7, 50):
        x = np.zeros((1, 2, 4, w), np.float64)  # all ties (ReLU output of negatives)
        out, idx = fastconv.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
        t_out, t_idx = torch.nn.functional.max_pool2d(
            torch.from_numpy(x), 3, 2, 1, return_indices=True
        )
        np.testing.assert_array_equal(out, t_out.numpy())
        np.testing.assert_array_equal(idx, t_idx.numpy())
        # first in-bounds element of each window
        assert idx[0, 0, 0, 0] == 0
        assert idx[0, 0, 1, 1] == 1 * w + 1


def test_plus_inf_beats_everything_but_nan():
    x = np.array([[[[1.0, np.inf, 3.0, np.inf, -np.inf]]]], np.float32)
    out, idx = fastconv.max_pool2d(x, (1, 5), return_indices=True)
    assert out.ravel().tolist() == [np.inf]
    assert idx.ravel().tolist() == [1]


EMPTY_WINDOW_CASES = [
    # (shape, kernel, stride, padding, dilation, ceil_mode)
    ((1, 1, 1, 3), 2, 2, 1, 2, False),  # the torch bug case: H=1, kernel 2, dilation 2, pad 1
    ((2, 3, 1, 1), 2, 1, 1, 2, False),
    ((1, 1, 1, 5), (2, 1), (1, 1), (1, 0), (2, 1), False),
    ((1, 2, 3, 3), 2, 1, 1, 4, False),
    ((2, 1, 3, 1), (1, 2), (1, 1), (0, 1), (1, 2), True),
    ((1, 1, 1, 20), (2, 3), (1, 2), (1, 1), (2, 1), True),
]


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "padding", "dilation", "ceil_mode"), EMPTY_WINDOW_CASES
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_windows_without_in_bounds_elements(
    shape, kernel, stride, padding, dilation, ceil_mode, dtype
):
    """-inf out; the (out-of-range) index is refused by the backward, never used."""
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    args = dict(
        kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode
    )
    out, idx = fastconv.max_pool2d(x, **args, return_indices=True)
    ref_out, ref_idx = ref.max_pool2d(x, **args, return_indices=True)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)
    plane = shape[2] * shape[3]
    empty = (idx < 0) | (idx >= plane)
    assert empty.any()
    assert (out[empty] == -np.inf).all()
    with pytest.raises(ValueError, match="indices"):
        fastconv.max_pool2d_backward(np.ones_like(out), idx, shape)


def test_empty_window_torch_bug_case_forward_only(torch):
    """The case from the PyTorch bug: forward values agree; torch's index is out of range
    (its backward is never called here)."""
    x = np.array([[[[1.0, 2.0, 3.0]]]], np.float32)
    out, idx = fastconv.max_pool2d(x, 2, 2, 1, 2, return_indices=True)
    t_out = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, 2, 1, 2)
    np.testing.assert_array_equal(out, t_out.numpy())
    assert (out == -np.inf).all()
    assert ((idx < 0) | (idx >= x.size)).all()


def tiny_plane_cases() -> list[Case]:
    """1x1, 1xW and Hx1 planes (and 2x2) with every small kernel, stride, padding and
    dilation; a fixed random half of the full product keeps the test fast."""
    cases = []
    for h, w in [(1, 1), (1, 2), (1, 5), (2, 1), (5, 1), (1, 17), (17, 1), (2, 2)]:
        for kh in range(1, 4):
            for kw in range(1, 4):
                for s in (1, 2):
                    for ph in range(kh // 2 + 1):
                        for pw in range(kw // 2 + 1):
                            for d in (1, 2):
                                for ceil in (False, True):
                                    cases.append(
                                        Case(
                                            (1, 2, h, w),
                                            (kh, kw),
                                            (s, s),
                                            (ph, pw),
                                            (d, d),
                                            ceil,
                                            bool(pw),
                                            None,
                                            "float32",
                                            KINDS[len(cases) % 4],
                                            len(cases),
                                        )
                                    )
    rng = np.random.default_rng(11)
    return [cases[i] for i in sorted(rng.choice(len(cases), len(cases) // 2, replace=False))]


def test_tiny_planes_vs_reference():
    checked = 0
    for case in tiny_plane_cases():
        if case.valid_for_max():
            check_max_vs_reference(case)
            checked += 1
        if case.valid_for_avg() and case.dilation == (1, 1):
            check_avg_vs_reference(case)
    assert checked > 300


def test_tiny_planes_vs_torch(torch):
    for case in tiny_plane_cases()[::4]:
        if case.valid_for_max() and not case.has_empty_max_window():
            check_max_vs_torch(torch, case)
        if case.valid_for_avg() and case.dilation == (1, 1):
            check_avg_vs_torch(torch, case)


def test_whole_plane_window():
    """One window covering a 1024x2048 plane: the last element's flat index is h*w - 1."""
    h, w = 1024, 2048
    x = np.zeros((1, 1, h, w), np.float32)
    x[0, 0, -1, -1] = 1.0
    out, idx = fastconv.max_pool2d(x, (1024, 2048), return_indices=True)
    assert out.ravel().tolist() == [1.0]
    assert idx.ravel().tolist() == [h * w - 1]
    g = fastconv.max_pool2d_backward(np.full_like(out, 2.0), idx, x.shape)
    assert g[0, 0, -1, -1] == 2.0
    assert g.sum() == 2.0


# Windows reaching far past a tiny input: the loops run over the in-bounds taps only,
# so these cost microseconds (they took 50-90 s when every tap was visited; torch
# itself takes ~40 s on the second).
def test_far_reaching_windows_on_one_pixel():
    x = np.random.default_rng(0).standard_normal((64, 1, 1, 1)).astype(np.float32)
    start = time.perf_counter()
    avg = fastconv.avg_pool2d(x, (1, 2**30), 1, (0, 2**29))  # two windows, one pixel each
    avg_dx = fastconv.avg_pool2d_backward(np.ones_like(avg), x.shape, (1, 2**30), 1, (0, 2**29))
    top, indices = fastconv.max_pool2d(x, (2**30, 1), 1, (2**29, 0), return_indices=True)
    top_dx = fastconv.max_pool2d_backward(np.ones_like(top), indices, x.shape)
    elapsed = time.perf_counter() - start
    assert avg.shape == (64, 1, 1, 2)
    np.testing.assert_array_equal(avg, np.repeat(x / np.float32(2**30), 2, axis=3))
    np.testing.assert_array_equal(avg_dx, np.full_like(x, 2 / 2**30))
    assert top.shape == (64, 1, 2, 1)
    np.testing.assert_array_equal(top, np.repeat(x, 2, axis=2))
    np.testing.assert_array_equal(indices, 0)
    np.testing.assert_array_equal(top_dx, np.full_like(x, 2))
    assert elapsed < 1.0, elapsed


FAR_WINDOWS = [
    ("max_pool2d", (2, 3, 5, 5), dict(kernel_size=(2**16, 3), stride=1, padding=(2**15, 1))),
    ("avg_pool2d", (2, 3, 5, 4), dict(kernel_size=(3, 2**22), stride=2, padding=(1, 2**21))),
]


@pytest.mark.parametrize(("op", "shape", "kwargs"), FAR_WINDOWS)
def test_far_reaching_windows_match_torch(op, shape, kwargs):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    start = time.perf_counter()
    y = getattr(fastconv, op)(x, **kwargs)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    if op == "max_pool2d":
        _, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True)
        dx = fastconv.max_pool2d_backward(gy, indices, x.shape)
    else:
        dx = fastconv.avg_pool2d_backward(gy, x.shape, **kwargs)
    elapsed = time.perf_counter() - start
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn.functional, op)(xt, **kwargs)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6, atol=1e-12)
    assert elapsed < 1.0, elapsed
