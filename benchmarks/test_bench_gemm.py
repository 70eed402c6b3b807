"""GEMM benchmarks: fastconv.gemm vs numpy matmul (OpenBLAS) vs torch.mm.

float32, C = A @ B into a preallocated C (no allocation timed), 2 threads: square 512,
1024, 2048 and the conv-shaped 64x3136x576, 256x3136x64, 512x49x4608, 128x784x1152
(M x N x K). Each result is checked against a float64 product first. Under
``--benchmark-disable`` the shapes are capped at 256 a side (smoke test).

    python -m pytest benchmarks/test_bench_gemm.py --benchmark-only
    python -m fastconv bench --op gemm            # alternating ratio table
    python -m fastconv bench --op gemm --threads 1

Also here: an end-to-end smoke test of the ``fastconv bench`` command itself.
"""

from __future__ import annotations

import json

import pytest
from peers import cached_case, record

from fastconv import bench

CASES = [(case.name, impl) for case in bench.GEMM_CASES for impl in bench.IMPLS]


@pytest.mark.parametrize(("name", "impl"), CASES, ids=[f"{c}-{i}" for c, i in CASES])
def test_gemm(benchmark, case_cache, smoke, name, impl):
    def build():
        case = bench.GEMM_BY_NAME[name]
        return bench.gemm_case(case.reduced(256) if smoke else case)

    case, errors = cached_case(case_cache, name, build)
    record(benchmark, case, impl, errors)


def test_bench_command_smoke(tmp_path, capsys):
    """``fastconv bench`` end to end on tiny shapes: terminal table, JSON, markdown, plot."""
    from fastconv import cli

    out_json, out_md, out_png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    status = cli.main(
        [
            "bench",
            "--smoke",
            "--op",
            "gemm,conv,pool",
            "--no-progress",
            "--layers",
            "square_512,conv_512x49x4608,resnet_3x3_56,mobilenet_*,max_pool2d_*",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
            "--plot",
            str(out_png),
        ]
    )
    text = capsys.readouterr().out
    assert status == 0
    assert "ISA path" in text
    assert "threads" in text
    assert "GFLOP/s fp32 FMA" in text
    assert "conv fwd: fastconv vs" in text
    report = json.loads(out_json.read_text())
    assert report["meta"]["isa"]
    assert report["meta"]["threads"] >= 1
    got = {(r["op"], r["case"], r["direction"]) for r in report["results"]}
    assert ("conv", "resnet_3x3_56", "dw") in got
    assert ("gemm", "square_512", "") in got
    for r in report["results"]:
        fc = r["impls"]["fastconv"]
        assert fc["ok"]
        assert fc["best_ms"] > 0
        assert fc["rate"] > 0
        assert set(fc["speedup"]) == set(r["impls"]) - {"fastconv"}
        # GEMM cases time the FMA loop and the micro-kernel alongside; the probes
        # are ceilings, not implementations.
        want = {"fma_loop", "micro_kernel"} if r["op"] == "gemm" else set()
        assert set(r["ceilings"]) == want
        assert set(fc["pct_ceilings"]) == want
        assert all(v > 0 for v in r["ceilings"].values())
        assert not any(name.startswith("probe") for name in r["impls"])
    assert "| case |" in out_md.read_text()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_command_rejects_unknown_names(capsys):
    from fastconv import cli

    assert cli.main(["bench", "--smoke", "--op", "conv", "--layers", "nope_*"]) == 2
    assert "no case matches" in capsys.readouterr().err


def gemm_result(name, ratio, pct_peak, pct_ceilings):
    fastconv = {"speedup": {"numpy": ratio}, "pct_peak": pct_peak, "pct_ceilings": pct_ceilings}
    impls = {"fastconv": fastconv, "numpy": {}}
    return {"op": "gemm", "case": name, "direction": "", "impls": impls}


def test_summary_judges_peak_at_2048_against_the_fma_loop_timed_alongside():
    rows = [gemm_result("square_512", 1.1, 70.0, {})]
    big = gemm_result("square_2048", 1.0, 76.0, {"fma_loop": 81.0, "micro_kernel": 95.0})
    (s,) = bench.summarize([*rows, big])
    assert s["pct_peak_2048"] == 76.0
    assert s["pct_fma_loop_2048"] == 81.0
    assert s["meets"]
    assert "76% of the cached peak at 2048 (81% of the FMA loop" in bench.format_summary([s])
    big["impls"]["fastconv"]["pct_ceilings"]["fma_loop"] = 79.0
    (s,) = bench.summarize([*rows, big])
    assert not s["meets"]
    # Without probes the cached peak decides.
    (s,) = bench.summarize([*rows, gemm_result("square_2048", 1.0, 80.5, {})])
    assert s["meets"]


def test_micro_kernel_probe():
    from fastconv import _cpu

    assert _cpu.gemm_kernel_peak_gflops(1, 200) > 0
    with pytest.raises(ValueError, match="positive"):
        _cpu.gemm_kernel_peak_gflops(1, 0)
