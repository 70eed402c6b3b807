"""The float32 convolution precision: the setting, its scope, and what each mode runs.

"highest" keeps every selector off transform algorithms (Winograd), so float32
results carry direct convolution's error; "high" (the default) allows them. An
explicit ``algorithm=`` is honoured in either mode.
"""

import threading

import numpy as np
import pytest
from conv_helpers import TRANSFORMED, C, check_all

import fastconv
from fastconv import nn

WINOGRAD_LAYER = ((8, 64, 28, 28), (64, 64, 3, 3))


@pytest.fixture(autouse=True)
def restore_precision():
    before = fastconv.get_float32_conv_precision()
    yield
    fastconv.set_float32_conv_precision(before)


def test_default_is_high():
    assert fastconv.get_float32_conv_precision() == "high"
    assert fastconv.conv2d_algorithm(*WINOGRAD_LAYER, padding=1) == "winograd"
    assert fastconv.conv2d_input_algorithm(*WINOGRAD_LAYER, padding=1) == "winograd (transposed)"


def test_set_and_get():
    fastconv.set_float32_conv_precision("highest")
    assert fastconv.get_float32_conv_precision() == "highest"
    assert fastconv.conv2d_algorithm(*WINOGRAD_LAYER, padding=1) != "winograd"
    assert fastconv.conv2d_input_algorithm(*WINOGRAD_LAYER, padding=1) == "direct (transposed)"
    fastconv.set_float32_conv_precision("high")
    assert fastconv.conv2d_algorithm(*WINOGRAD_LAYER, padding=1) == "winograd"


@pytest.mark.parametrize("bad", ["medium", "HIGH", ""])
def test_unknown_precision_is_a_value_error(bad):
    with pytest.raises(ValueError, match="precision must be one of"):
        fastconv.set_float32_conv_precision(bad)
    with (
        pytest.raises(ValueError, match="precision must be one of"),
        fastconv.float32_conv_precision(bad),
    ):
        pass
    assert fastconv.get_float32_conv_precision() == "high"


@pytest.mark.parametrize("bad", [None, 1, b"high"])
def test_non_string_precision_is_a_type_error(bad):
    with pytest.raises(TypeError, match="precision must be one of"):
        fastconv.set_float32_conv_precision(bad)


def test_context_manager_nests_and_restores():
    with fastconv.float32_conv_precision("highest"):
        assert fastconv.get_float32_conv_precision() == "highest"
        with fastconv.float32_conv_precision("high"):
            assert fastconv.get_float32_conv_precision() == "high"
        assert fastconv.get_float32_conv_precision() == "highest"
        # The block's override wins over a process-wide change made inside it.
        fastconv.set_float32_conv_precision("high")
        assert fastconv.get_float32_conv_precision() == "highest"
    assert fastconv.get_float32_conv_precision() == "high"


def test_context_manager_restores_after_an_error():
    with pytest.raises(RuntimeError), fastconv.float32_conv_precision("highest"):
        raise RuntimeError
    assert fastconv.get_float32_conv_precision() == "high"


def test_context_manager_is_per_thread():
    seen = {}
    inside, done = threading.Event(), threading.Event()

    def other_thread():
        inside.wait()
        seen["mode"] = fastconv.get_float32_conv_precision()
        seen["algorithm"] = fastconv.conv2d_algorithm(*WINOGRAD_LAYER, padding=1)
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with fastconv.float32_conv_precision("highest"):
        inside.set()
        done.wait()
    worker.join()
    assert seen == {"mode": "high", "algorithm": "winograd"}


def test_plain_call_path_honours_the_setting():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(WINOGRAD_LAYER[0]).astype(np.float32)
    w = rng.standard_normal(WINOGRAD_LAYER[1]).astype(np.float32)
    fastconv.conv2d(x, w, padding=1)
    assert fastconv.last_algorithms()["conv2d"] == "winograd"
    with fastconv.float32_conv_precision("highest"):
        exact = fastconv.conv2d(x, w, padding=1)
        assert fastconv.last_algorithms()["conv2d"] not in TRANSFORMED
        # An explicit algorithm is honoured whatever the precision.
        fastconv.conv2d(x, w, padding=1, algorithm="winograd")
        assert fastconv.last_algorithms()["conv2d"] == "winograd"
    expected = fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    assert np.abs(exact - expected).max() <= 2e-6 * np.abs(expected).max()


def test_layer_library_honours_the_setting():
    nn.manual_seed(0)
    layer = nn.Conv2d(64, 64, 3, padding=1)
    x = np.random.default_rng(1).standard_normal(WINOGRAD_LAYER[0]).astype(np.float32)
    with fastconv.float32_conv_precision("highest"):
        out = layer(x)
        layer.backward(np.ones_like(out))
        ran = fastconv.last_algorithms()
    assert ran["conv2d"] not in TRANSFORMED
    assert ran["conv2d_input"] == "direct (transposed)"
    layer(x)
    assert fastconv.last_algorithms()["conv2d"] == "winograd"


# One case per algorithm family the selectors choose from, plus Winograd-shaped ones.
FAMILY_CASES = [
    C(2, 32, 9, 9, 48, 1, 1),  # pointwise
    C(2, 24, 11, 11, 24, 3, 3, padding=1, groups=24),  # depthwise
    C(2, 3, 17, 17, 16, 5, 5, stride=2, padding=2),  # direct
    C(2, 64, 2, 2, 128, 3, 3, padding=1),  # implicit GEMM
    C(2, 48, 12, 12, 40, 3, 3, padding=1, bias=True),  # Winograd's shape (forced)
    C(1, 64, 9, 7, 32, 3, 3, padding=1),  # Winograd's shape, partial tiles (forced)
    C(4, 64, 24, 24, 64, 3, 3, padding=1),  # Winograd where "high" selects it
]


@pytest.mark.parametrize("mode", ["highest", "high"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ints", [False, True], ids=["normal", "ints"])
@pytest.mark.parametrize("case", FAMILY_CASES, ids=str)
def test_every_family_in_each_mode(mode, dtype, ints, case):
    case = case._replace(dtype=dtype, ints=ints)
    with fastconv.float32_conv_precision(mode):
        check_all(case)
        chosen = fastconv.conv2d_algorithm(
            case.input_shape, case.weight_shape, **case.args(), dtype=np.dtype(dtype)
        )
        chosen_input = fastconv.conv2d_input_algorithm(
            case.input_shape, case.weight_shape, **case.args(), dtype=np.dtype(dtype)
        )
    transformed = chosen in TRANSFORMED or chosen_input.split(" ")[0] in TRANSFORMED
    if mode == "highest" or dtype == "float64":
        assert not transformed
