"""The CUDA kernels compiled for real GPUs, without a GPU: their machine code.

The simulator runs kernels as plain Python: it never type-checks them, so a kernel that
the simulator runs correctly can still fail to compile, silently compute in float64,
spill its register tile to local memory or run at a fraction of the occupancy it was
designed for. Here every kernel variant the backend launches
(``fastconv.cuda.kernel_variants()``) goes through Numba's real pipeline to PTX, ptxas
to cubins for sm_80 and sm_90, and nvdisasm to SASS (``fastconv.cuda.machine_code``,
the numbers of ``python benchmarks/cuda_sass.py``), once per session, in a child
process with the simulator off. That child starts when collection ends (``start_early``,
called by the conftest, which also runs this module's tests last) at a low priority, so
its minutes of compiling overlap the rest of the suite instead of adding to it.

The toolchain comes from PyPI with the ``cuda`` extra; where it is missing (numba-cuda
without the [cu13] wheels) the machine-code tests skip and say why.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from helpers import run_python, start_python

#: Registers a kernel outside the GEMM family may use: 64 keeps a 256-thread block at
#: 4 resident blocks (32 warps per SM) on sm_80 and sm_90 ...
SIMPLE_KERNEL_REGISTERS = 64
#: ... except these, not reworked yet (index arithmetic per element): what they use now.
SIMPLE_KERNEL_EXCEPTIONS = {
    "conv2d_fwd_direct": 72,
    "conv2d_dgrad_direct": 128,
    "avg_pool2d_fwd": 72,
    "avg_pool2d_bwd": 96,
}

#: Floors of the main loop's FMA share on sm_90, per kernel and tile of the large
#: float32 tiles (32-bit index variants): what benchmarks/cuda_sass.py measures (see
#: benchmarks/README.md), less a margin for compiler versions.
FMA_SHARE_FLOORS = {
    ("gemm", "128x128x8-r8x8"): 0.75,
    ("gemm", "64x128x8-r8x8"): 0.70,
    ("conv2d_fwd", "128x128x8-r8x8"): 0.65,
    ("conv2d_fwd", "64x128x8-r8x8"): 0.58,
    ("conv2d_dgrad", "128x128x8-r8x8"): 0.65,
    ("conv2d_dgrad", "64x128x8-r8x8"): 0.58,
    ("conv2d_wgrad", "128x128x8-r8x8"): 0.65,
    ("conv2d_wgrad", "64x128x8-r8x8"): 0.58,
}
GEMM_SHAPED = {"gemm", "conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad"}

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


_report_process = []


def start_early():
    """Start compiling every kernel variant in a niced child, once per session."""
    if not _report_process:
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", JOBS=str(min(os.cpu_count() or 1, 4)))
        _report_process.append(start_python(SCRIPT, env=env, niceness=10))


def stop_early():
    """Kill the child if the session ends before the tests that read it ran."""
    for proc in _report_process:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="session")
def reports():
    start_early()
    proc = _report_process[0]
    stdout, stderr = proc.communicate(timeout=3600)
    if proc.returncode == 77:
        pytest.skip(stdout.strip() or "the CUDA toolchain is not installed")
    assert proc.returncode == 0, stdout[-4000:] + stderr[-4000:]
    rows = [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("ROW ")]
    assert rows
    return rows


@pytest.fixture(scope="session")
def variants():
    pytest.importorskip("numba.cuda")
    code = (
        "import json; from fastconv.cuda import kernel_variants; "
        "print(json.dumps([(v.name, v.threads) for v in kernel_variants()]))"
    )
    # the simulator off: some block sizes are smaller under it
    proc = run_python(code, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _family(name: str) -> str:
    return name.split("-")[0]


def _gemm_shaped(name: str) -> bool:
    return _family(name) in GEMM_SHAPED


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


def _budget(name: str) -> int:
    """The register budget of a kernel variant (see ``_tiles.register_budget``)."""
    import numpy as np

    from fastconv.cuda import _tiles

    if not _gemm_shaped(name):
        return SIMPLE_KERNEL_EXCEPTIONS.get(_family(name), SIMPLE_KERNEL_REGISTERS)
    parts = name.split("-")
    dtype = np.float64 if "float64" in parts else np.float32
    index = "int64" if parts[-1] == "i64" else "int32"
    return _tiles.register_budget(_tiles.TILES[f"{parts[1]}-{parts[2]}"], dtype, parts[0], index)


@pytest.mark.slow
def test_register_budgets_give_the_designed_occupancy(reports):
    """Every kernel within its register budget: the GEMM-shaped ones the tile's design
    (two 256-thread blocks, 16 warps per SM, for the 64-accumulator tiles; 32 warps for
    the float32 16-accumulator tile) unless ``_tiles.RELAXED_BUDGETS`` says otherwise;
    every other kernel at most SIMPLE_KERNEL_REGISTERS (32 warps per SM)."""
    from fastconv.cuda import machine_code as mc

    over = []
    for r in reports:
        budget = _budget(r["name"])
        designed = mc.occupancy(r["arch"], r["threads"], budget, r["shared_bytes"])
        if r["registers"] > budget or r["warps_per_sm"] < designed:
            over.append((r["name"], r["arch"], r["registers"], budget, r["warps_per_sm"]))
    assert not over, over
    # the budgets themselves: the large GEMM and forward tiles keep 16 warps per SM
    assert _budget("gemm-128x128x8-r8x8-nn-float32") == 128
    assert _budget("conv2d_fwd-128x128x8-r8x8-float32") == 128


@pytest.mark.slow
def test_main_loop_fma_share_of_the_large_tiles(reports):
    shares = {}
    for r in reports:
        parts = r["name"].split("-")
        key = (parts[0], "-".join(parts[1:3]))
        if r["arch"] == "sm_90" and key in FMA_SHARE_FLOORS and parts[-1] == "float32":
            shares[r["name"]] = (r["loop_fmas"] / max(r["loop_instructions"], 1), key)
    assert len(shares) == 14  # 4 GEMM transposes x 2 tiles + 3 convolutions x 2 tiles
    low = [
        (n, round(s, 3), FMA_SHARE_FLOORS[k])
        for n, (s, k) in shares.items()
        if s < FMA_SHARE_FLOORS[k]
    ]
    assert not low, low


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
