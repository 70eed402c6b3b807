"""The CUDA kernels compiled for real GPUs, without a GPU: their machine code.

The simulator runs kernels as plain Python: it never type-checks them, so a kernel that
the simulator runs correctly can still fail to compile, silently compute in float64,
spill its register tile to local memory or run at a fraction of the occupancy it was
designed for. Here every kernel variant the backend launches
(``fastconv.cuda.kernel_variants()``) goes through Numba's real pipeline to PTX, ptxas
to cubins for sm_80 and sm_90, and nvdisasm to SASS (``fastconv.cuda.machine_code``,
the numbers of ``python benchmarks/cuda_sass.py``), once per session, in a child
process with the simulator off.

The toolchain comes from PyPI with the ``cuda`` extra; where it is missing (numba-cuda
without the [cu13] wheels) the machine-code tests skip and say why.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from helpers import run_python

#: Registers a kernel outside the GEMM family may use: 64 keeps a 256-thread block at
#: 4 resident blocks (32 warps per SM) on sm_80 and sm_90.
SIMPLE_KERNEL_REGISTERS = 64

#: Floors of the main loop's FMA share (sm_90), per kernel of the large float32 tiles:
#: measured, minus a margin for compiler versions (see benchmarks/README.md).
FMA_SHARE_FLOORS = {
    "gemm": 0.75,
    "conv2d_fwd": 0.65,
    "conv2d_dgrad": 0.60,
    "conv2d_wgrad": 0.60,
}
LARGE_TILES = ("128x128x8-r8x8", "64x128x8-r8x8")

SCRIPT = textwrap.dedent(
    r"""
    import dataclasses, json, os, sys
    from fastconv.cuda import machine_code
    problem = machine_code.toolchain_problem()
    if problem:
        print("SKIP", problem)
        sys.exit(77)
    for r in machine_code.report(jobs=int(os.environ.get("JOBS", "2"))):
        print("ROW", json.dumps(dataclasses.asdict(r)), flush=True)
    """
)


@pytest.fixture(scope="session")
def reports():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", JOBS=str(min(os.cpu_count() or 1, 4)))
    proc = run_python(SCRIPT, env=env, timeout=3600)
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip() or "the CUDA toolchain is not installed")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    assert rows
    return rows


@pytest.fixture(scope="session")
def variants():
    pytest.importorskip("numba.cuda")
    code = (
        "import json; from fastconv.cuda import kernel_variants; "
        "print(json.dumps([(v.name, v.threads) for v in kernel_variants()]))"
    )
    proc = run_python(code, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _family(name: str) -> str:
    return name.split("-")[0]


def _gemm_shaped(name: str) -> bool:
    return _family(name) in FMA_SHARE_FLOORS


@pytest.mark.slow
def test_every_launched_kernel_compiles_for_sm80_and_sm90(reports, variants):
    compiled = {(r["name"], r["arch"]) for r in reports}
    missing = [(n, a) for n in variants for a in ("sm_80", "sm_90") if (n, a) not in compiled]
    assert not missing, missing
    assert all(r["threads"] == variants[r["name"]] for r in reports)


@pytest.mark.slow
def test_no_kernel_spills_on_sm80_or_sm90(reports):
    spilled = [
        (r["name"], r["arch"], r["spill_stores"], r["spill_loads"])
        for r in reports
        if r["spill_stores"] or r["spill_loads"]
    ]
    assert not spilled, spilled


@pytest.mark.slow
def test_register_budgets_give_the_designed_occupancy(reports):
    """GEMM-shaped kernels: ``_tiles.register_budget`` (16 warps per SM for the
    64-accumulator tiles, 32 for the float32 16-accumulator one); every other kernel
    at most SIMPLE_KERNEL_REGISTERS."""
    import numpy as np

    from fastconv.cuda import _tiles

    over = []
    for r in reports:
        if _gemm_shaped(r["name"]):
            tile = _tiles.TILES[r["name"].split("-")[1] + "-" + r["name"].split("-")[2]]
            dtype = np.float64 if "float64" in r["name"] else np.float32
            budget = _tiles.register_budget(tile, dtype)
            warps = 65536 // (budget * tile.threads) * tile.threads // 32
        else:
            budget, warps = SIMPLE_KERNEL_REGISTERS, 32
        if r["registers"] > budget or (r["arch"] == "sm_90" and r["warps_per_sm"] < warps):
            over.append((r["name"], r["arch"], r["registers"], budget, r["warps_per_sm"]))
    assert not over, over


@pytest.mark.slow
def test_main_loop_fma_share_of_the_large_tiles(reports):
    low = []
    for r in reports:
        family = _family(r["name"])
        if (
            r["arch"] != "sm_90"
            or family not in FMA_SHARE_FLOORS
            or not any(t in r["name"] for t in LARGE_TILES)
            or "float64" in r["name"]
        ):
            continue
        share = r["loop_fmas"] / r["loop_instructions"] if r["loop_instructions"] else 0.0
        if share < FMA_SHARE_FLOORS[family]:
            low.append((r["name"], round(share, 3), FMA_SHARE_FLOORS[family]))
    assert not low, low
    assert any(_family(r["name"]) == "conv2d_wgrad" for r in reports)


@pytest.mark.slow
def test_float32_kernels_do_no_float64_arithmetic(reports):
    bad = [r["name"] for r in reports if "float32" in r["name"] and r["ptx_f64_arithmetic"]]
    assert not bad, bad


def test_occupancy_arithmetic():
    from fastconv.cuda import machine_code as mc

    # 128 registers x 256 threads: two blocks (16 warps); 129: registers round up to
    # 136 per thread, one block
    assert mc.occupancy("sm_90", 256, 128, 17920) == 16
    assert mc.occupancy("sm_90", 256, 129, 17920) == 8
    # shared memory bound: 100 KB blocks, two fit in sm_90's 228 KB, one in sm_80's 164
    assert mc.occupancy("sm_90", 128, 32, 100 * 1024) == 8
    assert mc.occupancy("sm_80", 128, 32, 100 * 1024) == 4
    assert mc.occupancy("sm_90", 256, 16, 0) == 64


def test_main_loop_is_the_loop_with_the_most_fmas():
    from fastconv.cuda import machine_code as mc

    sass = textwrap.dedent(
        """
        .L_x_1:
                /*0000*/                   FFMA R1, R2, R3, R1 ;
                /*0010*/              @P0 BRA `(.L_x_1) ;
        .L_x_2:
                /*0020*/                   LDS.128 R4, [R8] ;
                /*0030*/                   FFMA R1, R4, R5, R1 ;
                /*0040*/                   FFMA R2, R4, R6, R2 ;
                /*0050*/                   NOP ;
                /*0060*/                   IADD3 R8, R8, 0x10, RZ ;
                /*0070*/              @P1 BRA `(.L_x_2) ;
                /*0080*/                   EXIT ;
        """
    )
    assert mc.main_loop(sass) == (5, 2)  # NOP is padding, not an instruction
    assert mc.main_loop("/*0000*/ EXIT ;") == (0, 0)


def test_generated_kernels_are_files_numba_can_cache(tmp_path):
    """The generated kernel modules live in the kernel cache directory, one file per
    source text, and Numba's on-disk cache accepts their functions (it keeps the
    compiled kernel beside them): a second process loads instead of compiling."""
    pytest.importorskip("numba.cuda")
    code = textwrap.dedent(
        """
        import os, numpy as np
        from numba import cuda
        from fastconv.cuda import _gemm, _tiles, _runtime as rt
        with rt.sources_only():
            src = _gemm.gemm_kernel(_tiles.SMALL, np.float32, False, False)
        assert src.fn.__code__.co_filename.startswith(os.environ["FASTCONV_CUDA_CACHE"])
        dispatcher = cuda.jit(cache=True)(src.fn)
        print(dispatcher._cache._cache_path)
        """
    )
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", FASTCONV_CUDA_CACHE=str(tmp_path))
    first = run_python(code, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.strip().splitlines()[-1].startswith(str(tmp_path))
    generated = sorted(p.name for p in tmp_path.glob("*.py"))
    assert len(generated) == 1
    second = run_python(code, env=env)  # the same text: the same file, not a new one
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.py")) == generated
