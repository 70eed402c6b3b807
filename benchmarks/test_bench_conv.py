"""Conv layer-set benchmarks: every layer of the benchmark layer set, forward,
conv2d_input (dx) and conv2d_weight (dw), fastconv vs the im2col + matmul NumPy peer vs
PyTorch CPU vs the ladder's Cython and Numba peers (``fastconv/bench/ladder.py``; skipped
where their packages are missing), float32, 2 threads; grouped by layer and direction
(``conv <layer> <dir>``).

Each implementation is checked against ``fastconv.reference`` (float64, first two images)
before it is timed; ``extra_info`` carries the algorithm fastconv chose and GFLOP/s
(direct-convolution FLOPs / best time; for Winograd that is the effective rate).
Under ``--benchmark-disable`` each layer runs on one image (smoke test).

    python -m pytest benchmarks/test_bench_conv.py --benchmark-only
    python -m fastconv bench --op conv             # ratio table + geomeans
"""

from __future__ import annotations

import pytest
from peers import cached_case, record

from fastconv import bench

CASES = [
    (layer.name, d, impl)
    for layer in bench.CONV_LAYERS
    for d in bench.CONV_DIRECTIONS
    for impl in bench.ALL_IMPLS
]


@pytest.mark.parametrize(("layer", "direction", "impl"), CASES, ids=["-".join(c) for c in CASES])
def test_conv(benchmark, case_cache, smoke, layer, direction, impl):
    def build():
        spec = bench.CONV_BY_NAME[layer]
        return bench.conv_case(
            spec.reduced(batch=1) if smoke else spec, direction, impls=bench.ALL_IMPLS
        )

    case, errors = cached_case(case_cache, (layer, direction), build)
    record(benchmark, case, impl, errors)


def test_numpy_peer_matches_reference():
    """The im2col peer on odd shapes: stride, padding, groups, dilation."""
    import numpy as np

    from fastconv import reference

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 11, 9))
    w = rng.standard_normal((4, 3, 3, 2))
    for stride, pad, dil in ((1, 0, 1), (2, 1, 1), (3, 2, 2)):
        y = reference.conv2d(x, w, None, stride, pad, dil, 2)
        np.testing.assert_allclose(
            bench.numpy_conv2d(x, w, stride, pad, 2, dil), y, rtol=1e-12, atol=1e-12
        )
        g = rng.standard_normal(y.shape)
        np.testing.assert_allclose(
            bench.numpy_conv2d_input(x.shape, w, g, stride, pad, 2, dil),
            reference.conv2d_input(x.shape, w, g, stride, pad, dil, 2),
            rtol=1e-12,
            atol=1e-12,
        )
        np.testing.assert_allclose(
            bench.numpy_conv2d_weight(x, w.shape, g, stride, pad, 2, dil),
            reference.conv2d_weight(x, w.shape, g, stride, pad, dil, 2),
            rtol=1e-12,
            atol=1e-12,
        )


def test_summary_targets():
    """The geomean summary the speed targets are judged on."""

    def result(name, direction, ratio):
        return {
            "op": "conv",
            "case": name,
            "direction": direction,
            "impls": {"fastconv": {"speedup": {"torch": ratio}}, "torch": {}},
        }

    rows = [result(n, "fwd", 1.5) for n in bench.THREE_BY_THREE_S1]
    rows.append(result("lenet_5x5", "fwd", 0.5))
    (s,) = bench.summarize(rows)
    assert s["geomean_3x3_s1"] == pytest.approx(1.5)
    assert s["min"] == 0.5
    assert s["min_case"] == "lenet_5x5"
    assert not s["meets"]


@pytest.mark.parametrize("precision", ["highest", "high"])
def test_bench_measures_and_reports_the_precision(tmp_path, capsys, precision):
    """``--precision`` sets the mode for the run; the header and the JSON say which."""
    import json

    import fastconv
    from fastconv import cli

    out_json = tmp_path / "b.json"
    argv = ["bench", "--smoke", "--op", "conv", "--layers", "resnet_3x3_28", "--direction"]
    argv += ["fwd,dx", "--impls", "fastconv", "--no-progress", "--precision", precision]
    assert cli.main([*argv, "--json", str(out_json)]) == 0
    assert f"float32 conv precision {precision}" in capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert report["meta"]["precision"] == precision
    ran = {r["algorithm"] for r in report["results"]}
    assert len(ran) == 2
    if precision == "highest":
        assert not any("winograd" in name for name in ran)
    assert fastconv.get_float32_conv_precision() == "high"  # the run's mode does not leak
