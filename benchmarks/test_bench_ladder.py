"""The ladder's peers (``fastconv/bench/peers_cython.py``, ``peers_numba.py``) and its
summary (``fastconv/bench/ladder.py``).

Each peer is checked against ``fastconv.reference`` on small odd shapes (strides,
paddings, groups, dilation, non-square planes; max pooling with NaN, ties and -inf), in
float64 to rounding level and in float32 within the benchmark's tolerance, then the
``fastconv bench --impls fastconv,torch,numpy,cython,numba`` command runs end to end on
tiny shapes. Tests of a peer skip where its package (or, for Cython, a C compiler) is
missing; the first Cython test compiles the peer into the cache (about 10-20 s once).

    python -m pytest benchmarks/test_bench_ladder.py --benchmark-disable
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fastconv import cli, reference
from fastconv.bench import ladder, peers_cython

EPS32 = float(np.finfo(np.float32).eps)

# (N, C, H, W, K, kernel, stride, padding, groups, dilation)
CONV_SHAPES = {
    "plain": (2, 3, 7, 6, 4, 3, 1, 0, 1, 1),
    "padded": (2, 4, 8, 9, 5, 3, 1, 1, 1, 1),
    "stride2": (2, 6, 11, 9, 4, 3, 2, 1, 2, 1),
    "stride3_dilated": (2, 6, 11, 11, 6, 3, 3, 2, 2, 2),
    "pointwise": (3, 4, 5, 7, 8, 1, 1, 0, 1, 1),
    "depthwise_5x5": (1, 3, 6, 5, 3, 5, 1, 2, 3, 1),
    "wide_padding": (2, 3, 9, 9, 5, 3, 2, 3, 1, 1),
}


def _peer(name):
    reason = ladder.unavailable_reason(name)
    if reason is not None:
        pytest.skip(f"the {name} peer cannot run here: {reason}")
    return ladder.peer_module(name)


@pytest.fixture(scope="module", params=ladder.LADDER_PEERS)
def peer(request):
    """Each ladder peer's module (compiled, warmed up), or a skip."""
    return _peer(request.param)


def _conv_inputs(shape, dtype, seed=0):
    n, c, h, w, k, r, stride, pad, groups, dil = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c // groups, r, r)).astype(dtype)
    y = reference.conv2d(x, weight, None, stride, pad, dil, groups)
    gy = rng.standard_normal(y.shape).astype(dtype)
    return x, weight, y, gy, (stride, pad, groups, dil)


def _relative_error(got, expected):
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", list(CONV_SHAPES.values()), ids=list(CONV_SHAPES))
def test_conv_passes_match_the_reference(peer, shape, dtype):
    x, weight, y, gy, (stride, pad, groups, dil) = _conv_inputs(shape, dtype)
    passes = {
        "fwd": (
            peer.conv2d(x, weight, stride, pad, groups, dil),
            y,
            (x.shape[1] // groups) * weight.shape[2] ** 2,
        ),
        "dx": (
            peer.conv2d_input(x.shape, weight, gy, stride, pad, groups, dil),
            reference.conv2d_input(x.shape, weight, gy, stride, pad, dil, groups),
            (weight.shape[0] // groups) * weight.shape[2] ** 2,
        ),
        "dw": (
            peer.conv2d_weight(x, weight.shape, gy, stride, pad, groups, dil),
            reference.conv2d_weight(x, weight.shape, gy, stride, pad, dil, groups),
            x.shape[0] * gy.shape[2] * gy.shape[3],
        ),
    }
    for direction, (got, expected, reduction) in passes.items():
        assert got.shape == expected.shape, direction
        assert got.dtype == dtype, direction
        assert got.flags.c_contiguous, direction
        # the benchmark's tolerance in float32, rounding level in float64
        bound = 32 * reduction * EPS32 if dtype == np.float32 else 1e-13
        assert _relative_error(got, expected) <= bound, direction


def _pool_input(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    x[0, 0, 1, 1] = np.nan  # a NaN wins its windows
    x[0, 1, :4, :4] = 1.0  # ties: the first in row-major order wins
    x[1, 2] = -np.inf  # an all -inf plane gives -inf at its first in-bounds element
    x[1, 0, 5, 2] = x[1, 0, 6, 7] = np.nan
    return x


POOL_WINDOWS = {
    "3x3s2p1": (3, 2, 1),
    "2x2": (2, None, 0),
    "3x3s1p1_overlapping": (3, 1, 1),
    "pairs": ((2, 3), (1, 2), (1, 1)),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("window", list(POOL_WINDOWS.values()), ids=list(POOL_WINDOWS))
def test_max_pooling_follows_pytorchs_rule_exactly(peer, window, dtype):
    kernel, stride, pad = window
    x = _pool_input(dtype)
    out, indices = peer.max_pool2d(x, kernel, stride, pad, return_indices=True)
    expected, expected_indices = reference.max_pool2d(x, kernel, stride, pad, return_indices=True)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(peer.max_pool2d(x, kernel, stride, pad), expected)
    gy = np.random.default_rng(4).standard_normal(out.shape).astype(dtype)
    # overlapping windows send several gradients to one pixel: sums, so not exact in float32
    np.testing.assert_allclose(
        peer.max_pool2d_backward(gy, indices, x.shape),
        reference.max_pool2d_backward(gy, expected_indices, x.shape),
        rtol=1e-6,
        atol=1e-6,
    )


def test_threads_do_not_change_the_result(peer):
    """One task per output plane or filter: the same sums in the same order whatever
    the thread count."""
    x, weight, _, gy, (stride, pad, groups, dil) = _conv_inputs(CONV_SHAPES["padded"], np.float32)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(
            peer.conv2d(x, weight, stride, pad, groups, dil, threads=threads),
            peer.conv2d(x, weight, stride, pad, groups, dil, threads=1),
        )
        np.testing.assert_array_equal(
            peer.conv2d_weight(x, weight.shape, gy, stride, pad, groups, dil, threads=threads),
            peer.conv2d_weight(x, weight.shape, gy, stride, pad, groups, dil, threads=1),
        )


def test_numba_runs_on_the_thread_count_asked_for():
    numba_peer = _peer("numba")
    import numba

    x, weight, *_ = _conv_inputs(CONV_SHAPES["plain"], np.float32)
    numba_peer.conv2d(x, weight, threads=1)
    assert numba.get_num_threads() == 1
    numba_peer.conv2d(x, weight, threads=10**6)  # more than Numba started: all of them
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    if "NUMBA_THREADING_LAYER" not in os.environ:
        # not the omp layer, whose spinning workers slowed the next implementation
        assert numba.threading_layer() == "workqueue"


def test_cython_peer_is_cached_by_its_source(monkeypatch, tmp_path):
    _peer("cython")
    built = peers_cython.build(quiet=True)
    assert built.parent == peers_cython.module_dir()
    assert peers_cython.build(quiet=True) == built  # found in the cache, not rebuilt
    edited = tmp_path / peers_cython.SOURCE.name
    edited.write_text(peers_cython.SOURCE.read_text() + "\n# an edit\n")
    monkeypatch.setattr(peers_cython, "SOURCE", edited)
    assert peers_cython.module_dir() != built.parent


def test_a_missing_cython_is_named_and_the_run_goes_on(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(peers_cython, "unavailable_reason", lambda: "Cython is not installed")
    assert ladder.unavailable_reason("cython") == "Cython is not installed"
    with pytest.raises(ladder.PeerUnavailable, match="Cython is not installed"):
        peers_cython.build()
    out = tmp_path / "run.json"
    argv = ["bench", "--smoke", "--op", "conv", "--layers", "lenet_5x5", "--direction", "fwd"]
    argv += ["--impls", "fastconv,numpy,cython", "--no-progress", "--json", str(out)]
    assert cli.main(argv) == 0
    assert "running without cython: Cython is not installed" in capsys.readouterr().err
    (result,) = json.loads(out.read_text())["results"]
    assert set(result["impls"]) == {"fastconv", "numpy"}


def test_a_failed_cython_build_costs_the_peer_not_the_run(monkeypatch, tmp_path, capsys):
    def failing_build():
        raise RuntimeError("building the Cython peer failed (exit 1):\nerror: no omp.h")

    monkeypatch.setattr(ladder, "_ready", {})
    monkeypatch.setattr(ladder, "_failed", {})
    monkeypatch.setattr(peers_cython, "unavailable_reason", lambda: None)
    monkeypatch.setattr(peers_cython, "load", failing_build)
    out = tmp_path / "run.json"
    argv = ["bench", "--smoke", "--op", "pool", "--layers", "max_pool2d_*", "--direction", "fwd"]
    argv += ["--impls", "fastconv,numpy,cython", "--no-progress", "--json", str(out)]
    assert cli.main(argv) == 0
    assert "running without cython: building the Cython peer failed" in capsys.readouterr().err
    (result,) = json.loads(out.read_text())["results"]
    assert set(result["impls"]) == {"fastconv", "numpy"}
    with pytest.raises(ladder.PeerUnavailable, match="no omp.h"):
        ladder.peer_module("cython")


def test_the_default_run_leaves_the_ladder_peers_out():
    from fastconv.bench import CONV_BY_NAME, conv_case, pool_case
    from fastconv.bench.catalogue import POOL_BY_NAME

    case = conv_case(CONV_BY_NAME["lenet_5x5"].reduced(batch=1), "fwd")
    assert not set(case.impls) & set(ladder.LADDER_PEERS)
    pool = pool_case(POOL_BY_NAME["max_pool2d_3x3s2p1"].reduced(1, 8), "fwd")
    assert not set(pool.impls) & set(ladder.LADDER_PEERS)


# =========================================================================== the summary


def _result(op, direction, case, best_ms):
    return {
        "op": op,
        "case": case,
        "direction": direction,
        "impls": {name: {"best_ms": ms} for name, ms in best_ms.items()},
    }


def test_ladder_is_the_geomean_speed_over_the_cases_every_implementation_ran():
    results = [
        _result("conv", "fwd", "a", {"numpy": 8.0, "cython": 4.0, "numba": 16.0, "fastconv": 1.0}),
        _result("conv", "fwd", "b", {"numpy": 2.0, "cython": 4.0, "numba": 1.0, "fastconv": 0.25}),
        _result("conv", "dx", "a", {"numpy": 3.0, "torch": 1.0}),
        # the peers have max pooling only: the average-pooling case is left out
        _result("pool", "fwd", "max", {"numpy": 6.0, "numba": 2.0, "fastconv": 1.0}),
        _result("pool", "fwd", "avg", {"numpy": 100.0, "fastconv": 1.0}),
        # no numpy: no ladder for these
        _result("train", "step", "t", {"fastconv": 1.0, "torch": 2.0}),
        _result("gemm", "", "one", {"numpy": 1.0}),
    ]
    entries = {(e["op"], e["direction"]): e for e in ladder.ladder(results)}
    assert set(entries) == {("conv", "fwd"), ("conv", "dx"), ("pool", "fwd")}
    fwd = entries["conv", "fwd"]
    assert fwd["cases"] == 2
    assert list(fwd["speed"]) == ["numpy", "cython", "numba", "fastconv"]  # the ladder order
    assert fwd["speed"]["numpy"] == pytest.approx(1.0)
    assert fwd["speed"]["cython"] == pytest.approx(1.0)  # sqrt(2 * 0.5)
    assert fwd["speed"]["numba"] == pytest.approx(1.0)  # sqrt(0.5 * 2)
    assert fwd["speed"]["fastconv"] == pytest.approx(8.0)  # sqrt(8 * 8)
    assert entries["conv", "dx"]["speed"]["torch"] == pytest.approx(3.0)
    pool = entries["pool", "fwd"]
    assert pool["cases"] == 1
    assert pool["speed"]["fastconv"] == pytest.approx(6.0)
    rows, columns = ladder.ladder_rows(list(entries.values()))
    assert [key for key, _ in columns] == ["impl", "conv fwd (2)", "conv dx (1)", "pool fwd (1)"]
    by_impl = {row["impl"]: row for row in rows}
    assert by_impl["numba"]["pool fwd (1)"] == pytest.approx(3.0)
    assert by_impl["torch"]["conv fwd (2)"] is None


# =========================================================================== the command


def test_bench_runs_the_whole_ladder(tmp_path, capsys):
    """``fastconv bench --impls fastconv,torch,numpy,cython,numba`` on the layer set, the
    corpus and pooling (tiny shapes): every peer checked and timed, the ladder printed,
    written to the JSON and the markdown, and plotted."""
    peers = [name for name in ladder.LADDER_PEERS if ladder.unavailable_reason(name) is None]
    if not peers:
        pytest.skip("neither Cython nor Numba can run here")
    from fastconv.bench import torch_or_none
    from fastconv.bench.runner import corpus_sample

    out_json, out_md, out_png = tmp_path / "l.json", tmp_path / "l.md", tmp_path / "l.png"
    drawn = corpus_sample("corpus", 1, seed=0)[0].layer.name
    argv = ["bench", "--smoke", "--op", "conv,pool,corpus", "--sample", "1", "--no-progress"]
    argv += ["--layers", f"resnet_3x3_28,resnet_1x1s2_56,mobilenet_dw*,*_pool2d_*,{drawn}"]
    argv += ["--impls", "fastconv,torch,numpy,cython,numba"]
    argv += ["--json", str(out_json), "--markdown", str(out_md), "--ladder-plot", str(out_png)]
    status = cli.main(argv)
    text = capsys.readouterr().out
    assert status == 0
    assert "ladder: speed relative to numpy" in text
    report = json.loads(out_json.read_text())
    for name in peers:
        assert f", {name} {report['meta']['ladder_peers'][name]}" in text  # the header
    present = {"fastconv", "numpy", *peers} | ({"torch"} if torch_or_none() else set())
    ran = {(r["op"], r["case"], r["direction"]): r["impls"] for r in report["results"]}
    for (op, case, _), timed in ran.items():
        # the peers have no average pooling
        expected = present - set(peers) if case.startswith("avg_pool2d") else present
        assert set(timed) == expected, (op, case)
        for name, figures in timed.items():
            assert figures["ok"], (op, case, name)
            assert figures["best_ms"] > 0
    assert {op for op, _, _ in ran} == {"conv", "pool", "corpus"}
    columns = {(e["op"], e["direction"]) for e in report["ladder"]}
    assert columns == {
        ("conv", "fwd"),
        ("conv", "dx"),
        ("conv", "dw"),
        ("pool", "fwd"),
        ("pool", "dx"),
        ("corpus", "fwd"),
        ("corpus", "dx"),
        ("corpus", "dw"),
    }
    for entry in report["ladder"]:
        assert set(peers) <= set(entry["speed"])
        assert entry["speed"]["numpy"] == pytest.approx(1.0)
        assert entry["cases"] == (1 if entry["op"] != "conv" else 3)
    assert "**ladder**" in out_md.read_text()
    pytest.importorskip("matplotlib")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
