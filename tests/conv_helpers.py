"""The conv2d cases and checks shared by the conv test modules.

``Case`` describes one convolution (shapes, stride, padding, dilation, groups, bias,
dtype, integer-valued data or not) and ``make_data`` its arrays; ``HAND_CASES`` (shapes
picked for each algorithm family and the code paths inside them) and ``GENERATED`` (a
seeded random set) are the case sets; ``supports`` says which algorithms may run a case.
``check_forward`` runs conv2d by default and with every algorithm forced, and
``check_input_grad`` / ``check_weight_grad`` the two gradients, all against
``fastconv.reference`` evaluated in float64: bit-exact on integer-valued data (unless a
transform-based algorithm may have run), else the tolerance of
``helpers.assert_close_scaled`` scaled by the reduction length.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from helpers import assert_close_scaled

import fastconv
from fastconv import reference as ref

ALGORITHMS = tuple(fastconv.CONV2D_ALGORITHMS)
# The 1x1 / stride-1 / unpadded-only algorithm, found by what the selector picks for one.
POINTWISE = fastconv.conv2d_algorithm((2, 64, 8, 8), (64, 64, 1, 1))
WINOGRAD = "winograd"
DTYPES = {"float32": np.float32, "float64": np.float64}


class Case(NamedTuple):
    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: object  # (ph, pw), an int, 'same' or 'valid'
    dilation: tuple[int, int]
    groups: int
    bias: bool
    dtype: str
    ints: bool  # integer-valued data: results are exact
    seed: int

    @property
    def input_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def weight_shape(self):
        return (self.k, self.c // self.groups, self.kh, self.kw)

    def args(self):
        return dict(
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups
        )

    def pads(self):
        return ref.conv_padding(self.padding, (self.kh, self.kw), self.dilation)

    def out_hw(self):
        (pt, pb), (pl, pr) = self.pads()
        return (
            ref.conv_output_size(self.h, self.kh, self.stride[0], (pt, pb), self.dilation[0]),
            ref.conv_output_size(self.w, self.kw, self.stride[1], (pl, pr), self.dilation[1]),
        )

    def is_pointwise(self):
        return (
            (self.kh, self.kw) == (1, 1)
            and tuple(self.stride) == (1, 1)
            and self.pads() == ((0, 0), (0, 0))
        )

    def winograd_shape(self):
        return (
            self.dtype == "float32"
            and (self.kh, self.kw) == (3, 3)
            and tuple(self.stride) == (1, 1)
            and tuple(self.dilation) == (1, 1)
            and self.groups == 1
        )

    def k_forward(self):
        return self.c // self.groups * self.kh * self.kw + (1 if self.bias else 0)

    def k_input(self):
        return self.k // self.groups * self.kh * self.kw

    def k_weight(self):
        oh, ow = self.out_hw()
        return self.n * oh * ow

    def __str__(self):
        pad = self.padding
        if not isinstance(pad, (str, int)):
            pad = "x".join(map(str, pad))
        return (
            f"n{self.n}c{self.c}h{self.h}w{self.w}k{self.k}r{self.kh}s{self.kw}"
            f"-st{self.stride[0]}{self.stride[1]}-p{pad}-d{self.dilation[0]}{self.dilation[1]}"
            f"-g{self.groups}{'-b' if self.bias else ''}-{self.dtype}"
            f"{'-int' if self.ints else ''}-{self.seed}"
        )


def make_data(case: Case):
    """input, weight, bias (or None), grad_output: C-contiguous arrays of case.dtype."""
    rng = np.random.default_rng(case.seed)
    oh, ow = case.out_hw()
    shapes = [case.input_shape, case.weight_shape, (case.k,), (case.n, case.k, oh, ow)]
    if case.ints:
        arrays = [rng.integers(-3, 4, s) for s in shapes]
    else:
        arrays = [rng.standard_normal(s) for s in shapes]
    x, w, b, gy = (np.ascontiguousarray(a, dtype=DTYPES[case.dtype]) for a in arrays)
    return x, w, (b if case.bias else None), gy


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


# Algorithms that run only on some shapes (forcing them elsewhere is a ValueError); every
# other algorithm of CONV2D_ALGORITHMS must run any valid convolution.
def live_window(case: Case):
    """(kh, kw, pad_top, pad_left) of the kernel window whose taps read the input for
    some output pixel -- the library cuts the rest before every pass -- or None when
    nothing is cut (every row and column is live, or cutting would need negative
    padding)."""
    (pt, _), (pl, _) = case.pads()
    oh, ow = case.out_hw()

    def live(size, out, k, stride, pad, d):
        taps = [
            t for t in range(k) if any(0 <= o * stride + t * d - pad < size for o in range(out))
        ]
        return (taps[0], taps[-1]) if taps else None

    rows = live(case.h, oh, case.kh, case.stride[0], pt, case.dilation[0])
    cols = live(case.w, ow, case.kw, case.stride[1], pl, case.dilation[1])
    if rows is None or cols is None:
        return None
    kh, kw = rows[1] - rows[0] + 1, cols[1] - cols[0] + 1
    top, left = pt - rows[0] * case.dilation[0], pl - cols[0] * case.dilation[1]
    if (kh, kw) == (case.kh, case.kw) or top < 0 or left < 0:
        return None
    return kh, kw, top, left


def plain_stride(case: Case) -> tuple[int, int]:
    """The stride the library runs: 1 along a dimension with a single output, where
    the stride cannot change the result."""
    return tuple(1 if out == 1 else s for out, s in zip(case.out_hw(), case.stride))


def pointwise_runs(case: Case) -> bool:
    """pointwise_gemm takes 1x1, stride-1, unpadded convolutions, after dead taps are cut."""
    if plain_stride(case) != (1, 1):
        return False
    if (case.kh, case.kw) == (1, 1) and case.pads() == ((0, 0), (0, 0)):
        # and every input pixel is read: a 1x1 stride-2 kernel on a 1x2 plane is not
        return case.out_hw() == (case.h, case.w)
    return live_window(case) == (1, 1, 0, 0) and case.out_hw() == (case.h, case.w)


def winograd_runs(case: Case) -> bool:
    """winograd takes 3x3 stride-1 ungrouped float32 convolutions, after dead taps are cut."""
    if case.dtype != "float32" or case.groups != 1 or plain_stride(case) != (1, 1):
        return False
    if (case.kh, case.kw) == (3, 3) and tuple(case.dilation) == (1, 1):
        return True
    window = live_window(case)
    return window is not None and window[:2] == (3, 3) and tuple(case.dilation) == (1, 1)


def reaches_far(case: Case) -> bool:
    """Whether the live window reaches far beyond the input and output (as the C++
    is_far_reaching judges it): the selectors then run tapwise, and the algorithms whose
    buffers grow with the reach refuse to be forced."""
    oh, ow = case.out_hw()
    window = live_window(case)
    kh, kw = window[:2] if window is not None else (case.kh, case.kw)
    dh, dw = (1 if k == 1 else d for k, d in zip((kh, kw), case.dilation))
    sh, sw = plain_stride(case)
    rows = (oh - 1) * sh + (kh - 1) * dh + 1
    cols = (ow - 1) * sw + (kw - 1) * dw + 1
    return rows * cols > 16 * (case.h * case.w + oh * ow + kh * kw) + 2**20


RESTRICTED = {POINTWISE: pointwise_runs, WINOGRAD: winograd_runs}
# Algorithms of each pass whose buffers grow with the windows' reach.
REACH_SIZED = {"direct", "depthwise"}
INPUT_GRAD_REACH_SIZED = {"direct"}
WEIGHT_GRAD_REACH_SIZED = {"direct", "direct_dot"}
REACH_REFUSAL = "reach far beyond the input"
# Transform-based algorithms: not exact on integer-valued data (their transforms divide).
TRANSFORMED = {WINOGRAD}


def supports(algorithm, case: Case) -> bool:
    if algorithm in REACH_SIZED and reaches_far(case):
        return False
    return RESTRICTED.get(algorithm, lambda c: True)(case)


def may_transform(case: Case) -> bool:
    """Whether a transform-based algorithm may run inside the default paths for this case
    (the input gradient of a stride-1 conv runs as a forward conv of the same kernel size)."""
    return any(supports(a, case) for a in TRANSFORMED if a in ALGORITHMS)


def chosen_algorithm(case: Case) -> str:
    try:
        return fastconv.conv2d_algorithm(
            case.input_shape, case.weight_shape, **case.args(), dtype=DTYPES[case.dtype]
        )
    except TypeError:  # a selector without the dtype keyword
        return fastconv.conv2d_algorithm(case.input_shape, case.weight_shape, **case.args())


def assert_matches(actual, want, k, case: Case, what: str, exact=None, magnitude=None):
    """Bit-exact for integer-valued data (unless a transform-based algorithm may have run),
    else the K-scaled tolerance. ``magnitude`` (the sums of |terms| behind each value)
    widens it to a k-term sum's error bound, c * k * eps * max sum |terms|, where the
    terms cancel (four terms summing to 1/40 of their size failed the bound scaled by
    the result)."""
    msg = f"{what} {case}"
    assert actual.dtype == DTYPES[case.dtype], msg
    if exact is None:
        exact = case.ints and not may_transform(case)
    if exact:
        assert actual.shape == want.shape, msg
        np.testing.assert_array_equal(actual, want, err_msg=msg)
    else:
        atol = 0.0
        if magnitude is not None:
            eps = float(np.finfo(actual.dtype).eps)
            atol = 2.0 * max(k, 1) * eps * float(np.max(magnitude, initial=0.0))
        assert_close_scaled(actual, want, k, err_msg=msg, atol=atol)


# --------------------------------------------------------------------------- case generation


CG_CHOICES = [1, 2, 3, 4, 5, 7, 8, 11, 16]
KG_CHOICES = [1, 2, 3, 4, 5, 6, 7, 13, 16, 17]


def random_case(rng: np.random.Generator, seed: int, *, dtype=None, max_macs=1_500_000) -> Case:
    while True:
        style = rng.choice(["dense", "dense", "grouped", "depthwise", "multiplier"])
        if style == "dense":
            groups, cg, kg = 1, int(rng.choice(CG_CHOICES)), int(rng.choice(KG_CHOICES))
        elif style == "grouped":
            groups, cg, kg = (
                int(rng.choice([2, 4])),
                int(rng.choice(CG_CHOICES)),
                int(rng.choice(KG_CHOICES)),
            )
        elif style == "depthwise":
            groups = int(rng.integers(2, 20))
            cg, kg = 1, 1
        else:
            groups = int(rng.integers(2, 12))
            cg, kg = 1, int(rng.integers(2, 6))
        kh, kw = (int(v) for v in rng.integers(1, 8, 2))
        dilation = tuple(int(v) for v in rng.choice([1, 1, 2, 3], 2))
        u = rng.random()
        if u < 0.15:
            padding, stride = "same", (1, 1)
        else:
            stride = tuple(int(v) for v in rng.choice([1, 1, 2, 3], 2))
            if u < 0.25:
                padding = "valid"
            elif u < 0.35:
                padding = int(rng.integers(0, 4))
            else:
                padding = tuple(int(v) for v in rng.integers(0, 4, 2))
        pads = ref.conv_padding(padding, (kh, kw), dilation)
        extent = [(kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1]
        dims = []
        for e, (lo, hi) in zip(extent, pads):
            smallest = max(1, e - lo - hi)  # the kernel as large as the padded input
            v = rng.random()
            if v < 0.2:
                dims.append(smallest)
            elif v < 0.3:
                dims.append(smallest + int(rng.integers(1, 3)))
            elif v < 0.8:
                dims.append(smallest + int(rng.integers(0, 14)))
            else:  # wide: several vector tiles and a ragged end
                dims.append(smallest + int(rng.integers(14, 45)))
        h, w = dims
        n = int(rng.choice([1, 1, 2, 3]))
        case = Case(
            n,
            groups * cg,
            h,
            w,
            groups * kg,
            kh,
            kw,
            stride,
            padding,
            dilation,
            groups,
            bool(rng.random() < 0.5),
            dtype or str(rng.choice(["float32", "float64"])),
            bool(rng.random() < 0.35),
            seed,
        )
        oh, ow = case.out_hw()
        if oh < 1 or ow < 1:
            continue
        macs = n * case.k * oh * ow * cg * kh * kw
        if macs <= max_macs and n * case.c * h * w <= 60_000:
            return case


def generated_cases(seed: int, count: int, **kw) -> list[Case]:
    rng = np.random.default_rng(seed)
    return [random_case(rng, seed * 1000 + i, **kw) for i in range(count)]


def C(
    n,
    c,
    h,
    w,
    k,
    r,
    s,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    bias=True,
    dtype="float32",
    ints=False,
    seed=0,
) -> Case:
    pair = ref.pair
    pad = padding if isinstance(padding, str) else pair(padding)
    return Case(
        n, c, h, w, k, r, s, pair(stride), pad, pair(dilation), groups, bias, dtype, ints, seed
    )


# Shapes picked for each algorithm family and for the code paths inside them (several
# GEMM K blocks and N tiles, backward column tiles, direct-kernel row blocks and tap
# chunks, a transposed-conv input gradient with negative padding, ...).
HAND_CASES = [
    # 1x1 stride 1 unpadded (the pointwise GEMM), incl. dilation, groups, 'same'/'valid'
    C(2, 64, 9, 11, 80, 1, 1, seed=1),
    C(1, 300, 5, 7, 17, 1, 1, bias=False, seed=2),
    C(2, 6, 1, 1, 9, 1, 1, dilation=3, padding="valid", seed=3),
    C(2, 12, 6, 5, 8, 1, 1, groups=4, padding="same", dtype="float64", seed=4),
    C(1, 16, 40, 30, 24, 1, 1, dtype="float64", ints=True, seed=5),
    # 1x1 that must not be pointwise: strided, padded
    C(2, 64, 13, 12, 32, 1, 1, stride=2, seed=6),
    C(2, 20, 5, 6, 12, 1, 1, padding=3, seed=7),
    C(1, 8, 7, 7, 6, 1, 1, stride=(3, 2), padding=(0, 1), ints=True, seed=8),
    # depthwise and channel multipliers
    C(2, 24, 29, 31, 24, 3, 3, padding=1, groups=24, seed=9),
    C(1, 8, 20, 50, 16, 5, 3, stride=2, padding=(2, 1), groups=8, seed=10),
    C(2, 5, 9, 9, 15, 3, 3, stride=3, dilation=2, padding=3, groups=5, dtype="float64", seed=11),
    C(1, 4, 7, 7, 4, 7, 7, padding=3, groups=4, ints=True, seed=12),
    C(3, 6, 1, 1, 6, 3, 3, padding=1, groups=6, seed=13),
    # few input channels per group (stems, LeNet, CIFAR)
    C(2, 3, 45, 45, 16, 7, 7, stride=2, padding=3, seed=14),
    C(4, 1, 28, 28, 6, 5, 5, seed=15),
    C(2, 3, 32, 32, 32, 3, 3, padding=1, dtype="float64", seed=16),
    C(1, 8, 23, 37, 10, 3, 4, stride=(1, 2), padding=(1, 2), dilation=(2, 1), groups=2, seed=17),
    C(1, 2, 40, 19, 7, 2, 5, stride=3, dilation=3, padding=(0, 3), ints=True, seed=18),
    # the general implicit GEMM: K = Cg*R*S above one 256-deep block, several N tiles
    C(2, 64, 24, 24, 40, 3, 3, padding=1, seed=19),
    C(1, 32, 17, 19, 24, 5, 5, stride=2, padding=2, seed=20),
    C(1, 48, 12, 12, 20, 3, 3, padding="same", dilation=2, dtype="float64", seed=21),
    C(2, 16, 11, 10, 8, 4, 2, padding="same", seed=22),  # even kernel: asymmetric pad
    C(1, 20, 9, 8, 30, 3, 3, groups=2, stride=2, padding=(0, 3), seed=23),
    C(1, 8, 10, 10, 12, 3, 3, padding=3, ints=True, seed=24),  # padding > kernel reach
    C(2, 5, 7, 6, 7, 7, 6, seed=25),  # kernel = the whole input
    C(1, 7, 3, 3, 9, 7, 7, padding=2, dilation=1, seed=26),  # kernel = padded input
    C(1, 6, 1, 1, 9, 7, 5, padding=3, seed=27),  # 1x1 input, big kernel
    C(1, 9, 1, 1, 5, 1, 1, stride=3, seed=28),  # 1x1 input, stride
    C(2, 40, 30, 30, 6, 3, 3, padding=1, seed=29),  # Kg <= 4: direct input grad
    C(1, 8, 20, 21, 20, 7, 7, padding=1, dtype="float64", seed=30),  # Cg*R*S = 392 > 256
    C(
        3,
        13,
        9,
        14,
        11,
        2,
        3,
        stride=(2, 3),
        dilation=(3, 2),
        padding=(1, 2),
        groups=1,
        bias=False,
        seed=31,
    ),
    C(2, 12, 16, 16, 24, 3, 3, stride=2, padding=1, groups=4, ints=True, dtype="float64", seed=32),
    # wide 3x3 stride-1 layers with many channels (Winograd territory), ragged tiles
    C(1, 64, 16, 64, 64, 3, 3, padding=1, seed=33),
    C(2, 40, 9, 50, 36, 3, 3, padding=(0, 1), bias=False, seed=34),
    C(1, 33, 14, 49, 35, 3, 3, padding=1, ints=True, seed=35),
    # more output pixels than one GEMM NC panel (3072)
    C(1, 8, 64, 64, 8, 3, 3, padding=1, seed=37),
    C(1, 16, 64, 50, 8, 1, 1, seed=38),
    # strided, Kg > 4: the GEMM + col2im input gradient over several column tiles
    C(1, 64, 60, 60, 8, 3, 3, stride=2, padding=1, seed=36),
    # far-reaching padding and dilation (the windows span millions of pixels): tapwise
    C(1, 2, 2, 3, 3, 2, 2, padding=(1100, 1000), dilation=(2100, 1900), ints=True, seed=39),
    C(2, 4, 3, 2, 4, 3, 1, stride=(700, 1), padding=(1500, 0), dilation=(1200, 1), seed=40),
]

GENERATED = generated_cases(7, 110)
ALL_CASES = HAND_CASES + GENERATED


# --------------------------------------------------------------------------- checks


def check_forward(case: Case, algorithms=ALGORITHMS):
    x, w, b, _ = make_data(case)
    want = ref.conv2d(f64(x), f64(w), f64(b), **case.args())
    chosen = chosen_algorithm(case)
    assert chosen in ALGORITHMS
    assert supports(chosen, case), f"{case}: the selector chose {chosen}, which cannot run it"
    default = fastconv.conv2d(x, w, b, **case.args())
    assert default.shape == want.shape
    assert_matches(
        default,
        want,
        case.k_forward(),
        case,
        f"conv2d (default: {chosen})",
        exact=case.ints and chosen not in TRANSFORMED,
    )
    for algorithm in algorithms:
        if not supports(algorithm, case):
            refusal = REACH_REFUSAL if algorithm in REACH_SIZED and reaches_far(case) else ""
            with pytest.raises(
                ValueError, match=f"algorithm='{algorithm}' does not support.*{refusal}"
            ):
                fastconv.conv2d(x, w, b, **case.args(), algorithm=algorithm)
            continue
        got = fastconv.conv2d(x, w, b, **case.args(), algorithm=algorithm)
        assert_matches(
            got,
            want,
            case.k_forward(),
            case,
            f"conv2d algorithm={algorithm}",
            exact=case.ints and algorithm not in TRANSFORMED,
        )
        if algorithm == chosen:  # the default path runs the chosen algorithm
            assert got.tobytes() == default.tobytes(), f"{case}: default != forced {chosen}"


# conv2d_input's algorithms that run every valid problem; the others refuse some.
INPUT_GRAD_GENERAL = {"direct", "implicit_gemm (col2im)"}


def input_grad_refusal(case: Case, w, gy, algorithm):
    """The message of the ValueError a forced conv2d_input algorithm raises, or None."""
    try:
        fastconv.conv2d_input(case.input_shape, w, gy, **case.args(), algorithm=algorithm)
    except ValueError as error:
        return str(error)
    return None


def check_input_grad(case: Case):
    _, w, _, gy = make_data(case)
    want = ref.conv2d_input(case.input_shape, f64(w), f64(gy), **case.args())
    got = fastconv.conv2d_input(case.input_shape, w, gy, **case.args())
    chosen = fastconv.last_algorithms()["conv2d_input"]
    assert chosen == fastconv.conv2d_input_algorithm(
        case.input_shape, case.weight_shape, **case.args(), dtype=DTYPES[case.dtype]
    )
    assert got.shape == case.input_shape
    assert_matches(got, want, case.k_input(), case, "conv2d_input")
    for algorithm in fastconv.CONV2D_INPUT_ALGORITHMS:
        stride_one = plain_stride(case) == (1, 1)
        refusal = input_grad_refusal(case, w, gy, algorithm)
        if refusal is not None:
            assert f"algorithm='{algorithm}' does not support" in refusal, case
            if algorithm in INPUT_GRAD_REACH_SIZED and reaches_far(case):
                assert REACH_REFUSAL in refusal, case
                continue
            assert algorithm not in INPUT_GRAD_GENERAL, case
            assert algorithm != chosen, case
            if algorithm == "winograd (transposed)":
                assert not (stride_one and case.winograd_shape()), case
            continue
        forced = fastconv.conv2d_input(case.input_shape, w, gy, **case.args(), algorithm=algorithm)
        assert fastconv.last_algorithms()["conv2d_input"] == algorithm
        assert stride_one or "(transposed)" not in algorithm, case
        transformed = algorithm.split(" ")[0] in TRANSFORMED
        assert_matches(
            forced,
            want,
            case.k_input(),
            case,
            f"conv2d_input algorithm={algorithm}",
            exact=case.ints and not transformed,
        )
        if algorithm == chosen:
            assert forced.tobytes() == got.tobytes(), f"{case}: default != forced {chosen}"


def check_weight_grad(case: Case):
    x, _, _, gy = make_data(case)
    want = ref.conv2d_weight(f64(x), case.weight_shape, f64(gy), **case.args())
    terms = ref.conv2d_weight(np.abs(f64(x)), case.weight_shape, np.abs(f64(gy)), **case.args())
    got = fastconv.conv2d_weight(x, case.weight_shape, gy, **case.args())
    chosen = fastconv.last_algorithms()["conv2d_weight"]
    assert got.shape == case.weight_shape
    assert_matches(
        got, want, case.k_weight(), case, "conv2d_weight", exact=case.ints, magnitude=terms
    )
    depthwise = case.groups > 1 and case.groups == case.c
    for algorithm in fastconv.CONV2D_WEIGHT_ALGORITHMS:
        if algorithm == "depthwise" and not depthwise:
            with pytest.raises(ValueError, match="algorithm='depthwise' does not support"):
                fastconv.conv2d_weight(x, case.weight_shape, gy, **case.args(), algorithm=algorithm)
            continue
        if algorithm in WEIGHT_GRAD_REACH_SIZED and reaches_far(case):
            with pytest.raises(ValueError, match=REACH_REFUSAL):
                fastconv.conv2d_weight(x, case.weight_shape, gy, **case.args(), algorithm=algorithm)
            continue
        forced = fastconv.conv2d_weight(
            x, case.weight_shape, gy, **case.args(), algorithm=algorithm
        )
        assert fastconv.last_algorithms()["conv2d_weight"] == algorithm
        assert_matches(
            forced,
            want,
            case.k_weight(),
            case,
            f"conv2d_weight algorithm={algorithm}",
            exact=case.ints,
            magnitude=terms,
        )
        if algorithm == chosen:
            assert forced.tobytes() == got.tobytes(), f"{case}: default != forced {chosen}"


def check_all(case: Case):
    check_forward(case)
    check_input_grad(case)
    check_weight_grad(case)


# --------------------------------------------------------------------------- layouts


def _strided_copy(a, rng):
    """The same values in a non-contiguous layout: a reversed and spaced-out, a transposed
    (Fortran-order) or a spaced-out-along-the-first-axis view."""

    def spaced_reversed(a):
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a[..., ::-1]
        return big[..., -2::-2]

    def spaced_first(a):
        big = np.zeros((2 * a.shape[0] + 1,) + a.shape[1:], a.dtype)
        big[1::2] = a
        return big[1::2]

    makers = [spaced_reversed, np.asfortranarray, spaced_first]
    start = int(rng.integers(3))
    for make in makers[start:] + makers[:start]:
        view = make(a)
        if not view.flags.c_contiguous or a.size <= 1:
            break
    np.testing.assert_array_equal(view, a)
    assert not view.flags.c_contiguous or a.size <= 1
    return view
