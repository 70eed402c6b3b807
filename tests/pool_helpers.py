"""The pooling cases and checks shared by the pooling test modules.

``Case`` describes one pooling call (input shape, window, stride, padding, dilation,
ceil_mode, count_include_pad, divisor_override, dtype, and how ``make_input`` fills the
input: normal values, ReLU-like ties, small integers, NaN and infinities, all -inf
windows, constants); ``generated_cases`` draws a seeded random set and
``vector_path_cases`` covers every shape class of the AVX2 row kernels. The checks
compare max_pool2d (values and indices), max_pool2d_backward and avg_pool2d with
``fastconv.reference`` and PyTorch bit for bit, and avg_pool2d_backward with a tolerance
scaled by the window size.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from helpers import assert_close_scaled

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


# --------------------------------------------------------------------------- AVX2 row kernels


def vector_path_cases() -> list[Case]:
    """Every row-kernel shape class: W around the 8- and 16-column boundaries, stride 1
    and 2 (strided loads), 3 and 5 (gathers for max, scalar sums), all kernel widths,
    paddings and dilations."""
    cases = []
    rng = np.random.default_rng(7)
    for w in (16, 17, 23, 24, 25, 31, 32, 33, 40, 47, 64, 70):
        for sw in (1, 2, 3, 5):
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
