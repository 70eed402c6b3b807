"""Compile the CUDA kernels for a real GPU target, without a GPU.

The simulator runs kernels as plain Python: it never type-checks them, so a kernel that
the simulator runs correctly can still fail to compile, silently compute in float64, or
keep its register tile in local memory. Here every registered kernel variant
(``fastconv.cuda.kernel_variants``) goes through Numba's real CUDA pipeline to sm_90 PTX
(NVVM), and, where nvJitLink is installed, through ptxas for register and spill counts.

Runs in a subprocess with the simulator off. Skipped where numba-cuda or NVVM (the CUDA
toolkit's libnvvm, e.g. ``pip install numba-cuda[cu13]``) is missing. By default a
representative subset (float32, one tile of each shape class); set
``FASTCONV_COMPILE_ALL=1`` for all variants (a few minutes).
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from helpers import run_python

SCRIPT = textwrap.dedent(
    r"""
    import json, os, re, sys
    try:
        import numba.cuda.dispatcher as disp
        from numba import cuda
        from numba.cuda.cudadrv.nvvm import NVVM
        NVVM()

        def _probe(out):
            out[0] = 1.0

        # the whole pipeline, not just NVVM: compiling also loads NVRTC
        cuda.compile_ptx(_probe, "void(float32[:])", cc=(9, 0))
    except Exception as exc:  # no numba-cuda / no libnvvm / no NVRTC
        print("SKIP", type(exc).__name__, exc)
        sys.exit(77)
    if not hasattr(disp, "get_current_device"):
        print("SKIP numba-cuda internals differ (dispatcher.get_current_device)")
        sys.exit(77)

    class Sm90:
        compute_capability = (9, 0)

    # device functions are compiled for "the current device": there is none here
    disp.get_current_device = lambda: Sm90()
    import numpy as np
    import fastconv.cuda as fc
    from fastconv.cuda import _runtime as rt

    try:
        from cuda.bindings import nvjitlink
    except Exception:
        nvjitlink = None

    def ptxas(ptx):
        h = nvjitlink.create(2, ["-arch=sm_90", "-verbose"])
        data = ptx.encode()
        nvjitlink.add_data(h, nvjitlink.InputType.PTX, data, len(data), "k.ptx")
        nvjitlink.complete(h)
        buf = bytearray(nvjitlink.get_info_log_size(h))
        nvjitlink.get_info_log(h, buf)
        nvjitlink.destroy(h)
        log = buf.decode(errors="replace")
        regs = re.findall(r"Used (\d+) registers", log)
        spill = re.findall(r"(\d+) bytes spill stores", log)
        return (int(regs[0]) if regs else None), (int(spill[0]) if spill else None)

    everything = os.environ.get("FASTCONV_COMPILE_ALL") == "1"
    if everything:
        variants = fc.kernel_variants()
    else:
        # float32; each kernel with its largest tile (most register pressure) and the
        # conv kernels also with the small one; gemm nn and tn only
        keep = ("128x128x8-r8x8", "128x128x16-r8x8", "64x64x8-r4x4")
        variants = [(n, f) for n, f in fc.kernel_variants((np.float32,))
                    if not n.startswith(("copy1", "copy2", "copy3"))
                    and (not n.startswith(("gemm", "conv2d_fwd-", "conv2d_dgrad-",
                                           "conv2d_wgrad-")) or any(k in n for k in keep))
                    and not (n.startswith("gemm") and not n.endswith(("-nn-float32",
                                                                       "-tn-float32")))]
    with rt.sources_only():
        for name, factory in variants:
            src = factory()
            ptx, _ = cuda.compile_ptx(src.fn, src.sig, cc=(9, 0))
            row = {
                "name": name,
                "f64_ops": len(re.findall(r"\b(?:fma|mul|add|sub|div)\.\w+\.f64", ptx)),
                "local": len(re.findall(r"\.local\b", ptx)),
            }
            if nvjitlink is not None:
                row["regs"], row["spill"] = ptxas(ptx)
            print("ROW", json.dumps(row), flush=True)
    """
)


@pytest.fixture(scope="module")
def compiled():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    proc = run_python(SCRIPT, env=env, timeout=1800)
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip() or "NVVM not available")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    assert rows
    return rows


@pytest.mark.slow
def test_kernels_compile_for_sm90(compiled):
    names = [r["name"] for r in compiled]
    assert any(n.startswith("conv2d_wgrad-") for n in names)


@pytest.mark.slow
def test_float32_kernels_do_no_float64_arithmetic(compiled):
    bad = [r for r in compiled if r["name"].endswith("float32") and r["f64_ops"]]
    assert not bad, bad


@pytest.mark.slow
def test_register_tiles_stay_in_registers(compiled):
    """No local memory in the PTX (the accumulator arrays were promoted to registers)
    and, where ptxas ran, no spills for float32."""
    bad = [r for r in compiled if r["local"]]
    assert not bad, bad
    spilled = [
        r for r in compiled if r["name"].endswith("float32") and r.get("spill") not in (None, 0)
    ]
    assert not spilled, spilled
