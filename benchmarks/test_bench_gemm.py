"""GEMM benchmarks (issue 3): fastconv.gemm vs numpy matmul (OpenBLAS) vs torch.mm.

float32, C = A @ B into a preallocated C (no allocation timed), 2 threads: square 512,
1024, 2048 and the conv-shaped 64x3136x576, 256x3136x64, 512x49x4608, 128x784x1152
(M x N x K). Each result is checked against a float64 product first. Under
``--benchmark-disable`` the shapes are capped at 256 a side (smoke test).

    PYTHONPATH=src python -m pytest benchmarks/test_bench_gemm.py --benchmark-only
    PYTHONPATH=src python -m fastconv bench --op gemm            # alternating ratio table
    PYTHONPATH=src python -m fastconv bench --op gemm --threads 1

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
    assert "ISA path" in text and "threads" in text and "GFLOP/s fp32 FMA" in text
    assert "conv fwd: fastconv vs" in text
    report = json.loads(out_json.read_text())
    assert report["meta"]["isa"] and report["meta"]["threads"] >= 1
    got = {(r["op"], r["case"], r["direction"]) for r in report["results"]}
    assert ("conv", "resnet_3x3_56", "dw") in got and ("gemm", "square_512", "") in got
    for r in report["results"]:
        fc = r["impls"]["fastconv"]
        assert fc["ok"] and fc["best_ms"] > 0 and fc["rate"] > 0
        assert set(fc["speedup"]) == set(r["impls"]) - {"fastconv"}
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
