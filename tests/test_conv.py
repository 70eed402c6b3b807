"""Conv2d on the CPU: forward, conv2d_input, conv2d_weight and the algorithm selector.

Every result is checked against ``fastconv.reference`` (evaluated in float64 on the same
inputs) over a broad generated set: kernels 1-7 (non-square), stride 1-3, padding 0-3 /
pairs / 'same' / 'valid', dilation 1-3, groups 1/2/4/depthwise/channel multiplier, odd
channel counts, 1x1 spatial inputs, kernels as large as the padded input, bias or not,
float32 and float64. Integer-valued inputs (a part of every set) make every summation
order exact: those results must equal the reference bit for bit. The others use the
tolerance of ``helpers.assert_close_scaled``, scaled by the reduction length: Cg*R*S for
the forward pass (+1 with a bias), Kg*R*S for conv2d_input and N*OH*OW for conv2d_weight.
The cases and checks are in ``conv_helpers``.

Every algorithm of ``fastconv.CONV2D_ALGORITHMS`` is forced on every case: on the shapes it
is chosen for and on shapes it is not. The pointwise algorithm (1x1, stride 1, unpadded
only) must refuse other shapes with ValueError; it is identified by what the selector
picks for a plain 1x1 layer, not by its name. Only the selector-table tests name
algorithms.

Also here: each weight-gradient path on shapes it is chosen for, pointwise layers on 1x1
planes, and unbatched, zero-size and non-contiguous arguments. The checks against PyTorch
and finite differences are in ``test_conv_torch``; thread counts, ISA tiers and the
hypothesis fuzz in ``test_conv_isa``.
"""

from __future__ import annotations

import numpy as np
import pytest
from conv_helpers import (
    ALGORITHMS,
    ALL_CASES,
    DTYPES,
    GENERATED,
    HAND_CASES,
    POINTWISE,
    RESTRICTED,
    C,
    _strided_copy,
    check_all,
    check_forward,
    check_input_grad,
    check_weight_grad,
    chosen_algorithm,
    make_data,
    supports,
)
from helpers import assert_close_scaled

import fastconv
from fastconv import reference as ref

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


@pytest.mark.parametrize("case", [c for c in HAND_CASES if not supports(POINTWISE, c)][:8], ids=str)
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
    ("cifar_resnet50_3x3s2_8", (8, 512, 8, 8), (512, 512, 3, 3), 2, 1, 1, 1, "implicit_gemm"),
    ("batch1_3x3s2_8", (1, 512, 8, 8), (512, 512, 3, 3), 2, 1, 1, 1, "direct"),
    ("resnet_3x3s2_56", (8, 64, 56, 56), (128, 64, 3, 3), 2, 1, 1, 1, "direct"),
    ("late_3x3_4", (8, 256, 4, 4), (512, 256, 3, 3), 1, 1, 1, 1, "implicit_gemm"),
    ("late_3x3_4_narrow", (8, 128, 4, 4), (128, 128, 3, 3), 1, 1, 1, 1, "direct"),
    ("late_3x3_2", (8, 512, 2, 2), (512, 512, 3, 3), 1, 1, 1, 1, "implicit_gemm"),
    ("downsample_1x1s2", (8, 256, 14, 14), (512, 256, 1, 1), 2, 0, 1, 1, "implicit_gemm"),
    ("squeeze_1x1_plane", (32, 1152, 1, 1), (48, 1152, 1, 1), 1, 0, 1, 1, "pointwise_gemm"),
    ("efficientnet_dw5x5_7", (32, 672, 7, 7), (672, 1, 5, 5), 1, 2, 1, 672, "depthwise"),
    ("mobilenet_dw3x3s2_14", (1, 576, 14, 14), (576, 1, 3, 3), 2, 1, 1, 576, "depthwise"),
    ("grouped_g4_14", (8, 256, 14, 14), (256, 64, 3, 3), 1, 1, 1, 4, "direct"),
    ("batch1_3x3_14", (1, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1, 1, "winograd"),
    # at most four output pixels over the batch: the GEMM's small-N path
    ("batch1_3x3_2", (1, 512, 2, 2), (512, 512, 3, 3), 1, 1, 1, 1, "implicit_gemm"),
    ("batch4_3x3s2_2", (4, 256, 2, 2), (512, 256, 3, 3), 2, 1, 1, 1, "implicit_gemm"),
    # depthwise with a channel multiplier: blocks up to 8, rows up to 4, else direct
    ("depthwise_blocks_multiplier_8", (4, 16, 14, 14), (128, 1, 3, 3), 1, 1, 1, 16, "depthwise"),
    ("depthwise_blocks_multiplier_16", (4, 16, 14, 14), (256, 1, 3, 3), 1, 1, 1, 16, "direct"),
    ("depthwise_rows_multiplier_4", (2, 16, 112, 112), (64, 1, 3, 3), 1, 1, 1, 16, "depthwise"),
    ("depthwise_rows_multiplier_6", (2, 16, 112, 112), (96, 1, 3, 3), 1, 1, 1, 16, "direct"),
    ("depthwise_blocks_56_multiplier_6", (4, 16, 56, 56), (96, 1, 3, 3), 1, 1, 1, 16, "depthwise"),
    ("grouped_c8_k160_g8", (8, 8, 56, 56), (160, 1, 3, 3), 1, 1, 1, 8, "direct"),
    ("depthwise_1x1_multiplier_20", (4, 16, 7, 7), (320, 1, 1, 1), 1, 1, 1, 16, "depthwise"),
]

# The input and weight gradients of depthwise layers with a channel multiplier
# (conv2d_input_algorithm, conv2d_weight_algorithm).
DEPTHWISE_GRADIENT_TABLE = [
    ((4, 16, 14, 14), (96, 1, 3, 3), "depthwise", "direct_dot"),
    ((4, 16, 14, 14), (128, 1, 3, 3), "implicit_gemm (col2im)", "direct_dot"),
    ((2, 16, 112, 112), (96, 1, 3, 3), "direct (transposed)", "direct_dot"),
    ((4, 16, 56, 56), (96, 1, 3, 3), "depthwise", "direct_dot"),
    ((8, 8, 56, 56), (160, 1, 3, 3), "implicit_gemm (col2im)", "direct"),
    ((4, 16, 56, 56), (16, 1, 3, 3), "depthwise (transposed)", "depthwise"),
]


@pytest.mark.parametrize(
    ("in_shape", "w_shape", "input_grad", "weight_grad"), DEPTHWISE_GRADIENT_TABLE
)
def test_depthwise_gradient_selectors(in_shape, w_shape, input_grad, weight_grad):
    kw = dict(padding=1, groups=in_shape[1])
    assert fastconv.conv2d_input_algorithm(in_shape, w_shape, **kw) == input_grad
    assert fastconv.conv2d_weight_algorithm(in_shape, w_shape, **kw) == weight_grad


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
# gathered-A kernel ("direct") for rows >= 10 wide (>= 7 below 64 MFLOP, >= 16 for one
# image; >= 4 over at least 512 output pixels of several images; any width for 5x5 and
# larger kernels over several images), plane-wide dot products ("direct_dot") for
# reductions < 64 with <= 8 output channels per group, GEMM otherwise. The same on every
# ISA tier.
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
    "cifar_first_3x3": "direct",
    "lenet_5x5": "direct_dot",
}


@pytest.mark.parametrize(
    ("in_shape", "w_shape", "expected"),
    [
        ((1, 144, 14, 14), (288, 144, 3, 3), "implicit_gemm"),  # one image, 14 wide
        ((8, 144, 14, 14), (288, 144, 3, 3), "direct"),
        ((1, 128, 28, 28), (128, 128, 3, 3), "direct"),
    ],
)
def test_weight_grad_selector_for_a_single_image(in_shape, w_shape, expected):
    """One image runs the gathered-A kernel only on rows at least 16 wide."""
    assert fastconv.conv2d_weight_algorithm(in_shape, w_shape, padding=1) == expected


@pytest.mark.parametrize("row", LAYER_SET, ids=[row[0] for row in LAYER_SET])
def test_weight_grad_selector_table(row):
    name, in_shape, w_shape, stride, padding, dilation, groups, _ = row
    got = fastconv.conv2d_weight_algorithm(in_shape, w_shape, stride, padding, dilation, groups)
    assert got == WEIGHT_GRAD_TABLE[name]


def test_weight_grad_selector_is_the_same_on_every_tier():
    for row in LAYER_SET:
        for isa in fastconv._cpu.isa_tiers():
            with fastconv._cpu.use_isa(isa):
                got = fastconv.conv2d_weight_algorithm(*row[1:7])
            assert got == WEIGHT_GRAD_TABLE[row[0]], (row[0], isa)


# Each weight-gradient path on shapes it is chosen for, at 1 and 2 threads: the gathered
# kernel with partial tap blocks, output-channel slivers, tasks spanning several images
# (small planes) or bands of one image (large planes), stride, dilation and groups.
WEIGHT_GRAD_CASES = [
    (C(6, 8, 10, 9, 20, 3, 3, padding=1), "direct"),  # 9-wide rows, 540 pixels
    (C(2, 5, 40, 37, 70, 3, 5, stride=2, padding=(1, 2)), "direct"),
    (C(1, 16, 12, 30, 8, 3, 3, dilation=2, padding=2, groups=2), "direct"),
    (C(2, 16, 70, 70, 40, 3, 3, padding=1), "direct"),
    (C(3, 16, 6, 6, 20, 3, 3, padding=1), "implicit_gemm"),
    (C(4, 32, 6, 6, 64, 3, 3, padding=1), "implicit_gemm"),  # images split over 2 threads
    (C(11, 32, 7, 7, 64, 3, 3, padding=1), "direct"),  # 7-wide rows, several images per task
    (C(3, 3, 40, 40, 40, 1, 1), "implicit_gemm"),  # tiles inside each plane
    (C(4, 24, 16, 16, 64, 3, 3, padding=1), "direct"),  # images split over 2 threads
    (C(2, 3, 12, 12, 40, 3, 3, padding=1), "direct"),
    (C(3, 4, 10, 8, 24, 5, 5, padding=2), "direct"),  # 5x5 on 8-wide rows
    # plane-wide dot products: few output channels, short reductions, ragged rows
    (C(3, 2, 12, 19, 5, 3, 3, padding=1), "direct_dot"),
    (C(2, 4, 15, 13, 8, 3, 2, stride=2, padding=(1, 0), dilation=(1, 2)), "direct_dot"),
    (C(3, 6, 11, 11, 6, 3, 3, padding=1, groups=2), "direct_dot"),
    (C(8, 1, 28, 28, 6, 5, 5), "direct_dot"),
    (C(2, 3, 10, 10, 4, 3, 3, padding=1, dtype="float64"), "direct_dot"),
    # more than 8 output channels run the gathered kernel; check_weight_grad forces the
    # dot tiles too: partial tiles both ways (13 = 3 x 4 + 1 channels, 27 = 4 x 6 + 3
    # taps) and a masked row end (19 = 16 + 3)
    (C(3, 3, 20, 21, 32, 3, 3, padding=1), "direct"),
    (C(2, 3, 9, 19, 13, 3, 3, padding=1), "direct"),
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


# Pointwise layers on 1x1 planes (squeeze-excitation, the last stage of small inputs)
# run one GEMM across the batch per group instead of one matrix-vector product per image.
@pytest.mark.parametrize(
    ("n", "c", "k", "groups", "bias"),
    [(32, 64, 40, 1, True), (5, 12, 8, 4, False), (1, 8, 6, 2, True), (7, 16, 32, 4, True)],
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


# Kernel rows and columns that only ever read padding (a 3x3 kernel on a 1x1 plane, a
# 5x5 kernel on a 2x2 plane) are cut off before any pass runs: the result is the same.
LIVE_TAP_CASES = [
    # (N, C, H, W, K, R, S, stride, padding, groups), expected forward algorithm
    ((4, 32, 1, 1, 48, 3, 3, 1, 1, 1), "pointwise_gemm"),  # only the centre tap
    ((2, 16, 2, 2, 24, 5, 5, 1, 2, 1), "direct"),  # 5x5 -> 3x3
    ((5, 8, 2, 2, 8, 3, 3, 2, 1, 1), "direct"),  # stride 2: 3x3 -> 2x2 (5 pixels: not GEMV-like)
    ((2, 12, 1, 3, 12, 3, 3, 1, 1, 12), "depthwise"),  # rows cut, columns kept
    ((5, 20, 1, 1, 20, 5, 5, 1, 2, 20), "depthwise"),
    ((1, 6, 3, 1, 4, 7, 7, 1, 3, 2), "direct"),  # grouped, columns cut
]


@pytest.mark.parametrize(("shape", "expected"), LIVE_TAP_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_dead_taps_are_cut(shape, expected, dtype):
    n, c, h, w, k, r, s, stride, padding, groups = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c // groups, r, s)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    kw = {"stride": stride, "padding": padding, "groups": groups}
    assert fastconv.conv2d_algorithm(x.shape, wt.shape, **kw, dtype=dtype) == expected
    x64, w64 = x.astype(np.float64), wt.astype(np.float64)
    y = fastconv.conv2d(x, wt, b, **kw)
    assert fastconv.last_algorithms()["conv2d"] == expected
    red = c // groups * r * s
    assert_close_scaled(y, ref.conv2d(x64, w64, b.astype(np.float64), **kw), k=red + 1)
    forced = fastconv.conv2d(x, wt, b, **kw, algorithm="implicit_gemm")
    assert_close_scaled(y, forced, k=red + 1)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = fastconv.conv2d_input(x.shape, wt, gy, **kw)
    want = ref.conv2d_input(x.shape, w64, gy.astype(np.float64), **kw)
    assert_close_scaled(gx, want, k=k // groups * r * s)
    gw = fastconv.conv2d_weight(x, wt.shape, gy, **kw)
    want = ref.conv2d_weight(x64, wt.shape, gy.astype(np.float64), **kw)
    assert_close_scaled(gw, want, k=n * y.shape[2] * y.shape[3])
    # Forcing the selector's choice runs the same sums, on the live taps too (a 3x3
    # kernel whose centre tap alone reads the input is a pointwise GEMM).
    np.testing.assert_array_equal(fastconv.conv2d(x, wt, b, **kw, algorithm=expected), y)
    if (h, w) != (1, 1):  # (on 1x1 planes, every live window here is a single tap)
        with pytest.raises(ValueError, match="pointwise_gemm"):
            fastconv.conv2d(x, wt, b, **kw, algorithm="pointwise_gemm")


def test_one_output_or_one_tap_geometry_is_made_plain():
    """A stride along a dimension with one output, or a dilation along one with a
    one-tap kernel, cannot change the result: the passes run without it (a 1x1 layer
    with stride 5 on a 1x1 plane is a pointwise GEMM)."""
    x = np.arange(16, dtype=np.float32).reshape(2, 8, 1, 1)
    w = np.ones((4, 8, 1, 1), np.float32)
    kw = {"stride": 5, "dilation": 3}
    assert fastconv.conv2d_algorithm(x.shape, w.shape, **kw) == "pointwise_gemm"
    np.testing.assert_array_equal(fastconv.conv2d(x, w, **kw), fastconv.conv2d(x, w))


def test_kernels_longer_than_the_output_match_the_reference():
    """Live taps found by walking the outputs (kernels longer than the output): random
    geometry, float64, every pass against the reference. Planes 1-6, kernels 1-11,
    stride 1-4, dilation 1-3, padding up to the kernel's reach."""
    rng = np.random.default_rng(20261202)
    checked = 0
    while checked < 60:
        h, w = rng.integers(1, 7, 2)
        r, s = rng.integers(1, 12, 2)
        stride, dilation = tuple(rng.integers(1, 5, 2)), tuple(rng.integers(1, 4, 2))
        padding = tuple(int(rng.integers(0, (k - 1) * d + 1)) for k, d in zip((r, s), dilation))
        out = [
            (n + 2 * p - d * (k - 1) - 1) for n, p, d, k in zip((h, w), padding, dilation, (r, s))
        ]
        if min(out) < 0 or max(r, s) <= min(o // st + 1 for o, st in zip(out, stride)):
            continue
        kw = {"stride": stride, "padding": padding, "dilation": dilation}
        x, wt = rng.standard_normal((2, 3, h, w)), rng.standard_normal((4, 3, r, s))
        y = fastconv.conv2d(x, wt, **kw)
        np.testing.assert_allclose(y, ref.conv2d(x, wt, **kw), atol=1e-12)
        gy = rng.standard_normal(y.shape)
        np.testing.assert_allclose(
            fastconv.conv2d_input(x.shape, wt, gy, **kw),
            ref.conv2d_input(x.shape, wt, gy, **kw),
            atol=1e-12,
        )
        np.testing.assert_allclose(
            fastconv.conv2d_weight(x, wt.shape, gy, **kw),
            ref.conv2d_weight(x, wt.shape, gy, **kw),
            atol=1e-12,
        )
        checked += 1


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    ("in_hw", "kernel", "stride", "groups"),
    [((14, 14), 3, 2, 1), ((16, 13), 2, 2, 2), ((9, 11), 5, 2, 1), ((7, 8), 3, 1, 2)],
)
def test_col2im_pixel_major_tiles(batch, dtype, in_hw, kernel, stride, groups):
    """conv2d_input's GEMM + col2im on planes of at most 64 output pixels: a single
    image's tiles run pixel-major, several images' W^T is packed once."""
    rng = np.random.default_rng(sum(in_hw) + kernel + batch)
    x_shape = (batch, 6 * groups, *in_hw)
    w = rng.standard_normal((10 * groups, 6, kernel, kernel)).astype(dtype)
    kw = {"stride": stride, "padding": kernel // 2, "groups": groups}
    out = fastconv.conv2d(np.zeros(x_shape, dtype), w, **kw)
    assert out.shape[2] * out.shape[3] <= 64
    gy = rng.standard_normal(out.shape).astype(dtype)
    got = fastconv.conv2d_input(x_shape, w, gy, **kw, algorithm="implicit_gemm (col2im)")
    want = ref.conv2d_input(x_shape, w.astype(np.float64), gy.astype(np.float64), **kw)
    assert_close_scaled(got, want, k=10 * kernel * kernel)


# At most four output pixels over the whole batch: implicit GEMM reads the weights in
# place through the GEMM's small-N path (chosen for these, and forced here onto a
# strided input, bias or none, float32 and float64, every batch size up to four).
FEW_PIXEL_CASES = [
    C(1, 64, 2, 2, 96, 3, 3, padding=1),
    C(2, 40, 3, 3, 70, 3, 3, stride=2),
    C(4, 33, 2, 2, 17, 3, 3, stride=2, padding=1, bias=False),
    C(3, 24, 1, 1, 130, 3, 3, padding=1),
]


@pytest.mark.parametrize("case", FEW_PIXEL_CASES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_few_pixel_implicit_gemm(case, dtype):
    case = case._replace(dtype=dtype)
    x, w, b, _ = make_data(case)
    args = case.args()
    strided = _strided_copy(x, np.random.default_rng(0))
    y = fastconv.conv2d(strided, w, b, **args, algorithm="implicit_gemm")
    bias64 = None if b is None else b.astype(np.float64)
    want = ref.conv2d(x.astype(np.float64), w.astype(np.float64), bias64, **args)
    assert y.shape[0] * y.shape[2] * y.shape[3] <= 4
    assert_close_scaled(y, want, k=w.shape[1] * w.shape[2] * w.shape[3] + 1)


def test_an_input_gradient_whose_transposed_problem_is_depthwise():
    """Groups 2, two input channels per group and one output each: the flipped forward
    of its input gradient is depthwise, which the selector names 'depthwise
    (transposed)'; forcing that name runs the same plan (found by the fuzz slice)."""
    case = C(3, 4, 3, 18, 2, 1, 2, padding="same", groups=2, bias=False)
    x, w, _, gy = make_data(case)
    chosen = fastconv.conv2d_input_algorithm(case.input_shape, case.weight_shape, **case.args())
    assert chosen == "depthwise (transposed)"
    got = fastconv.conv2d_input(x.shape, w, gy, **case.args())
    forced = fastconv.conv2d_input(x.shape, w, gy, **case.args(), algorithm=chosen)
    assert forced.tobytes() == got.tobytes()
    want = ref.conv2d_input(x.shape, w.astype(np.float64), gy.astype(np.float64), **case.args())
    assert_close_scaled(got, want, k=2 * 1 * 2 + 1)
