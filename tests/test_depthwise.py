"""Depthwise convolution: the channel-blocked kernels (output rows under 64 wide) and the
row kernels (wider rows), forward and both gradients, against the float64 reference.

Both sides of the threshold, channel multipliers 1 to 16 (a 64-byte block holds 16 float32
lanes) and above, every stride, dilation and padding the networks use, channel counts that
leave a partial block, float32 and float64, strided views, every ISA tier.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close_scaled

import fastconv
from fastconv import _cpu
from fastconv import reference as ref

# (N, C, H, W, multiplier, kernel, stride, padding, dilation)
CASES = [
    (2, 20, 7, 7, 1, 3, 1, 1, 1),  # small plane, partial block (20 = 16 + 4)
    (3, 16, 1, 1, 1, 3, 1, 1, 1),  # 1x1 plane: every tap but the centre reads padding
    (4, 6, 1, 1, 3, 3, 2, 1, 1),  # ... with multiplier 3 and stride 2: one product each
    (3, 2, 1, 1, 17, 3, 1, 1, 1),  # ... with more lanes than a block
    (2, 24, 4, 5, 1, 5, 1, 2, 1),
    (2, 33, 12, 12, 1, 3, 2, 1, 1),  # strided: dX scatters
    (1, 8, 13, 11, 2, 3, 2, 0, 1),  # multiplier 2, no padding
    (2, 6, 9, 9, 3, 5, 1, 2, 2),  # multiplier 3, dilation 2
    (1, 3, 10, 10, 16, 3, 1, 1, 1),  # a whole float32 block per channel
    (1, 2, 8, 8, 17, 3, 1, 1, 1),  # more lanes than a block: the row kernels
    (2, 12, 27, 27, 1, 7, 1, 3, 1),  # 27 wide: blocks, 8-pixel tiles and a tile of 3
    (1, 10, 28, 30, 1, 3, 1, 1, 1),  # 30 wide: blocks
    (1, 12, 56, 56, 1, 3, 2, 1, 1),  # 28 wide after stride 2: blocks
    (1, 4, 20, 63, 1, 3, 1, 1, 1),  # 63 wide: blocks
    (1, 4, 9, 64, 1, 3, 1, 1, 1),  # 64 wide: rows
    (1, 5, 6, 130, 1, 3, 2, 1, 1),  # 65 wide after stride 2: rows
    (2, 17, 6, 9, 1, 1, 1, 1, 1),  # 1x1 depthwise, padded
    (3, 19, 5, 4, 1, 1, 1, 0, 1),  # 1x1 depthwise: a per-channel scale, not a GEMM
    (1, 40, 14, 14, 1, 3, 1, 3, 3),  # padding as wide as the dilated kernel
]


def make(case, dtype, seed=0):
    n, c, h, w, m, r, _, _, _ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((c * m, 1, r, r)).astype(dtype)
    b = rng.standard_normal(c * m).astype(dtype)
    return x, wt, b


def kwargs(case):
    c = case[1]
    return {"stride": case[6], "padding": case[7], "dilation": case[8], "groups": c}


def check_all_passes(case, dtype, x=None, wt=None, b=None):
    if x is None:
        x, wt, b = make(case, dtype)
    kw = kwargs(case)
    r = case[5]
    x64, w64, b64 = (a.astype(np.float64) for a in (x, wt, b))
    # Forced: the selector sends large multipliers to the general kernels, and these
    # cases are for the depthwise ones.
    y = fastconv.conv2d(x, wt, b, **kw, algorithm="depthwise")
    assert fastconv.last_algorithms()["conv2d"] == "depthwise"
    assert_close_scaled(y, ref.conv2d(x64, w64, b64, **kw), k=r * r + 1, err_msg="forward")
    if case[4] <= 4:
        assert fastconv.conv2d(x, wt, b, **kw).tobytes() == y.tobytes()
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gx = fastconv.conv2d_input(x.shape, wt, gy, **kw)
    want = ref.conv2d_input(x.shape, w64, gy.astype(np.float64), **kw)
    assert_close_scaled(gx, want, k=r * r * case[4], err_msg="input gradient")
    gw = fastconv.conv2d_weight(x, wt.shape, gy, **kw, algorithm="depthwise")
    want = ref.conv2d_weight(x64, wt.shape, gy.astype(np.float64), **kw)
    assert_close_scaled(gw, want, k=y.shape[0] * y.shape[2] * y.shape[3], err_msg="weight gradient")
    return y, gx, gw


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_every_pass_matches_the_reference(case, dtype):
    check_all_passes(case, dtype)


@pytest.mark.parametrize("case", CASES[:6], ids=str)
def test_every_tier_agrees(case):
    for tier in _cpu.isa_tiers():
        with _cpu.use_isa(tier):
            check_all_passes(case, np.float32)


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[9]], ids=str)
def test_strided_views(case):
    x, wt, b = make(case, np.float32)
    view = np.repeat(x, 2, axis=3)[..., ::2]
    w_view = np.ascontiguousarray(wt.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    y, gx, gw = check_all_passes(case, np.float32, view, w_view, b)
    np.testing.assert_array_equal(
        y, fastconv.conv2d(x, wt, b, **kwargs(case), algorithm="depthwise")
    )


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[8]], ids=str)
def test_bit_identical_for_any_thread_count(case, threads):
    x, wt, b = make(case, np.float32)
    kw = kwargs(case)
    results = []
    for n_threads in (1, 2):
        threads(n_threads)
        y = fastconv.conv2d(x, wt, b, **kw)
        gy = np.ones_like(y)
        results.append(
            (
                y,
                fastconv.conv2d_input(x.shape, wt, gy, **kw),
                fastconv.conv2d_weight(x, wt.shape, gy, **kw),
            )
        )
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_forced_depthwise_on_a_dense_layer_still_sums_the_group():
    """algorithm='depthwise' on a layer that is not depthwise takes the row kernels."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    got = fastconv.conv2d(x, w, padding=1, groups=4, algorithm="depthwise")
    assert_close_scaled(got, ref.conv2d(x, w, padding=1, groups=4), k=18)


def test_far_reaching_taps_stay_bounded():
    """A tiny output whose taps reach far (a 3x3 output of a 1x1 plane with stride and
    padding 2000: a block would span 4001 x 4001 pixels, 1 GB) must not size a block by
    the reach: the row kernels take it, with the right result."""
    x = np.ones((1, 2, 1, 1), np.float32)
    w = np.ones((2, 1, 1, 1), np.float32)
    kw = {"stride": 2000, "padding": 2000, "groups": 2}
    y = fastconv.conv2d(x, w, **kw)
    gy = np.ones_like(y)
    np.testing.assert_array_equal(y, ref.conv2d(x, w, **kw))
    np.testing.assert_array_equal(
        fastconv.conv2d_input(x.shape, w, gy, **kw), ref.conv2d_input(x.shape, w, gy, **kw)
    )
    np.testing.assert_array_equal(
        fastconv.conv2d_weight(x, w.shape, gy, **kw), ref.conv2d_weight(x, w.shape, gy, **kw)
    )
