"""The machine code of every CUDA kernel, compiled without a GPU.

Each kernel the backend launches (``fastconv.cuda.kernel_variants()``: every tile and
dtype the selectors use, with the block size it is launched with) goes through Numba's
real pipeline to PTX (NVVM), then through ptxas (nvJitLink, via cuda-core's ``Linker``)
to a cubin for each architecture, and nvdisasm shows its SASS. From these come, per
kernel and architecture: registers, spill bytes, static shared memory, the theoretical
occupancy, and the share of FMA instructions in the main loop (the loop that holds the
most FMAs: the reduction loop of the GEMM-shaped kernels).

Everything comes from PyPI wheels (``pip install 'fastconv[cuda]'``: numba-cuda[cu13]
brings NVVM and NVRTC, cuda-toolkit nvJitLink and nvdisasm); no GPU and no driver are
needed. Must run with the CUDA simulator off (``NUMBA_ENABLE_CUDASIM`` unset or 0).

PTX is generated once per kernel, for the oldest architecture (PTX is forward
compatible), and assembled for each architecture: the same PTX a GPU of that
architecture would JIT-compile only differs in its ``.target`` line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Any

ARCHS = ("sm_80", "sm_90")

#: Per-SM limits of the architectures (CUDA occupancy calculator).
SM_LIMITS = {
    "sm_80": dict(warps=64, blocks=32, registers=65536, shared=167936, shared_reserved=1024),
    "sm_90": dict(warps=64, blocks=32, registers=65536, shared=233472, shared_reserved=1024),
}
#: Registers are allocated per warp in units of 256 (8 per thread).
REGISTER_UNIT = 256
#: FMA opcodes (float32 and float64; HFMA2 is a move idiom, not arithmetic).
FMA_OPCODES = ("FFMA", "DFMA")

_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[\w.]+)?")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


@dataclasses.dataclass
class KernelReport:
    """One kernel variant on one architecture."""

    name: str
    arch: str
    threads: int
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int  # static shared memory of the kernel (reserved memory not counted)
    warps_per_sm: int  # theoretical, from registers, shared memory and the block size
    occupancy: float  # warps_per_sm / the architecture's maximum
    loop_instructions: int  # SASS instructions of the main loop (0: no loop with an FMA)
    loop_fmas: int
    ptx_f64_arithmetic: int  # float64 add/sub/mul/fma/div instructions in the PTX

    @property
    def fma_share(self) -> float | None:
        return self.loop_fmas / self.loop_instructions if self.loop_instructions else None

    @property
    def spill_bytes(self) -> int:
        return self.spill_stores + self.spill_loads


def toolchain_problem() -> str | None:
    """None where PTX, cubins and SASS can be made here, else what is missing."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "the CUDA simulator is on (NUMBA_ENABLE_CUDASIM): compiling needs it off"
    try:
        from numba import cuda

        def _probe(out):
            out[0] = 1.0

        ptx, _ = cuda.compile_ptx(_probe, "void(float32[:])", cc=(8, 0))
        link(ptx, "sm_90")
    except Exception as exc:  # no numba-cuda / NVVM / NVRTC / nvJitLink
        return f"{type(exc).__name__}: {exc}"
    if nvdisasm_path() is None:
        return "nvdisasm not found (pip install 'cuda-toolkit[nvdisasm]')"
    return None


def nvdisasm_path() -> str | None:
    try:
        from cuda.pathfinder import find_nvidia_binary_utility

        return find_nvidia_binary_utility("nvdisasm")
    except Exception:  # an older cuda-pathfinder, or none: look on PATH
        import shutil

        return shutil.which("nvdisasm")


def compile_ptx(kernel: Any, threads: int, cc: tuple[int, int] = (8, 0)) -> str:
    """PTX of a ``KernelSource`` as the backend compiles it (same flags and bounds)."""
    from numba import cuda

    from . import _runtime as rt

    ptx, _ = cuda.compile_ptx(kernel.fn, kernel.sig, cc=cc, **rt.jit_options(kernel))
    return ptx


def link(ptx: str, arch: str) -> tuple[bytes, str]:
    """(cubin, ptxas's verbose log) of ``ptx`` for ``arch`` ("sm_90")."""
    from cuda.core import Linker, LinkerOptions, ObjectCode

    linker = Linker(
        ObjectCode.from_ptx(ptx.encode()), options=LinkerOptions(arch=arch, verbose=True)
    )
    cubin = linker.link("cubin")
    return bytes(cubin.code), linker.get_info_log()


def parse_log(log: str) -> dict:
    """registers, spill stores/loads and shared bytes from ptxas's verbose log."""

    def number(pattern: str) -> int:
        found = re.findall(pattern, log)
        if not found:
            raise ValueError(f"ptxas log without {pattern!r}:\n{log}")
        return int(found[-1])

    return dict(
        registers=number(r"[Uu]sed (\d+) registers"),
        spill_stores=number(r"(\d+) bytes spill stores"),
        spill_loads=number(r"(\d+) bytes spill loads"),
        shared_bytes=number(r"(\d+) bytes smem"),
    )


def disassemble(cubin: bytes) -> str:
    tool = nvdisasm_path()
    if tool is None:
        raise RuntimeError("nvdisasm not found (pip install 'cuda-toolkit[nvdisasm]')")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        return subprocess.run(
            [tool, "-c", fh.name], check=True, capture_output=True, text=True
        ).stdout


def instructions(sass: str) -> list[tuple[str | None, str, str | None]]:
    """(label defined on this line or None, opcode, branch target or None) per line."""
    out: list[tuple[str | None, str, str | None]] = []
    pending = None
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            pending = label.group(1)
            continue
        ins = _INSTRUCTION.search(line)
        if ins is None:
            continue
        target = _BRANCH_TARGET.search(line)
        out.append((pending, ins.group(2), target.group(1) if target else None))
        pending = None
    return out


def main_loop(sass: str) -> tuple[int, int]:
    """(instructions, FMAs) of the loop with the most FMAs, the outermost such loop
    when loops nest (a reduction loop whose inner product is a loop of its own).

    A loop is the code from a label to a later backward branch to it, counted
    statically; NOPs (padding) are not instructions. (0, 0) when no loop holds an FMA.
    """
    code = [ins for ins in instructions(sass) if ins[1] != "NOP"]
    where = {label: i for i, (label, _, _) in enumerate(code) if label}
    best = (0, 0)
    for end, (_, opcode, target) in enumerate(code):
        if opcode != "BRA" or target not in where or where[target] > end:
            continue
        body = code[where[target] : end + 1]
        fmas = sum(op in FMA_OPCODES for _, op, _ in body)
        if fmas > best[1] or (fmas == best[1] and fmas and len(body) > best[0]):
            best = (len(body), fmas)
    return best


def occupancy(arch: str, threads: int, registers: int, shared_bytes: int) -> int:
    """Theoretical resident warps per SM."""
    limits = SM_LIMITS[arch]
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(max(registers, 1) * 32 / REGISTER_UNIT) * REGISTER_UNIT
    blocks = min(
        limits["blocks"],
        limits["warps"] // warps,
        (limits["registers"] // per_warp) // warps,
        limits["shared"] // (shared_bytes + limits["shared_reserved"]),
    )
    return blocks * warps


def analyse(name: str, ptx: str, threads: int, archs=ARCHS) -> list[KernelReport]:
    reports = []
    f64 = len(re.findall(r"\b(?:fma|mul|add|sub|div)\.\w+\.f64", ptx))
    for arch in archs:
        cubin, log = link(ptx, arch)
        info = parse_log(log)
        # sm_90's figure includes the 1 KB a block reserves (when it uses any shared
        # memory): report the kernel's own
        reserved = SM_LIMITS[arch]["shared_reserved"] if arch >= "sm_90" else 0
        own = max(0, info["shared_bytes"] - reserved)
        loop_instructions, loop_fmas = main_loop(disassemble(cubin))
        warps = occupancy(arch, threads, info["registers"], own)
        reports.append(
            KernelReport(
                name=name,
                arch=arch,
                threads=threads,
                registers=info["registers"],
                spill_stores=info["spill_stores"],
                spill_loads=info["spill_loads"],
                shared_bytes=own,
                warps_per_sm=warps,
                occupancy=warps / SM_LIMITS[arch]["warps"],
                loop_instructions=loop_instructions,
                loop_fmas=loop_fmas,
                ptx_f64_arithmetic=f64,
            )
        )
    return reports


def _report_one(job: tuple[str, int, tuple[str, ...]]) -> list[KernelReport]:
    from . import _runtime as rt
    from . import kernel_variants

    name, threads, archs = job
    factories = {v.name: v for v in kernel_variants()}
    with rt.sources_only():
        source = factories[name].factory()
    return analyse(name, compile_ptx(source, threads), threads, archs)


def report(names=None, archs=ARCHS, jobs: int | None = None) -> list[KernelReport]:
    """Reports of the named kernel variants (default: all), one process per core."""
    from . import kernel_variants

    variants = [v for v in kernel_variants() if names is None or v.name in names]
    work = [(v.name, v.threads, tuple(archs)) for v in variants]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1 or len(work) == 1:
        return [r for job in work for r in _report_one(job)]
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(method)) as pool:
        return [r for rows in pool.map(_report_one, work) for r in rows]


def markdown_table(reports: list[KernelReport], occupancy_arch: str = "sm_90") -> str:
    """One row per kernel: registers and spills per architecture, shared memory,
    occupancy on ``occupancy_arch`` and the main loop's FMA share (there)."""
    by_name: dict[str, dict[str, KernelReport]] = {}
    for r in reports:
        by_name.setdefault(r.name, {})[r.arch] = r
    archs = sorted({r.arch for r in reports})
    head = (
        ["kernel", "threads"]
        + [f"regs {a}" for a in archs]
        + [f"spill B {a}" for a in archs]
        + ["smem B", f"warps/SM {occupancy_arch}", "occupancy", "main-loop FMA share"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per_arch in by_name.items():
        main = per_arch.get(occupancy_arch) or next(iter(per_arch.values()))
        share = main.fma_share
        share_s = (
            f"{share:.0%} ({main.loop_fmas}/{main.loop_instructions})" if share is not None else "-"
        )
        cells = (
            [name, str(main.threads)]
            + [str(per_arch[a].registers) if a in per_arch else "-" for a in archs]
            + [str(per_arch[a].spill_bytes) if a in per_arch else "-" for a in archs]
            + [str(main.shared_bytes), str(main.warps_per_sm), f"{main.occupancy:.0%}", share_s]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
