"""Conv2d on the CPU: forward, conv2d_input, conv2d_weight and the algorithm selector.

Every result is checked against ``fastconv.reference`` (evaluated in float64 on the same
inputs) and, on a subset, against PyTorch's autograd (float64), over a broad generated set:
kernels 1-7 (non-square), stride 1-3, padding 0-3 / pairs / 'same' / 'valid', dilation
1-3, groups 1/2/4/depthwise/channel multiplier, odd channel counts, 1x1 spatial inputs,
kernels as large as the padded input, bias or not, float32 and float64, plus a bounded
hypothesis fuzz. Integer-valued inputs (a part of every set) make every summation order
exact: those results must equal the reference bit for bit. The others use the tolerance of
``helpers.assert_close_scaled``, scaled by the reduction length: Cg*R*S for the forward pass
(+1 with a bias), Kg*R*S for conv2d_input and N*OH*OW for conv2d_weight.

Every algorithm of ``fastconv.CONV2D_ALGORITHMS`` is forced on every case: on the shapes it
is chosen for and on shapes it is not. The pointwise algorithm (1x1, stride 1, unpadded
only) must refuse other shapes with ValueError; it is identified by what the selector
picks for a plain 1x1 layer, not by its name. Only the selector-table test names
algorithms.

Gradients are also checked by finite differences in float64 (random projections), the
weight gradient is bit-identical across repeated calls at a fixed thread count, and a
subprocess with FASTCONV_ISA=baseline (portable kernels only) or FASTCONV_ISA=avx2 (no AVX-512)
agrees with the default path.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import NamedTuple

import numpy as np
import pytest
from helpers import assert_close_scaled, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

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
RESTRICTED = {POINTWISE: Case.is_pointwise, WINOGRAD: Case.winograd_shape}
# Transform-based algorithms: not exact on integer-valued data (their transforms divide).
TRANSFORMED = {WINOGRAD}


def supports(algorithm, case: Case) -> bool:
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


def assert_matches(actual, want, k, case: Case, what: str, exact=None):
    """Bit-exact for integer-valued data (unless a transform-based algorithm may have run),
    else the K-scaled tolerance."""
    msg = f"{what} {case}"
    assert actual.dtype == DTYPES[case.dtype], msg
    if exact is None:
        exact = case.ints and not may_transform(case)
    if exact:
        assert actual.shape == want.shape, msg
        np.testing.assert_array_equal(actual, want, err_msg=msg)
    else:
        assert_close_scaled(actual, want, k, err_msg=msg)


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
            with pytest.raises(ValueError, match=f"algorithm='{algorithm}' does not support"):
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


def check_input_grad(case: Case):
    _, w, _, gy = make_data(case)
    want = ref.conv2d_input(case.input_shape, f64(w), f64(gy), **case.args())
    got = fastconv.conv2d_input(case.input_shape, w, gy, **case.args())
    assert got.shape == case.input_shape
    assert_matches(got, want, case.k_input(), case, "conv2d_input")


def check_weight_grad(case: Case):
    x, _, _, gy = make_data(case)
    want = ref.conv2d_weight(f64(x), case.weight_shape, f64(gy), **case.args())
    got = fastconv.conv2d_weight(x, case.weight_shape, gy, **case.args())
    assert got.shape == case.weight_shape
    assert_matches(got, want, case.k_weight(), case, "conv2d_weight", exact=case.ints)


def check_all(case: Case):
    check_forward(case)
    check_input_grad(case)
    check_weight_grad(case)


@pytest.fixture
def threads():
    before = fastconv.get_num_threads()
    yield fastconv.set_num_threads
    fastconv.set_num_threads(before)


# --------------------------------------------------------------------------- vs the reference


@pytest.mark.parametrize("case", HAND_CASES, ids=str)
def test_hand_picked_cases(case):
    check_all(case)


@pytest.mark.parametrize("case", GENERATED, ids=str)
def test_generated_cases(case):
    check_all(case)


def test_generated_set_covers_the_argument_space():
    """The generated set really holds what the issue asks for."""
    cases = ALL_CASES
    assert {c.kh for c in cases} >= set(range(1, 8))
    assert {c.kw for c in cases} >= set(range(1, 8))
    assert any(c.kh != c.kw for c in cases)
    assert {s for c in cases for s in c.stride} >= {1, 2, 3}
    assert {d for c in cases for d in c.dilation} >= {1, 2, 3}
    assert {"same", "valid"} <= {c.padding for c in cases if isinstance(c.padding, str)}
    pads = {
        p
        for c in cases
        if not isinstance(c.padding, str)
        for p in ((c.padding,) if isinstance(c.padding, int) else c.padding)
    }
    assert pads >= {0, 1, 2, 3}
    assert {1, 2, 4} <= {c.groups for c in cases}
    assert any(c.groups == c.c and c.k == c.c and c.c > 1 for c in cases)  # depthwise
    assert any(c.groups == c.c and c.k > c.c and c.c > 1 for c in cases)  # multiplier
    assert any(c.c % 2 == 1 and c.groups == 1 for c in cases)
    assert any(c.h == 1 and c.w == 1 for c in cases)
    assert any(c.out_hw() == (1, 1) and (c.kh > 1 or c.kw > 1) for c in cases)
    assert {True, False} == {c.bias for c in cases} == {c.ints for c in cases}
    assert set(DTYPES) == {c.dtype for c in cases}
    chosen = {chosen_algorithm(c) for c in cases}
    assert chosen == set(ALGORITHMS), f"algorithms never chosen: {set(ALGORITHMS) - chosen}"


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_padding_wider_than_the_kernel(dtype):
    """Padding beyond the dilated kernel's reach: outputs that see only padding are the
    bias (or zero), with every algorithm and both gradients."""
    cases = [
        C(1, 1, 1, 1, 1, 1, 1, padding=2, dtype=dtype),
        C(1, 1, 1, 1, 1, 1, 1, padding=(0, 2), dtype=dtype),
        C(1, 2, 2, 2, 3, 3, 3, padding=3, dtype=dtype, ints=True),
        C(2, 6, 3, 4, 8, 1, 1, padding=(3, 1), stride=2, dtype=dtype),
        C(1, 4, 5, 5, 4, 2, 2, padding=3, groups=4, dtype=dtype),
        C(1, 40, 4, 4, 40, 3, 3, padding=3, dtype=dtype),
    ]
    for case in cases:
        check_all(case)


# --------------------------------------------------------------------------- forcing


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_on_shapes_chosen_for_others(algorithm):
    """Forced, each algorithm gives the reference result on shapes picked for every
    other algorithm (a restricted one refuses what it cannot run)."""
    others = {}
    for case in ALL_CASES:
        others.setdefault(chosen_algorithm(case), []).append(case)
    checked = 0
    for cases in others.values():
        for case in cases[:6]:
            check_forward(case, algorithms=(algorithm,))
            checked += 1
    assert checked >= 6


@pytest.mark.parametrize("case", [c for c in HAND_CASES if not c.is_pointwise()][:8], ids=str)
def test_pointwise_refuses_other_shapes(case):
    x, w, b, _ = make_data(case)
    with pytest.raises(ValueError, match="1x1"):
        fastconv.conv2d(x, w, b, **case.args(), algorithm=POINTWISE)


@pytest.mark.parametrize("algorithm", sorted(RESTRICTED))
def test_restricted_algorithms_on_unsupported_shapes(algorithm):
    """Every restricted algorithm refuses each shape it cannot run (ValueError, never a
    wrong result), float64 included."""
    assert algorithm in ALGORITHMS
    refused = 0
    for case in ALL_CASES[:60]:
        for variant in (case, case._replace(dtype="float64")):
            if supports(algorithm, variant):
                continue
            x, w, b, _ = make_data(variant)
            with pytest.raises(ValueError, match=f"algorithm='{algorithm}' does not support"):
                fastconv.conv2d(x, w, b, **variant.args(), algorithm=algorithm)
            refused += 1
    assert refused > 10


def test_unknown_algorithm_is_refused():
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="algorithm must be None or one of .*'no_such_algorithm'"):
        fastconv.conv2d(x, w, algorithm="no_such_algorithm")


def test_algorithms_tuple():
    assert len(ALGORITHMS) >= 4
    assert len(set(ALGORITHMS)) == len(ALGORITHMS)
    assert POINTWISE in ALGORITHMS
    assert all(isinstance(a, str) for a in ALGORITHMS)


# --------------------------------------------------------------------------- the selector

# (name, input shape, weight shape, stride, padding, dilation, groups, expected)
LAYER_SET = [
    ("resnet_stem_7x7s2", (8, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, 1, "direct"),
    ("resnet_3x3_56", (8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1, "winograd"),
    ("resnet_1x1_56_up", (8, 64, 56, 56), (256, 64, 1, 1), 1, 0, 1, 1, "pointwise_gemm"),
    ("resnet_1x1_56_down", (8, 256, 56, 56), (64, 256, 1, 1), 1, 0, 1, 1, "pointwise_gemm"),
    ("resnet_1x1s2_56", (8, 256, 56, 56), (128, 256, 1, 1), 2, 0, 1, 1, "implicit_gemm"),
    ("resnet_3x3_28", (8, 128, 28, 28), (128, 128, 3, 3), 1, 1, 1, 1, "winograd"),
    ("resnet_3x3_14", (8, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1, 1, "winograd"),
    ("resnet_3x3_7", (8, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1, 1, "winograd"),
    ("vgg_3x3_112", (2, 64, 112, 112), (128, 64, 3, 3), 1, 1, 1, 1, "winograd"),
    ("googlenet_5x5_28", (8, 192, 28, 28), (32, 192, 5, 5), 1, 2, 1, 1, "direct"),
    ("alexnet_3x3_13", (8, 384, 13, 13), (384, 384, 3, 3), 1, 1, 1, 1, "winograd"),
    ("mobilenet_dw3x3_56", (8, 144, 56, 56), (144, 1, 3, 3), 1, 1, 1, 144, "depthwise"),
    ("cifar_first_3x3", (64, 3, 32, 32), (32, 3, 3, 3), 1, 1, 1, 1, "direct"),
    ("lenet_5x5", (64, 1, 28, 28), (6, 1, 5, 5), 1, 0, 1, 1, "direct"),
]
SELECTOR_EXTRA = [
    ("1x1_stride2_small", (2, 16, 14, 14), (32, 16, 1, 1), 2, 0, 1, 1, "implicit_gemm"),
    ("1x1_stride2_rgb", (2, 3, 14, 14), (8, 3, 1, 1), 2, 0, 1, 1, "direct"),
    ("1x1_padded", (2, 64, 14, 14), (64, 64, 1, 1), 1, 1, 1, 1, "implicit_gemm"),
    ("1x1_same", (2, 64, 14, 14), (64, 64, 1, 1), 1, "same", 1, 1, "pointwise_gemm"),
    ("1x1_valid_dilated", (2, 64, 14, 14), (32, 64, 1, 1), 1, "valid", 3, 1, "pointwise_gemm"),
    ("1x1_unbatched", (64, 7, 7), (32, 64, 1, 1), 1, 0, 1, 1, "pointwise_gemm"),
    ("depthwise_multiplier_2", (2, 32, 28, 28), (64, 1, 3, 3), 1, 1, 1, 32, "depthwise"),
    ("depthwise_5x5_s2", (2, 96, 28, 28), (96, 1, 5, 5), 2, 2, 1, 96, "depthwise"),
    ("rgb_5x5", (1, 3, 64, 64), (16, 3, 5, 5), 1, 0, 1, 1, "direct"),
    ("grouped_cg4", (8, 128, 28, 28), (128, 4, 3, 3), 1, 1, 1, 32, "direct"),
    ("grouped_cg8", (8, 128, 28, 28), (128, 8, 3, 3), 1, 1, 1, 16, "direct"),
    ("dense_c5", (2, 5, 20, 20), (16, 5, 3, 3), 1, 1, 1, 1, "direct"),
    # shape families of the corpus (whole networks at 224 and 32, batch 1 to 32)
    ("googlenet_5x5_14", (8, 32, 14, 14), (64, 32, 5, 5), 1, 2, 1, 1, "direct"),
    ("cifar_resnet50_3x3s2_8", (8, 512, 8, 8), (512, 512, 3, 3), 2, 1, 1, 1, "direct"),
    ("resnet_3x3s2_56", (8, 64, 56, 56), (128, 64, 3, 3), 2, 1, 1, 1, "direct"),
    ("late_3x3_4", (8, 256, 4, 4), (512, 256, 3, 3), 1, 1, 1, 1, "direct"),
    ("late_3x3_2", (8, 512, 2, 2), (512, 512, 3, 3), 1, 1, 1, 1, "implicit_gemm"),
    ("downsample_1x1s2", (8, 256, 14, 14), (512, 256, 1, 1), 2, 0, 1, 1, "implicit_gemm"),
    ("squeeze_1x1_plane", (32, 1152, 1, 1), (48, 1152, 1, 1), 1, 0, 1, 1, "pointwise_gemm"),
    ("efficientnet_dw5x5_7", (32, 672, 7, 7), (672, 1, 5, 5), 1, 2, 1, 672, "depthwise"),
    ("mobilenet_dw3x3s2_14", (1, 576, 14, 14), (576, 1, 3, 3), 2, 1, 1, 576, "depthwise"),
    ("grouped_g4_14", (8, 256, 14, 14), (256, 64, 3, 3), 1, 1, 1, 4, "direct"),
    ("batch1_3x3_14", (1, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1, 1, "winograd"),
]


@pytest.mark.parametrize(
    ("name", "in_shape", "w_shape", "stride", "padding", "dilation", "groups", "expected"),
    LAYER_SET + SELECTOR_EXTRA,
    ids=[row[0] for row in LAYER_SET + SELECTOR_EXTRA],
)
def test_selector_table(name, in_shape, w_shape, stride, padding, dilation, groups, expected):
    got = fastconv.conv2d_algorithm(in_shape, w_shape, stride, padding, dilation, groups)
    assert got == expected, f"{name}: selector chose {got!r}, table says {expected!r}"
    assert got in ALGORITHMS


# The direct forward kernel in both orientations (it picks the one wasting fewer lanes):
# pixels broadcast x channels in vectors where the output channels fill the vectors
# (32 and 64 channels, narrow rows; several tap chunks), channels x pixels otherwise.
DIRECT_ORIENTATION_CASES = [
    C(2, 3, 9, 17, 32, 3, 3, padding=1),
    C(1, 8, 15, 40, 64, 5, 5, stride=2, padding=2, groups=2),
    C(1, 4, 14, 30, 32, 7, 7, padding=3, bias=False),
    C(2, 1, 20, 32, 6, 5, 5),
]


@pytest.mark.parametrize("case", DIRECT_ORIENTATION_CASES, ids=str)
def test_direct_forward_orientations(case):
    assert fastconv.conv2d_algorithm(case.input_shape, case.weight_shape, **case.args()) == "direct"
    check_forward(case)
    check_input_grad(case)


# The weight-gradient algorithm per layer of the set (conv2d_weight_algorithm): the
# gathered-A kernel ("direct") for rows >= 10 wide (>= 7 below 64 MFLOP) and reductions
# >= 64, plane-wide dot products ("direct_dot") for short reductions with <= 8 output
# channels, or <= 32 with AVX-512's 4 x 6 dot tile, GEMM otherwise.
WIDE_DOT_TILE = fastconv._cpu.isa() == "avx512f"
WEIGHT_GRAD_TABLE = {
    "resnet_stem_7x7s2": "direct",
    "resnet_3x3_56": "direct",
    "resnet_1x1_56_up": "implicit_gemm",
    "resnet_1x1_56_down": "implicit_gemm",
    "resnet_1x1s2_56": "implicit_gemm",
    "resnet_3x3_28": "direct",
    "resnet_3x3_14": "direct",
    "resnet_3x3_7": "implicit_gemm",
    "vgg_3x3_112": "direct",
    "googlenet_5x5_28": "direct",
    "alexnet_3x3_13": "direct",
    "mobilenet_dw3x3_56": "depthwise",
    "cifar_first_3x3": "direct_dot" if WIDE_DOT_TILE else "implicit_gemm",
    "lenet_5x5": "direct_dot",
}


@pytest.mark.parametrize("row", LAYER_SET, ids=[row[0] for row in LAYER_SET])
def test_weight_grad_selector_table(row):
    name, in_shape, w_shape, stride, padding, dilation, groups, _ = row
    got = fastconv.conv2d_weight_algorithm(in_shape, w_shape, stride, padding, dilation, groups)
    assert got == WEIGHT_GRAD_TABLE[name]


def test_weight_grad_selector_reads_the_active_tier():
    """The dot tile's width is the ISA's: below AVX-512, CIFAR's first layer runs as GEMM."""
    row = next(row for row in LAYER_SET if row[0] == "cifar_first_3x3")
    for isa in fastconv._cpu.isa_tiers():
        with fastconv._cpu.use_isa(isa):
            got = fastconv.conv2d_weight_algorithm(*row[1:7])
        assert got == ("direct_dot" if isa == "avx512f" else "implicit_gemm"), isa


# Each weight-gradient path on shapes it is chosen for, at 1 and 2 threads: the gathered
# kernel with partial tap blocks, output-channel slivers, tasks spanning several images
# (small planes) or bands of one image (large planes), stride, dilation and groups.
WEIGHT_GRAD_CASES = [
    (C(3, 8, 10, 9, 20, 3, 3, padding=1), "direct"),
    (C(2, 5, 40, 37, 70, 3, 5, stride=2, padding=(1, 2)), "direct"),
    (C(1, 16, 12, 30, 8, 3, 3, dilation=2, padding=2, groups=2), "direct"),
    (C(2, 16, 70, 70, 40, 3, 3, padding=1), "direct"),
    (C(3, 16, 6, 6, 20, 3, 3, padding=1), "implicit_gemm"),
    (C(4, 32, 6, 6, 64, 3, 3, padding=1), "implicit_gemm"),  # images split over 2 threads
    (C(4, 32, 7, 7, 64, 3, 3, padding=1), "direct"),  # 7-wide rows, several images per task
    (C(3, 3, 40, 40, 40, 3, 3, padding=1), "implicit_gemm"),  # tiles inside each plane
    (C(4, 24, 16, 16, 64, 3, 3, padding=1), "direct"),  # images split over 2 threads
    (C(2, 3, 12, 12, 40, 3, 3, padding=1), "implicit_gemm"),
    # plane-wide dot products: few output channels, short reductions, ragged rows
    (C(3, 2, 12, 19, 5, 3, 3, padding=1), "direct_dot"),
    (C(2, 4, 15, 13, 8, 3, 2, stride=2, padding=(1, 0), dilation=(1, 2)), "direct_dot"),
    (C(3, 6, 11, 11, 6, 3, 3, padding=1, groups=2), "direct_dot"),
    (C(8, 1, 28, 28, 6, 5, 5), "direct_dot"),
    (C(2, 3, 10, 10, 4, 3, 3, padding=1, dtype="float64"), "direct_dot"),
    # up to 32 output channels with AVX-512's 4 x 6 dot tile: partial tiles both ways
    # (13 = 3 x 4 + 1 channels, 27 = 4 x 6 + 3 taps) and a masked row end (19 = 16 + 3)
    (C(3, 3, 20, 21, 32, 3, 3, padding=1), "direct_dot" if WIDE_DOT_TILE else "implicit_gemm"),
    (C(2, 3, 9, 19, 13, 3, 3, padding=1), "direct_dot" if WIDE_DOT_TILE else "implicit_gemm"),
]


@pytest.mark.parametrize(("case", "path"), WEIGHT_GRAD_CASES, ids=lambda v: str(v)[:60])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_weight_grad_paths_match_reference(case, path, n_threads, threads):
    chosen = fastconv.conv2d_weight_algorithm(
        case.input_shape, case.weight_shape, **case.args(), dtype=case.dtype
    )
    assert chosen == path, f"{case}: chosen {chosen}"
    threads(n_threads)
    check_weight_grad(case)


def _small_layer(in_shape, w_shape, stride, padding, dilation, groups, seed):
    """A layer of the table with batch 1 and the plane cut down to at most 16x16."""
    n, c, h, w = (1, *in_shape) if len(in_shape) == 3 else in_shape
    k, cg, r, s = w_shape
    h, w = min(h, 16), min(w, 16)
    c_small, k_small, g_small = c, k, groups
    if c * k * r * s > 20_000:  # keep the per-group structure, fewer groups/channels
        scale = 4 if groups == 1 else 1
        c_small, k_small = max(cg, c // scale), max(1, k // scale)
        if groups > 1:
            g_small = min(groups, 16)
            c_small, k_small = cg * g_small, k // groups * g_small
    return C(
        1,
        c_small,
        h,
        w,
        k_small,
        r,
        s,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=g_small,
        seed=seed,
    )


@pytest.mark.parametrize("index", range(len(LAYER_SET)), ids=[row[0] for row in LAYER_SET])
def test_layer_set_shapes_scaled_down(index):
    """The layer-set convolutions (batch 1, planes cut to 16x16, channels cut) against the
    reference, every algorithm forced, both gradients."""
    case = _small_layer(*LAYER_SET[index][1:7], seed=200 + index)
    check_all(case)


# --------------------------------------------------------------------------- vs PyTorch


@pytest.fixture
def torch():
    """PyTorch on one thread: its OpenMP pool would otherwise spin against fastconv's on a
    2-core machine and slow both down."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


def torch_conv(torch, case: Case, x, w, b, gy, with_bias_grad=False):
    """Forward, grad wrt input, grad wrt weight (and bias) from PyTorch autograd in float64."""
    tx = torch.tensor(f64(x), requires_grad=True)
    tw = torch.tensor(f64(w), requires_grad=True)
    tb = None if b is None else torch.tensor(f64(b), requires_grad=with_bias_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # padding='same' with an even kernel warns
        y = torch.nn.functional.conv2d(
            tx,
            tw,
            tb,
            stride=case.stride,
            padding=case.padding,
            dilation=case.dilation,
            groups=case.groups,
        )
    y.backward(torch.tensor(f64(gy)))
    if with_bias_grad:
        return y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()
    return y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy()


TORCH_CASES = HAND_CASES[::2] + GENERATED[::4]


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_vs_torch(case, torch):
    x, w, b, gy = make_data(case)
    y, gx, gw = torch_conv(torch, case, x, w, b, gy)
    assert_matches(fastconv.conv2d(x, w, b, **case.args()), y, case.k_forward(), case, "fwd")
    assert_matches(
        fastconv.conv2d_input(case.input_shape, w, gy, **case.args()),
        gx,
        case.k_input(),
        case,
        "conv2d_input",
    )
    assert_matches(
        fastconv.conv2d_weight(x, case.weight_shape, gy, **case.args()),
        gw,
        case.k_weight(),
        case,
        "conv2d_weight",
    )


@pytest.mark.parametrize("padding", [0, 2, (1, 3), "same", "valid"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_padding_forms_vs_torch(padding, dtype, torch):
    for i, (r, s, d) in enumerate([(3, 3, 1), (2, 4, 1), (4, 3, (2, 3)), (1, 6, 2), (5, 5, 1)]):
        case = C(2, 6, 13, 12, 10, r, s, padding=padding, dilation=d, dtype=dtype, seed=100 + i)
        if min(case.out_hw()) < 1:
            continue
        x, w, b, gy = make_data(case)
        y, gx, gw = torch_conv(torch, case, x, w, b, gy)
        assert_matches(fastconv.conv2d(x, w, b, **case.args()), y, case.k_forward(), case, "fwd")
        assert_matches(
            fastconv.conv2d_input(case.input_shape, w, gy, **case.args()),
            gx,
            case.k_input(),
            case,
            "conv2d_input",
        )
        assert_matches(
            fastconv.conv2d_weight(x, case.weight_shape, gy, **case.args()),
            gw,
            case.k_weight(),
            case,
            "conv2d_weight",
        )


@pytest.mark.parametrize("case", [c._replace(bias=True) for c in TORCH_CASES[::3]], ids=str)
def test_bias_grad_vs_torch(case, torch):
    x, w, b, gy = make_data(case)
    *_, gb = torch_conv(torch, case, x, w, b, gy, with_bias_grad=True)
    got = fastconv.conv2d_bias_grad(gy)
    assert got.shape == (case.k,)
    assert_matches(got, gb, case.k_weight(), case, "conv2d_bias_grad", exact=case.ints)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_bias_grad(dtype):
    rng = np.random.default_rng(70)
    for shape in [(1, 1, 1, 1), (3, 7, 5, 9), (2, 33, 1, 40), (4, 5, 31, 17)]:
        gy = rng.standard_normal(shape).astype(dtype)
        want = gy.astype(np.float64).sum(axis=(0, 2, 3))
        k = shape[0] * shape[2] * shape[3]
        got = fastconv.conv2d_bias_grad(gy)
        assert got.dtype == gy.dtype
        assert got.shape == (shape[1],)
        assert_close_scaled(got, want, k)
        assert_close_scaled(fastconv.conv2d_bias_grad(_strided_copy(gy, rng)), want, k)
        unbatched = fastconv.conv2d_bias_grad(gy[0])  # (K, OH, OW)
        assert_close_scaled(
            unbatched, gy[0].astype(np.float64).sum(axis=(1, 2)), shape[2] * shape[3]
        )
    ints = rng.integers(-3, 4, (3, 6, 11, 13)).astype(dtype)
    np.testing.assert_array_equal(fastconv.conv2d_bias_grad(ints), ints.sum(axis=(0, 2, 3)))
    empty = fastconv.conv2d_bias_grad(np.zeros((0, 5, 3, 3), dtype))
    assert empty.shape == (5,)
    assert empty.dtype == dtype
    np.testing.assert_array_equal(empty, np.zeros(5))


# --------------------------------------------------------------------------- layouts, batch


@pytest.mark.parametrize("case", [HAND_CASES[i] for i in (0, 8, 13, 18, 21, 26)], ids=str)
def test_unbatched_input(case):
    x, w, b, gy = make_data(case._replace(n=1))
    x3, gy3 = x[0], gy[0]
    out = fastconv.conv2d(x3, w, b, **case.args())
    assert out.shape == gy3.shape
    np.testing.assert_array_equal(out, fastconv.conv2d(x, w, b, **case.args())[0])
    for algorithm in ALGORITHMS:
        if not supports(algorithm, case):
            continue
        np.testing.assert_array_equal(
            fastconv.conv2d(x3, w, b, **case.args(), algorithm=algorithm),
            fastconv.conv2d(x, w, b, **case.args(), algorithm=algorithm)[0],
        )
    gx = fastconv.conv2d_input(x3.shape, w, gy3, **case.args())
    assert gx.shape == x3.shape
    np.testing.assert_array_equal(gx, fastconv.conv2d_input(x.shape, w, gy, **case.args())[0])
    np.testing.assert_array_equal(ref.conv2d_input(x3.shape, w, gy3, **case.args()).shape, x3.shape)
    gw = fastconv.conv2d_weight(x3, w.shape, gy3, **case.args())
    np.testing.assert_array_equal(gw, fastconv.conv2d_weight(x, w.shape, gy, **case.args()))


@pytest.mark.parametrize("case", [HAND_CASES[i] for i in (0, 8, 13, 18, 24)], ids=str)
def test_zero_size_batch(case):
    case = case._replace(n=0)
    x, w, b, gy = make_data(case)
    oh, ow = case.out_hw()
    for algorithm in (None, *ALGORITHMS):
        if algorithm is not None and not supports(algorithm, case):
            continue
        out = fastconv.conv2d(x, w, b, **case.args(), algorithm=algorithm)
        assert out.shape == (0, case.k, oh, ow)
        assert out.dtype == x.dtype
    gx = fastconv.conv2d_input(x.shape, w, gy, **case.args())
    assert gx.shape == x.shape
    assert gx.dtype == x.dtype
    gw = fastconv.conv2d_weight(x, w.shape, gy, **case.args())
    assert gw.shape == w.shape
    assert gw.dtype == x.dtype
    np.testing.assert_array_equal(gw, np.zeros(w.shape))


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


@pytest.mark.parametrize("case", [HAND_CASES[i] for i in (0, 2, 8, 9, 13, 17, 19, 23, 27)], ids=str)
def test_non_contiguous_arguments(case):
    rng = np.random.default_rng(case.seed)
    x, w, b, gy = make_data(case)
    want = fastconv.conv2d(x, w, b, **case.args())
    want_gx = fastconv.conv2d_input(x.shape, w, gy, **case.args())
    want_gw = fastconv.conv2d_weight(x, w.shape, gy, **case.args())
    for _ in range(2):
        xs, ws, gys = _strided_copy(x, rng), _strided_copy(w, rng), _strided_copy(gy, rng)
        bs = None if b is None else _strided_copy(b, rng)
        np.testing.assert_array_equal(fastconv.conv2d(xs, ws, bs, **case.args()), want)
        np.testing.assert_array_equal(
            fastconv.conv2d_input(x.shape, ws, gys, **case.args()), want_gx
        )
        np.testing.assert_array_equal(
            fastconv.conv2d_weight(xs, w.shape, gys, **case.args()), want_gw
        )
        for algorithm in ALGORITHMS:
            if not supports(algorithm, case):
                continue
            got = fastconv.conv2d(xs, ws, bs, **case.args(), algorithm=algorithm)
            np.testing.assert_array_equal(
                got,
                fastconv.conv2d(x, w, b, **case.args(), algorithm=algorithm),
                err_msg=f"non-contiguous, {algorithm}",
            )
    # the unbatched 3-D views of a strided batch
    x3 = _strided_copy(x[-1], rng)
    np.testing.assert_array_equal(fastconv.conv2d(x3, w, b, **case.args()), want[-1])


def test_inputs_are_not_modified():
    case = HAND_CASES[19]
    x, w, b, gy = make_data(case)
    copies = [a.copy() for a in (x, w, b, gy)]
    fastconv.conv2d(x, w, b, **case.args())
    fastconv.conv2d_input(x.shape, w, gy, **case.args())
    fastconv.conv2d_weight(x, w.shape, gy, **case.args())
    for before, after in zip(copies, (x, w, b, gy)):
        np.testing.assert_array_equal(before, after)


# --------------------------------------------------------------------------- finite differences


FD_CASES = [c._replace(dtype="float64", ints=False) for c in HAND_CASES[::4]] + [
    c._replace(dtype="float64", ints=False) for c in GENERATED[:6]
]


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_gradients_by_finite_differences(case):
    """L(x, w) = <conv2d(x, w, b), P> for a random projection P: the directional
    derivative along random V, from central differences of fastconv.conv2d, equals
    <conv2d_input(P), V> and <conv2d_weight(P), V>."""
    x, w, b, proj = make_data(case)
    rng = np.random.default_rng(case.seed + 1)
    gx = fastconv.conv2d_input(x.shape, w, proj, **case.args())
    gw = fastconv.conv2d_weight(x, w.shape, proj, **case.args())

    def loss(xx, ww):
        return float(np.vdot(fastconv.conv2d(xx, ww, b, **case.args()), proj))

    # L is affine in x and in w, so the central difference has no truncation error and a
    # large step keeps the rounding error small; what is left is float64 rounding in L.
    h = 0.5
    loss_terms = float(np.abs(fastconv.conv2d(x, w, b, **case.args()) * proj).sum())
    for _ in range(2):
        vx = rng.standard_normal(x.shape)
        vw = rng.standard_normal(w.shape)
        fd_x = (loss(x + h * vx, w) - loss(x - h * vx, w)) / (2 * h)
        fd_w = (loss(x, w + h * vw) - loss(x, w - h * vw)) / (2 * h)
        an_x, an_w = float(np.vdot(gx, vx)), float(np.vdot(gw, vw))
        tol_x = 1e-9 * (float(np.abs(gx * vx).sum()) + loss_terms / h)
        tol_w = 1e-9 * (float(np.abs(gw * vw).sum()) + loss_terms / h)
        assert (
            abs(fd_x - an_x) <= tol_x
        ), f"{case}: d/dx finite difference {fd_x} vs conv2d_input {an_x}"
        assert (
            abs(fd_w - an_w) <= tol_w
        ), f"{case}: d/dw finite difference {fd_w} vs conv2d_weight {an_w}"


def test_gradients_elementwise_by_finite_differences():
    """Each entry of both gradients of a small strided, dilated, grouped conv."""
    case = C(
        1,
        4,
        6,
        7,
        6,
        3,
        2,
        stride=(2, 1),
        padding=(1, 2),
        dilation=(1, 2),
        groups=2,
        dtype="float64",
        seed=55,
    )
    x, w, b, proj = make_data(case)
    gx = fastconv.conv2d_input(x.shape, w, proj, **case.args())
    gw = fastconv.conv2d_weight(x, w.shape, proj, **case.args())

    def loss(xx, ww):
        return float(np.vdot(fastconv.conv2d(xx, ww, b, **case.args()), proj))

    h = 1e-4
    for grad, arg in ((gx, 0), (gw, 1)):
        fd = np.empty_like(grad)
        base = [x, w]
        for idx in np.ndindex(grad.shape):
            plus = [a.copy() for a in base]
            minus = [a.copy() for a in base]
            plus[arg][idx] += h
            minus[arg][idx] -= h
            fd[idx] = (loss(*plus) - loss(*minus)) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- threads, determinism


DETERMINISM_CASES = [
    C(4, 16, 20, 20, 24, 3, 3, padding=1, seed=60),  # GEMM, tasks >= threads
    C(1, 32, 30, 30, 16, 3, 3, padding=1, seed=61),  # GEMM, one task
    C(3, 12, 18, 18, 12, 3, 3, padding=1, groups=12, seed=62),  # depthwise
    C(2, 64, 16, 16, 32, 1, 1, seed=63),  # pointwise
    C(5, 3, 24, 24, 8, 5, 5, stride=2, padding=2, seed=64),  # few input channels
]


@pytest.mark.parametrize("case", DETERMINISM_CASES, ids=str)
def test_bit_identical_repeats_at_fixed_thread_count(case, threads):
    x, w, b, gy = make_data(case)
    results = {}
    for nthreads in (1, 2):
        threads(nthreads)
        runs = [
            (
                fastconv.conv2d_weight(x, w.shape, gy, **case.args()).tobytes(),
                fastconv.conv2d(x, w, b, **case.args()).tobytes(),
                fastconv.conv2d_input(x.shape, w, gy, **case.args()).tobytes(),
            )
            for _ in range(3)
        ]
        for what, column in zip(("conv2d_weight", "conv2d", "conv2d_input"), zip(*runs)):
            assert len(set(column)) == 1, f"{what} differs between runs at {nthreads} threads"
        results[nthreads] = runs[0]
    # 1 and 2 threads: both accurate (bitwise equality is not promised for the weight grad)
    want_gw = ref.conv2d_weight(f64(x), w.shape, f64(gy), **case.args())
    want_y = ref.conv2d(f64(x), f64(w), f64(b), **case.args())
    want_gx = ref.conv2d_input(x.shape, f64(w), f64(gy), **case.args())
    for nthreads, (gw, y, gx) in results.items():
        assert_matches(
            np.frombuffer(gw, x.dtype).reshape(w.shape),
            want_gw,
            case.k_weight(),
            case,
            f"conv2d_weight at {nthreads} threads",
        )
        assert_matches(
            np.frombuffer(y, x.dtype).reshape(want_y.shape),
            want_y,
            case.k_forward(),
            case,
            f"conv2d at {nthreads} threads",
        )
        assert_matches(
            np.frombuffer(gx, x.dtype).reshape(x.shape),
            want_gx,
            case.k_input(),
            case,
            f"conv2d_input at {nthreads} threads",
        )


@pytest.mark.parametrize("case", [HAND_CASES[i] for i in (0, 9, 14, 19, 28)], ids=str)
def test_single_thread_matches_reference(case, threads):
    threads(1)
    check_all(case)


# --------------------------------------------------------------------------- ISA baseline


ISA_CASES = [HAND_CASES[i] for i in (0, 8, 9, 13, 15, 18, 19, 21, 28, 29)]


def compute_isa_cases() -> dict[str, np.ndarray]:
    out = {}
    for i, case in enumerate(ISA_CASES):
        x, w, b, gy = make_data(case)
        out[f"{i}_fwd"] = fastconv.conv2d(x, w, b, **case.args())
        for algorithm in ALGORITHMS:
            if not supports(algorithm, case):
                continue
            out[f"{i}_fwd_{algorithm}"] = fastconv.conv2d(
                x, w, b, **case.args(), algorithm=algorithm
            )
        out[f"{i}_gx"] = fastconv.conv2d_input(x.shape, w, gy, **case.args())
        out[f"{i}_gw"] = fastconv.conv2d_weight(x, w.shape, gy, **case.args())
    return out


@pytest.mark.parametrize("isa", ["baseline", "avx2+fma"])
def test_lower_isa_agrees_with_default(isa):
    """Every lower ISA tier's kernels (switched in-process) agree with the default's."""
    tiers = fastconv._cpu.isa_tiers()
    if isa not in tiers[:-1]:
        pytest.skip(f"this CPU's default tier is {tiers[-1]}: nothing above {isa}")
    mine = compute_isa_cases()
    with fastconv._cpu.use_isa(isa):
        assert fastconv._cpu.isa() == isa
        kernel = {"baseline": "portable", "avx2+fma": "avx2"}[isa]
        assert kernel in fastconv._cpu.gemm_kernels("float32")[-1], "registry"
        theirs = compute_isa_cases()
    assert fastconv._cpu.isa() == tiers[-1]
    assert sorted(theirs) == sorted(mine)
    for key, value in mine.items():
        case = ISA_CASES[int(key.split("_")[0])]
        k = {"gx": case.k_input(), "gw": case.k_weight()}.get(key.split("_")[1], case.k_forward())
        assert_matches(value, theirs[key], k, case, f"{key}: default vs {isa} ISA")


# --------------------------------------------------------------------------- hypothesis


@st.composite
def conv_cases(draw):
    style = draw(st.sampled_from(["dense", "grouped", "depthwise", "multiplier"]))
    if style == "dense":
        groups, cg, kg = 1, draw(st.integers(1, 12)), draw(st.integers(1, 12))
    elif style == "grouped":
        groups, cg, kg = (
            draw(st.sampled_from([2, 3, 4])),
            draw(st.integers(1, 8)),
            draw(st.integers(1, 8)),
        )
    elif style == "depthwise":
        groups, cg, kg = draw(st.integers(2, 10)), 1, 1
    else:
        groups, cg, kg = draw(st.integers(2, 8)), 1, draw(st.integers(2, 4))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(
        st.one_of(
            st.just("same"), st.just("valid"), st.tuples(st.integers(0, 3), st.integers(0, 3))
        )
    )
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = ref.conv_padding(padding, (kh, kw), dilation)
    dims = []
    for k, d, (lo, hi) in zip((kh, kw), dilation, pads):
        smallest = max(1, (k - 1) * d + 1 - lo - hi)
        dims.append(smallest + draw(st.integers(0, 20)))
    return Case(
        draw(st.integers(1, 3)),
        groups * cg,
        dims[0],
        dims[1],
        groups * kg,
        kh,
        kw,
        stride,
        padding,
        dilation,
        groups,
        draw(st.booleans()),
        draw(st.sampled_from(sorted(DTYPES))),
        draw(st.booleans()),
        draw(st.integers(0, 2**31 - 1)),
    )


FUZZ = fuzz_settings(50)


def _prepare_failure_report():
    """When a hypothesis test fails, its pytest plugin imports hypothesis.extra._patching
    (libcst), which emits a DeprecationWarning; under filterwarnings=error the failure report
    would become an INTERNALERROR. Importing it first, warnings silenced, keeps it readable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(ImportError):  # libcst not installed
            import hypothesis.extra._patching  # noqa: F401


@FUZZ
@given(conv_cases())
def test_fuzz_against_reference(case):
    try:
        check_all(case)
    except BaseException:
        _prepare_failure_report()
        raise


# Pointwise layers on 1x1 planes (squeeze-excitation, the last stage of small inputs)
# run one GEMM across the batch per group instead of one matrix-vector product per image.
@pytest.mark.parametrize(
    ("n", "c", "k", "groups", "bias"),
    [(32, 64, 40, 1, True), (5, 12, 8, 4, False), (1, 8, 6, 2, True), (7, 16, 16, 16, True)],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_pointwise_on_single_pixel_planes(n, c, k, groups, bias, dtype):
    rng = np.random.default_rng(n + c)
    x = rng.standard_normal((n, c, 1, 1)).astype(dtype)
    w = rng.standard_normal((k, c // groups, 1, 1)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if bias else None
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    y = fastconv.conv2d(x, w, b, groups=groups)
    assert fastconv.last_algorithms()["conv2d"] == "pointwise_gemm"
    assert_close_scaled(y, ref.conv2d(x64, w64, b64, groups=groups), k=c // groups + 1)
    gy = rng.standard_normal(y.shape).astype(dtype)
    strided_gy = np.repeat(gy, 2, axis=1)[:, ::2]
    gx = fastconv.conv2d_input(x.shape, w, strided_gy, groups=groups)
    want = ref.conv2d_input(x.shape, w64, gy.astype(np.float64), groups=groups)
    assert_close_scaled(gx, want, k=k // groups)
    gw = fastconv.conv2d_weight(x, w.shape, gy, groups=groups)
    want = ref.conv2d_weight(x64, w.shape, gy.astype(np.float64), groups=groups)
    assert_close_scaled(gw, want, k=n)
