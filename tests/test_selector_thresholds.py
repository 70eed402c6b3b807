"""The selectors' named thresholds: reading, replacing, refusing, and that a change
moves only the choice of algorithm, never the result."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastconv
from fastconv import autotune, reference

# 8 images of 64 channels, 5x5 kernels on 14x14 outputs: direct in every pass.
SHAPE, WEIGHT, PADDING = (8, 64, 14, 14), (64, 64, 5, 5), 2


@pytest.fixture(autouse=True)
def built_in_thresholds():
    autotune.set_thresholds(**autotune.thresholds(defaults=True))
    yield
    autotune.set_thresholds(**autotune.thresholds(defaults=True))


def plans():
    args = (SHAPE, WEIGHT, 1, PADDING)
    return (
        fastconv.conv2d_algorithm(*args),
        fastconv.conv2d_input_algorithm(*args),
        fastconv.conv2d_weight_algorithm(*args),
    )


def test_thresholds_are_named_non_negative_ints():
    values = autotune.thresholds()
    assert values == autotune.thresholds(defaults=True)
    assert "direct_min_out_w" in values
    assert all(isinstance(v, int) and v >= 0 for v in values.values())


def test_a_threshold_moves_the_choice_and_not_the_result():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(SHAPE)
    w = rng.standard_normal(WEIGHT)
    gy = rng.standard_normal((8, 64, 14, 14))
    assert plans() == ("direct", "direct (transposed)", "direct")
    autotune.set_thresholds(
        direct_min_out_w=15,
        direct_weight_grad_min_out_w=15,
        direct_weight_grad_min_taps_any_width=26,
        direct_weight_grad_min_pixels=2**40,
    )
    assert plans() == ("implicit_gemm", "implicit_gemm (transposed)", "implicit_gemm")
    assert autotune.thresholds()["direct_min_out_w"] == 15
    np.testing.assert_allclose(
        fastconv.conv2d(x, w, padding=PADDING),
        reference.conv2d(x, w, None, 1, PADDING),
        rtol=1e-11,
        atol=1e-11,
    )
    np.testing.assert_allclose(
        fastconv.conv2d_input(SHAPE, w, gy, padding=PADDING),
        reference.conv2d_input(SHAPE, w, gy, 1, PADDING),
        rtol=1e-11,
        atol=1e-11,
    )
    np.testing.assert_allclose(
        fastconv.conv2d_weight(x, WEIGHT, gy, padding=PADDING),
        reference.conv2d_weight(x, WEIGHT, gy, 1, PADDING),
        rtol=1e-11,
        atol=1e-10,
    )
    autotune.set_thresholds(**autotune.thresholds(defaults=True))
    assert plans() == ("direct", "direct (transposed)", "direct")


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"direct_min_out_w": 5, "no_such_threshold": 1}, ValueError, "no_such_threshold"),
        ({"direct_min_out_w": -1}, ValueError, "direct_min_out_w must be in"),
        ({"direct_min_out_w": 2**63}, ValueError, "direct_min_out_w must be in"),
        ({"direct_min_out_w": True}, TypeError, "direct_min_out_w must be an int"),
        ({"direct_min_out_w": 4.0}, TypeError, "direct_min_out_w must be an int"),
        ({"direct_min_out_w": "4"}, TypeError, "direct_min_out_w must be an int"),
    ],
)
def test_bad_values_change_nothing(values, error, message):
    before = autotune.thresholds()
    with pytest.raises(error, match=message):
        autotune.set_thresholds(**values)
    assert autotune.thresholds() == before


def test_defaults_takes_a_bool():
    with pytest.raises(TypeError, match="defaults must be a bool"):
        autotune.thresholds(defaults=1)


def test_numpy_integers_are_accepted():
    autotune.set_thresholds(direct_min_out_w=np.int64(6))
    assert autotune.thresholds()["direct_min_out_w"] == 6


def test_changing_thresholds_while_threads_convolve():
    rng = np.random.default_rng(9)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    w = rng.standard_normal(WEIGHT).astype(np.float32)
    want = reference.conv2d(x.astype(np.float64), w.astype(np.float64), None, 1, PADDING)
    errors, stop = [], threading.Event()

    def convolve():
        while not stop.is_set():
            got = fastconv.conv2d(x, w, padding=PADDING)
            errors.append(float(np.abs(got - want).max() / np.abs(want).max()))

    workers = [threading.Thread(target=convolve) for _ in range(3)]
    for worker in workers:
        worker.start()
    for value in [15, 3] * 20:
        autotune.set_thresholds(direct_min_out_w=value)
    stop.set()
    for worker in workers:
        worker.join()
    assert errors
    assert max(errors) < 1e-5
