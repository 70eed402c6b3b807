"""The C++ pooling kernels against the NumPy reference and PyTorch.

A broad generated set of arguments -- kernels 1-5 (non-square), strides 1-3, padding
0..k//2, dilation 1-3, ceil_mode, count_include_pad, divisor_override (negative too),
float32 and float64 -- on planes from 1x1 up to ~70 wide, so that the AVX2 row kernels
(stride 1 and 2, blocks of 8 output columns, border columns, ragged ends) and the
portable kernels are both exercised.

Max pooling is compared bit for bit, values *and* indices, including NaN (a NaN in the
window wins; the last NaN in scan order gives the index), all -inf windows and ties
(the first maximum wins). Average pooling forward is bitwise too (the kernels sum each
window row-major, as PyTorch does); its backward sums contributions in another order
and is compared with a tolerance scaled by the number of contributions.

PyTorch's max_pool2d returns an out-of-range index for a window that holds no in-bounds
element (e.g. H=1, kernel 2, dilation 2, padding 1) and its backward then writes out of
bounds: such cases are never given to torch. fastconv must return -inf there and its
backward must refuse an out-of-range index with ValueError.

FASTCONV_ISA=baseline, read when the native module is loaded, selects the portable
kernels: a subprocess computes a set of cases with them and the results must be
identical, bit for bit, to the default (AVX2 where the CPU has it) path.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from helpers import assert_close_scaled, fuzz_settings, run_python
from hypothesis import given
from hypothesis import strategies as st

import fastconv
from fastconv import reference as ref

DTYPES = {"float32": np.float32, "float64": np.float64}


class Case(NamedTuple):
    shape: tuple[int, int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int] | None  # None: PyTorch's default, the kernel size
    padding: tuple[int, int]
    dilation: tuple[int, int]  # max pooling only
    ceil_mode: bool
    count_include_pad: bool  # average pooling only
    divisor_override: int | None  # average pooling only
    dtype: str
    kind: str  # how the input is filled, see make_input
    seed: int

    def max_args(self):
        return dict(
            kernel_size=self.kernel,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            ceil_mode=self.ceil_mode,
        )

    def avg_args(self):
        return dict(
            kernel_size=self.kernel,
            stride=self.stride,
            padding=self.padding,
            ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad,
            divisor_override=self.divisor_override,
        )

    def out_hw(self, dilation):
        stride = self.stride or self.kernel
        return tuple(
            ref.pool_output_size(size, k, s, p, d, self.ceil_mode)
            for size, k, s, p, d in zip(self.shape[2:], self.kernel, stride, self.padding, dilation)
        )

    def valid_for_max(self):
        return min(self.out_hw(self.dilation)) >= 1

    def valid_for_avg(self):
        return min(self.out_hw((1, 1))) >= 1

    def has_empty_max_window(self):
        """Whether some max-pool window holds no in-bounds element."""
        stride = self.stride or self.kernel
        for n_out, size, k, s, p, d in zip(
            self.out_hw(self.dilation),
            self.shape[2:],
            self.kernel,
            stride,
            self.padding,
            self.dilation,
        ):
            for o in range(n_out):
                if not any(0 <= o * s - p + r * d < size for r in range(k)):
                    return True
        return False


KINDS = ["normal", "relu_ints", "small_ints", "special", "neg_inf", "constant"]


def make_input(case: Case) -> np.ndarray:
    """Input data of the given kind; writable, C-contiguous."""
    rng = np.random.default_rng(case.seed)
    shape = case.shape
    if case.kind == "normal":
        x = rng.standard_normal(shape)
    elif case.kind == "relu_ints":  # ReLU output: most values are exactly 0 -> ties
        x = np.maximum(rng.integers(-4, 3, shape), 0).astype(float)
    elif case.kind == "small_ints":
        x = rng.integers(-2, 3, shape).astype(float)
    elif case.kind == "special":  # NaN, +-inf and ties mixed in
        x = rng.integers(-3, 4, shape).astype(float)
        u = rng.random(shape)
        x[u < 0.04] = np.nan
        x[(u >= 0.04) & (u < 0.25)] = -np.inf
        x[(u >= 0.25) & (u < 0.28)] = np.inf
    elif case.kind == "neg_inf":  # whole -inf windows, a few finite values
        x = np.full(shape, -np.inf)
        u = rng.random(shape)
        x[u < 0.1] = rng.standard_normal(int((u < 0.1).sum()))
        x[u > 0.995] = np.nan
    elif case.kind == "constant":
        x = np.full(shape, 1.5)
    else:
        raise AssertionError(case.kind)
    return np.ascontiguousarray(x, dtype=DTYPES[case.dtype])


def random_case(rng: np.random.Generator, *, dtype=None, kind=None, plane=None) -> Case:
    """A random case valid for both max and average pooling (output size >= 1)."""
    while True:
        kernel = tuple(int(k) for k in rng.integers(1, 6, 2))
        stride = None if rng.random() < 0.1 else tuple(int(s) for s in rng.integers(1, 4, 2))
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        dilation = tuple(int(d) for d in rng.integers(1, 4, 2))
        which = plane or rng.choice(["tiny", "small", "wide", "big"], p=[0.15, 0.3, 0.4, 0.15])
        if which == "tiny":  # 1x1, 1xW, Hx1
            h, w = [(1, 1), (1, int(rng.integers(1, 40))), (int(rng.integers(1, 40)), 1)][
                int(rng.integers(3))
            ]
        elif which == "small":
            h, w = (int(v) for v in rng.integers(1, 13, 2))
        elif which == "wide":  # the AVX2 row kernels: W >= 16, many columns
            h, w = int(rng.integers(1, 9)), int(rng.integers(16, 71))
        else:  # enough work for several threads
            h, w = (int(v) for v in rng.integers(24, 71, 2))
        n, c = (int(v) for v in rng.integers(1, 4, 2))
        case = Case(
            shape=(n, c, h, w),
            kernel=kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            ceil_mode=bool(rng.integers(2)),
            count_include_pad=bool(rng.integers(2)),
            divisor_override=[None, None, None, 1, 3, 7, -2, -5][int(rng.integers(8))],
            dtype=dtype or ["float32", "float64"][int(rng.integers(2))],
            kind=kind or KINDS[int(rng.integers(len(KINDS)))],
            seed=int(rng.integers(2**31)),
        )
        if case.valid_for_max() and case.valid_for_avg():
            return case


def generated_cases(seed: int, count: int, **kwargs) -> list[Case]:
    rng = np.random.default_rng(seed)
    return [random_case(rng, **kwargs) for _ in range(count)]


def grad_like(out: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)


def assert_identical(actual, expected, what, case):
    assert actual.dtype == expected.dtype, (what, case)
    assert actual.shape == expected.shape, (what, case)
    if not np.array_equal(actual, expected, equal_nan=actual.dtype.kind == "f"):
        diff = np.argwhere(
            ~(
                (actual == expected) | (np.isnan(actual) & np.isnan(expected))
                if actual.dtype.kind == "f"
                else actual == expected
            )
        )
        where = tuple(diff[0])
        raise AssertionError(
            f"{what} differs at {where} ({len(diff)} places): got {actual[where]!r}, "
            f"expected {expected[where]!r}\n{case}"
        )


# --------------------------------------------------------------------------- checks


def quiet(fn, *args, **kwargs):
    """Run a NumPy reference op without its inf - inf / overflow RuntimeWarnings
    (the suite turns warnings into errors; fastconv itself must not warn)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return fn(*args, **kwargs)


def check_max_vs_reference(case: Case):
    x = make_input(case)
    out, idx = fastconv.max_pool2d(x, **case.max_args(), return_indices=True)
    ref_out, ref_idx = quiet(ref.max_pool2d, x, **case.max_args(), return_indices=True)
    assert_identical(out, ref_out, "max_pool2d values", case)
    assert_identical(idx, ref_idx, "max_pool2d indices", case)
    assert fastconv.max_pool2d(x, **case.max_args()).tobytes() == out.tobytes()

    grad = grad_like(out, case.seed + 1)
    plane = case.shape[2] * case.shape[3]
    if idx.size and (idx.min() < 0 or idx.max() >= plane):
        # Only a window without in-bounds elements gives such an index.
        assert case.has_empty_max_window(), case
        with pytest.raises(ValueError, match="indices"):
            fastconv.max_pool2d_backward(grad, idx, x.shape)
        return
    gin = fastconv.max_pool2d_backward(grad, idx, x.shape)
    assert_identical(gin, ref.max_pool2d_backward(grad, idx, x.shape), "max_pool2d_backward", case)


def check_avg_vs_reference(case: Case):
    x = make_input(case)
    out = fastconv.avg_pool2d(x, **case.avg_args())
    assert_identical(out, quiet(ref.avg_pool2d, x, **case.avg_args()), "avg_pool2d", case)
    grad = grad_like(out, case.seed + 2)
    gin = fastconv.avg_pool2d_backward(grad, x.shape, **case.avg_args())
    expected = quiet(ref.avg_pool2d_backward, grad, x.shape, **case.avg_args())
    assert_close_scaled(gin, expected, k=case.kernel[0] * case.kernel[1], err_msg=str(case))


def check_max_vs_torch(torch, case: Case):
    assert not case.has_empty_max_window()  # torch's backward would write out of bounds
    F = torch.nn.functional
    x = make_input(case)
    args = case.max_args()
    out, idx = fastconv.max_pool2d(x, **case.max_args(), return_indices=True)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    t_out, t_idx = F.max_pool2d(tx, **args, return_indices=True)
    assert_identical(out, t_out.detach().numpy(), "max_pool2d values vs torch", case)
    assert_identical(idx, t_idx.numpy(), "max_pool2d indices vs torch", case)
    grad = grad_like(out, case.seed + 1)
    t_out.backward(torch.from_numpy(grad))
    gin = fastconv.max_pool2d_backward(grad, idx, x.shape)
    assert_identical(gin, tx.grad.numpy(), "max_pool2d_backward vs torch autograd", case)


def check_avg_vs_torch(torch, case: Case):
    F = torch.nn.functional
    x = make_input(case)
    args = case.avg_args()
    out = fastconv.avg_pool2d(x, **case.avg_args())
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    t_out = F.avg_pool2d(tx, **args)
    assert_identical(out, t_out.detach().numpy(), "avg_pool2d vs torch", case)
    grad = grad_like(out, case.seed + 2)
    t_out.backward(torch.from_numpy(grad))
    gin = fastconv.avg_pool2d_backward(grad, x.shape, **case.avg_args())
    assert_close_scaled(gin, tx.grad.numpy(), k=case.kernel[0] * case.kernel[1], err_msg=str(case))


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


def vector_path_cases() -> list[Case]:
    """Every row-kernel shape class: W around the 8- and 16-column boundaries, stride 1
    and 2 (vectorised) and 3 (scalar), all kernel widths, paddings and dilations."""
    cases = []
    rng = np.random.default_rng(7)
    for w in (16, 17, 23, 24, 25, 31, 32, 33, 40, 47, 64, 70):
        for sw in (1, 2, 3):
            for kw in range(1, 6):
                for pw in range(kw // 2 + 1):
                    for dw in (1, 2, 3):
                        ceil = bool(rng.integers(2))
                        kh = int(rng.integers(1, 4))
                        case = Case(
                            shape=(1, 2, int(rng.integers(kh, kh + 3)), w),
                            kernel=(kh, kw),
                            stride=(int(rng.integers(1, 3)), sw),
                            padding=(int(rng.integers(0, kh // 2 + 1)), pw),
                            dilation=(1, dw),
                            ceil_mode=ceil,
                            count_include_pad=bool(rng.integers(2)),
                            divisor_override=[None, None, 3, -2][int(rng.integers(4))],
                            dtype="float32",
                            kind=KINDS[int(rng.integers(len(KINDS)))],
                            seed=int(rng.integers(2**31)),
                        )
                        if case.valid_for_max() and case.valid_for_avg():
                            cases.append(case)
    return cases


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


# --------------------------------------------------------------------------- ISA paths


def isa_cases() -> list[Case]:
    """The subset computed under both ISA paths."""
    cases = vector_path_cases()[1::6]  # the other half of vector_path_cases, mostly
    cases += generated_cases(3000, 40, dtype="float32")
    cases += generated_cases(3001, 6, dtype="float64")
    cases += [
        Case((2, 4, 57, 66), k, s, p, (1, 1), c, True, None, "float32", kind, 5)
        for k, s, p in [
            ((2, 2), (2, 2), (0, 0)),
            ((3, 3), (2, 2), (1, 1)),
            ((3, 3), (1, 1), (1, 1)),
        ]
        for c in (False, True)
        for kind in ("normal", "special", "relu_ints")
    ]
    return cases


def compute_all(cases) -> dict[str, np.ndarray]:
    """Every pooling op on every case (used in-process and in the baseline subprocess)."""
    results = {}
    for i, case in enumerate(cases):
        x = make_input(case)
        out, idx = fastconv.max_pool2d(x, **case.max_args(), return_indices=True)
        results[f"{i}_max"], results[f"{i}_idx"] = out, idx
        grad = grad_like(out, case.seed + 1)
        plane = case.shape[2] * case.shape[3]
        if idx.size and idx.min() >= 0 and idx.max() < plane:
            results[f"{i}_max_bwd"] = fastconv.max_pool2d_backward(grad, idx, x.shape)
        avg = fastconv.avg_pool2d(x, **case.avg_args())
        results[f"{i}_avg"] = avg
        results[f"{i}_avg_bwd"] = fastconv.avg_pool2d_backward(
            grad_like(avg, case.seed + 2), x.shape, **case.avg_args()
        )
    return results


_ENV_CAP_CHILD = textwrap.dedent("""
    import fastconv
    print(fastconv._cpu.isa(), fastconv._cpu.isa_tiers())
""")


def _cpu_isa() -> str | None:
    """The ISA tier /proc/cpuinfo's flags allow, named as fastconv._cpu.isa() names it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    if not ("avx2" in flags and "fma" in flags):
        return "baseline"
    return "avx512f" if "avx512f" in flags else "avx2+fma"


def test_default_isa_matches_the_cpu():
    expected = _cpu_isa()
    if expected is None or os.environ.get("FASTCONV_ISA"):
        pytest.skip("CPU flags unknown, or the ISA is forced by FASTCONV_ISA")
    assert fastconv._cpu.isa() == expected


@pytest.mark.parametrize("cap", ["baseline", "avx2"])
def test_fastconv_isa_environment_variable_caps_the_tier(cap):
    child = run_python(_ENV_CAP_CHILD, env={**os.environ, "FASTCONV_ISA": cap})
    assert child.returncode == 0, child.stderr[-3000:]
    active, tiers = child.stdout.split(" ", 1)
    allowed = ["baseline"] if cap == "baseline" else ["baseline", "avx2+fma"]
    assert active in allowed
    assert ast.literal_eval(tiers) == allowed[: allowed.index(active) + 1]


def test_baseline_and_default_isa_agree_bit_for_bit():
    if fastconv._cpu.isa() == "baseline":
        pytest.skip("the default tier is the baseline")
    cases = isa_cases()
    mine = compute_all(cases)
    with fastconv._cpu.use_isa("baseline"):
        theirs = compute_all(cases)
    assert sorted(theirs) == sorted(mine)
    for key, value in mine.items():
        case = cases[int(key.split("_")[0])]
        other = theirs[key]
        assert value.dtype == other.dtype, key
        assert value.shape == other.shape, key
        assert (
            value.tobytes() == other.tobytes()
        ), f"{key}: the {fastconv._cpu.isa()} and baseline kernels differ\n{case}"


# --------------------------------------------------------------------------- memory bounds

_GUARD_CHILD = textwrap.dedent("""
    import ctypes, mmap, sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    import fastconv
    import test_pooling as tp

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    PAGE = mmap.PAGESIZE
    keep = []

    def guarded(x):
        # A copy of x whose first byte follows an unreadable page and whose last byte
        # precedes one: any read outside the array is a segmentation fault.
        pages = -(-x.nbytes // PAGE)
        buf = mmap.mmap(-1, (pages + 2) * PAGE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        for page in (0, pages + 1):
            if libc.mprotect(address + page * PAGE, PAGE, 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")
        y = np.frombuffer(buf, x.dtype, x.size, (pages + 1) * PAGE - x.nbytes)
        y = y.reshape(x.shape)
        y[...] = x
        keep.append(buf)
        return y

    count = 0
    for case in tp.guard_cases():
        x = tp.make_input(case)
        out, idx = fastconv.max_pool2d(guarded(x), **case.max_args(), return_indices=True)
        ref_out, ref_idx = fastconv.max_pool2d(x, **case.max_args(), return_indices=True)
        assert out.tobytes() == ref_out.tobytes() and (idx == ref_idx).all(), case
        plane = x.shape[2] * x.shape[3]
        grad = tp.grad_like(out, 1)
        if idx.min() >= 0 and idx.max() < plane:
            fastconv.max_pool2d_backward(guarded(grad), guarded(idx), x.shape)
        avg = fastconv.avg_pool2d(guarded(x), **case.avg_args())
        assert avg.tobytes() == fastconv.avg_pool2d(x, **case.avg_args()).tobytes(), case
        fastconv.avg_pool2d_backward(guarded(tp.grad_like(avg, 2)), x.shape, **case.avg_args())
        count += 1
    print("checked", count)
""")


def guard_cases() -> list[Case]:
    """Planes that are one image (N = C = 1) so that the input ends where the plane ends."""
    return [c._replace(shape=(1, 1, *c.shape[2:])) for c in vector_path_cases()[::4]] + [
        c._replace(shape=(1, 1, *c.shape[2:])) for c in generated_cases(4000, 40)
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses mprotect")
def test_kernels_read_nothing_outside_their_arrays():
    """Every input array ends right before (and starts right after) an unreadable page;
    the vector loads (16 floats for stride 2) must stay inside the array."""
    child = run_python(_GUARD_CHILD.format(tests=str(Path(__file__).parent)))
    assert (
        child.returncode == 0
    ), f"exit status {child.returncode} (-11: a read outside the array)\n{child.stderr[-3000:]}"
    assert child.stdout.startswith("checked")


# --------------------------------------------------------------------------- hypothesis


@st.composite
def pool_cases(draw):
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = draw(st.integers(1, 24))
    w = draw(st.one_of(st.integers(1, 15), st.integers(16, 70)))
    case = Case(
        shape=(draw(st.integers(0, 2)), draw(st.integers(1, 3)), h, w),
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=draw(st.booleans()),
        count_include_pad=draw(st.booleans()),
        divisor_override=draw(st.one_of(st.none(), st.integers(-9, 9).filter(bool))),
        dtype=draw(st.sampled_from(sorted(DTYPES))),
        kind=draw(st.sampled_from(KINDS)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    return case


def readable_failures(test):
    """On failure, import hypothesis.extra._patching (-> libcst -> mypy_extensions) with
    warnings silenced before hypothesis' pytest plugin does: its DeprecationWarning,
    raised inside a pytest hook under filterwarnings = error, would otherwise turn the
    failure report into an INTERNALERROR. Costs nothing while the test passes."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        except BaseException:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                # libcst not installed: nothing to pre-import
                with contextlib.suppress(ImportError):
                    import hypothesis.extra._patching  # noqa: F401
            raise

    return run


FUZZ = fuzz_settings(60)


@FUZZ
@given(pool_cases())
@readable_failures
def test_fuzz_max_pool2d(case):
    if not case.valid_for_max():
        with pytest.raises(ValueError, match="output size"):
            fastconv.max_pool2d(make_input(case), **case.max_args())
        return
    check_max_vs_reference(case)
    torch = sys.modules.get("torch") or _try_import_torch()
    if torch is not None and not case.has_empty_max_window():
        check_max_vs_torch(torch, case)


@FUZZ
@given(pool_cases())
@readable_failures
def test_fuzz_avg_pool2d(case):
    if not case.valid_for_avg():
        with pytest.raises(ValueError, match="output size"):
            fastconv.avg_pool2d(make_input(case), **case.avg_args())
        return
    check_avg_vs_reference(case)
    torch = sys.modules.get("torch") or _try_import_torch()
    if torch is not None:
        check_avg_vs_torch(torch, case)


def _try_import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch
