#!/usr/bin/env python
"""The machine code of every CUDA kernel fastconv launches, compiled without a GPU.

    python benchmarks/cuda_sass.py                                # the table
    python benchmarks/cuda_sass.py --readme benchmarks/README.md  # ... into the README
    python benchmarks/cuda_sass.py --json sass.json --only gemm-128x128x8-r8x8-nn-float32

Every kernel variant of ``fastconv.cuda.kernel_variants()`` (each tile and dtype the
selectors use, at the block size it is launched with) goes through Numba to PTX, ptxas
(nvJitLink) to cubins for sm_80 (A100) and sm_90 (H100/H200), and nvdisasm to SASS
(``fastconv.cuda.machine_code``). Per kernel: registers and spill bytes on each
architecture, static shared memory, the theoretical resident warps per SM on sm_90
(out of 64) and the share of FMA instructions in the main loop (the loop holding the
most FMAs, counted statically in the SASS; sm_90).

Needs the ``cuda`` extra (``pip install '.[cuda]'``: numba-cuda[cu13], nvJitLink,
nvdisasm); no GPU. About 3 minutes on 2 cores. ``tests/test_cuda_compile.py`` checks
the same numbers (no spills, register budgets, FMA-share floors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time

START, END = "<!-- cuda-sass:start -->", "<!-- cuda-sass:end -->"


def write_between_markers(path: str, body: str) -> None:
    """Replace the text between START and END in ``path`` (appended when absent)."""
    with open(path) as fh:
        text = fh.read()
    block = f"{START}\n{body}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as fh:
        fh.write(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="kernel variant names (default: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write every report (both archs) here")
    parser.add_argument("--readme", help="write the table between the cuda-sass markers")
    args = parser.parse_args(argv)
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
    from fastconv.cuda import machine_code

    problem = machine_code.toolchain_problem()
    if problem:
        print(f"cuda_sass: cannot compile here: {problem}", file=sys.stderr)
        print(
            "cuda_sass: pip install '.[cuda]' brings NVVM, nvJitLink and nvdisasm", file=sys.stderr
        )
        return 2
    start = time.perf_counter()
    reports = machine_code.report(names=args.only, jobs=args.jobs)
    table = machine_code.markdown_table(reports)
    print(table)
    print(f"\n{len(reports)} cubins in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            rows = [dataclasses.asdict(r) | {"fma_share": r.fma_share} for r in reports]
            json.dump(rows, fh, indent=1)
    if args.readme:
        write_between_markers(args.readme, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
