"""The CPU backend's dispatch: the kernel table's ISA tiers switched in-process, the
record of what each conv pass ran, and the typed parameter structs at the boundary."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastconv
from fastconv import _cpu
from fastconv import reference as ref


def conv_operands(seed=0, shape=(2, 8, 12, 12), weight=(16, 8, 3, 3)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(weight).astype(
        np.float32
    )


def test_last_algorithms_records_each_pass():
    x, w = conv_operands(shape=(2, 64, 14, 14), weight=(64, 64, 3, 3))
    y = fastconv.conv2d(x, w, padding=1)
    fastconv.conv2d_input(x.shape, w, y, padding=1)
    fastconv.conv2d_weight(x, w.shape, y, padding=1)
    ran = fastconv.last_algorithms()
    assert ran["conv2d"] == fastconv.conv2d_algorithm(x.shape, w.shape, padding=1)
    assert ran["conv2d_input"] == fastconv.conv2d_input_algorithm(x.shape, w.shape, padding=1)
    assert ran["conv2d_weight"] == fastconv.conv2d_weight_algorithm(x.shape, w.shape, padding=1)
    fastconv.conv2d(x, w, padding=1, algorithm="implicit_gemm")
    assert fastconv.last_algorithms()["conv2d"] == "implicit_gemm"


def test_last_algorithms_is_per_thread():
    x, w = conv_operands()
    fastconv.conv2d(x, w, algorithm="direct")
    seen = {}

    def other():
        seen["before"] = fastconv.last_algorithms()
        fastconv.conv2d(x, w, algorithm="implicit_gemm")
        seen["after"] = fastconv.last_algorithms()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen["before"] == {}
    assert seen["after"] == {"conv2d": "implicit_gemm"}
    assert fastconv.last_algorithms()["conv2d"] == "direct"


def test_unsupported_forced_algorithm_names_its_requirement():
    x, w = conv_operands()
    with pytest.raises(ValueError, match=r"algorithm='pointwise_gemm' .* 1x1, stride-1"):
        fastconv.conv2d(x, w, algorithm="pointwise_gemm")
    with pytest.raises(ValueError, match="float32"):
        fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), algorithm="winograd")


def test_isa_tiers_end_with_the_active_one():
    tiers = _cpu.isa_tiers()
    assert tiers[0] == "baseline"
    assert tiers[-1] == _cpu.isa()
    assert tiers == ["baseline", "avx2+fma", "avx512f"][: len(tiers)]


def test_unknown_or_unavailable_tier_is_refused():
    with pytest.raises(ValueError, match="ISA tier"):
        _cpu.set_isa("sse9")
    assert _cpu.isa() == _cpu.isa_tiers()[-1]


def test_use_isa_restores_the_tier_after_an_error():
    top = _cpu.isa()

    def fail_inside_baseline():
        with _cpu.use_isa("baseline"):
            assert _cpu.isa() == "baseline"
            raise RuntimeError("failed inside use_isa")

    with pytest.raises(RuntimeError, match="failed inside use_isa"):
        fail_inside_baseline()
    assert _cpu.isa() == top


@pytest.mark.parametrize("tier", ["baseline", "avx2+fma", "avx512f"])
def test_every_tier_runs_every_op_family(tier):
    if tier not in _cpu.isa_tiers():
        pytest.skip(f"this CPU does not run {tier}")
    x, w = conv_operands(1)
    a = np.random.default_rng(2).standard_normal((40, 30))
    with _cpu.use_isa(tier):
        suffix = {"baseline": "portable", "avx2+fma": "avx2-fma", "avx512f": "avx512"}[tier]
        assert _cpu.gemm_kernels("float64")[-1].endswith(suffix)
        outs = {
            "conv": fastconv.conv2d(x, w, padding=1),
            "pool": fastconv.max_pool2d(x, 3, 2),
            "gemm": fastconv.gemm(a, a.T),
            "winograd": fastconv.conv2d(
                np.repeat(x, 8, axis=1),
                np.repeat(np.repeat(w, 4, 0), 8, 1),
                padding=1,
                algorithm="winograd",
            ),
        }
        assert _cpu.fma_peak_gflops(1, 1000) > 0
    np.testing.assert_allclose(outs["conv"], ref.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outs["pool"], ref.max_pool2d(x, 3, 2))
    np.testing.assert_allclose(outs["gemm"], a @ a.T, rtol=1e-12, atol=1e-12)
    assert outs["winograd"].shape == (2, 64, 12, 12)


def test_switching_tiers_while_other_threads_run_kernels():
    """set_isa waits for running kernels, and kernels never see a tier change mid-call."""
    tiers = _cpu.isa_tiers()
    x, w = conv_operands(3, shape=(4, 16, 20, 20), weight=(32, 16, 3, 3))
    expected = ref.conv2d(x, w, padding=1)
    failures = []
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            got = fastconv.conv2d(x, w, padding=1)
            if not np.allclose(got, expected, rtol=1e-3, atol=1e-3):
                failures.append(float(np.abs(got - expected).max()))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for i in range(40):
            _cpu.set_isa(tiers[i % len(tiers)])
    finally:
        _cpu.set_isa(tiers[-1])
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures


def test_conv_params_reject_what_python_would_never_send():
    good = dict(
        batch=1,
        in_channels=4,
        in_h=5,
        in_w=5,
        out_channels=4,
        kernel_h=3,
        kernel_w=3,
        out_h=3,
        out_w=3,
        stride_h=1,
        stride_w=1,
        pad_top=0,
        pad_left=0,
        dilation_h=1,
        dilation_w=1,
        groups=2,
        single_precision=True,
    )
    assert _cpu._C.ConvParams(**good).groups == 2
    for field, value in [("stride_h", 0), ("groups", 3), ("kernel_w", 0), ("pad_top", -1)]:
        with pytest.raises(ValueError, match="internal"):
            _cpu._C.ConvParams(**{**good, field: value})
    with pytest.raises(TypeError):
        _cpu._C.ConvParams(1, 4, 5, 5)  # keyword-only: no positional tuples


def test_mismatched_arrays_never_reach_a_kernel():
    x, w = conv_operands()
    geometry = fastconv.geometry.ConvGeometry((1, 1), (0, 0, 0, 0), (1, 1), 1)
    params = _cpu.conv_params(x.shape, w.shape, (10, 10), geometry, np.float32)
    out = np.empty((2, 16, 9, 10), np.float32)  # one row short
    with pytest.raises(ValueError, match="internal: unexpected shape"):
        _cpu._C.conv2d_forward(x, w, None, out, params, None)


def _unaligned(x):
    """A copy of x over an odd byte offset: C-contiguous but not aligned to its itemsize."""
    raw = bytearray(x.nbytes + 1)
    out = np.frombuffer(raw, dtype=x.dtype, count=x.size, offset=1).reshape(x.shape)
    out[...] = x
    assert out.flags.c_contiguous
    assert not out.flags.aligned
    return out


def test_unaligned_arrays_are_copied_before_the_kernels():
    x, w = conv_operands(4)
    ux, uw = _unaligned(x), _unaligned(w)
    np.testing.assert_array_equal(
        fastconv.conv2d(ux, uw, padding=1), fastconv.conv2d(x, w, padding=1)
    )
    y = fastconv.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(
        fastconv.conv2d_weight(ux, w.shape, _unaligned(y), padding=1),
        fastconv.conv2d_weight(x, w.shape, y, padding=1),
    )
    np.testing.assert_array_equal(fastconv.max_pool2d(ux, 2), fastconv.max_pool2d(x, 2))
    m = np.random.default_rng(5).standard_normal((9, 9)).astype(np.float32)
    np.testing.assert_array_equal(fastconv.gemm(_unaligned(m), m), fastconv.gemm(m, m))
    params = _cpu.conv_params(x.shape, w.shape, (12, 12), _geometry(1), np.float32)
    with pytest.raises(ValueError, match="internal: unaligned"):
        _cpu._C.conv2d_forward(ux, w, None, np.empty((2, 16, 12, 12), np.float32), params, None)


def _geometry(pad):
    return fastconv.geometry.ConvGeometry((1, 1), (pad,) * 4, (1, 1), 1)


def test_an_unbuilt_checkout_says_how_to_build(tmp_path):
    """Importing a source tree without the compiled module names the fix."""
    import shutil
    from pathlib import Path

    from helpers import run_python

    source = Path(fastconv.__file__).parent
    shutil.copytree(
        source, tmp_path / "fastconv", ignore=shutil.ignore_patterns("_C*", "__pycache__")
    )
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import fastconv"
    child = run_python(code)
    assert child.returncode != 0
    assert "./dev-build.sh" in child.stderr
    assert "fastconv._C" in child.stderr
