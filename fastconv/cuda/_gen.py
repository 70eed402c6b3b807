"""Kernel source generation for the GEMM-shaped kernels.

Numba has no unroll pragma, no vector types and no register arrays: a ``for`` over the
reduction slice stays a loop (with its index arithmetic between the FMAs), and a
``cuda.local.array`` indexed by a loop variable lives in local memory. So the
GEMM-shaped kernels are written out as Python source, per tile and dtype, with every
constant a literal: the inner product fully unrolled over BK, the TM x TN accumulators
and the register fragments plain scalars, shared memory read at a per-thread base plus
constant offsets (which ptxas folds into the load instructions, and which lets it fuse
four neighbouring floats into one 128-bit load).

The text is compiled as a module of its own. On a GPU the module is written to a file
under the kernel cache directory, named by the hash of its text, so ``cuda.jit(...,
cache=True)`` can keep the compiled kernel on disk (a second process loads it instead
of compiling). Under the simulator the text is executed in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import sys
import tempfile
import types as pytypes
from collections.abc import Iterator

from . import _runtime as rt
from ._tiles import SMEM_PAD as PAD


class Source:
    """Lines of Python source with an indentation level."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.level = 0

    def __call__(self, *lines: str) -> None:
        for line in lines:
            self.lines.append("    " * self.level + line)

    @contextlib.contextmanager
    def block(self, header: str) -> Iterator[None]:
        self(header)
        self.level += 1
        try:
            yield
        finally:
            self.level -= 1

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


HEADER = "from numba import cuda, float32, float64, int32, int64, uint32, uint64\n\n\n"


def cache_dir() -> str:
    """Where generated kernel modules (and Numba's cache of them) live:
    ``$FASTCONV_CUDA_CACHE``, else ``$XDG_CACHE_HOME/fastconv/cuda``, else
    ``~/.cache/fastconv/cuda``."""
    explicit = os.environ.get("FASTCONV_CUDA_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastconv", "cuda")


def load(name: str, body: str) -> pytypes.ModuleType:
    """The module holding the generated ``body`` (function definitions)."""
    text = HEADER + body
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    module_name = f"fastconv_cuda_generated_{name}_{digest}"
    found = sys.modules.get(module_name)
    if found is not None:
        return found
    if rt.SIMULATOR:
        module = pytypes.ModuleType(module_name)
        exec(compile(text, f"<{module_name}>", "exec"), module.__dict__)
        return module
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, module_name + ".py")
    if not os.path.exists(path):
        # written whole, then renamed: a concurrent process sees all or nothing, and
        # the file (whose modification time Numba's cache index checks) never changes
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[module_name] = module
    return module


# --------------------------------------------------------------------------- pieces


def vector_rows(count: int, threads_along: int, thread: str, width: int = 4) -> list[str]:
    """Offsets (expressions in ``thread``) of the ``count`` rows a thread owns along one
    tile dimension: groups of ``width`` neighbours (one 128-bit shared load each), the
    groups ``threads_along * width`` apart; single rows ``threads_along`` apart when
    ``count`` is not a multiple of ``width``."""
    if count % width:
        return [f"{thread} + {i * threads_along}" for i in range(count)]
    return [
        f"{thread} * {width} + {(i // width) * threads_along * width + i % width}"
        for i in range(count)
    ]


def row_offsets(count: int, threads_along: int, width: int = 4) -> tuple[str, list[int]]:
    """(per-thread base multiplier, constant offsets) of ``vector_rows``: row i of
    thread t is ``t * multiplier + offsets[i]``."""
    if count % width:
        return "1", [i * threads_along for i in range(count)]
    return str(width), [(i // width) * threads_along * width + i % width for i in range(count)]


def emit_mma(src: Source, cfg, a_buf: int, b_buf: int) -> None:
    """acc[i][j] += A[kk, row i] * B[kk, col j] over one BK slice, fully unrolled, read
    through the views ``Ar`` / ``Br`` (the thread's first row / column) at the constant
    offsets ``a_buf`` / ``b_buf`` of the buffer."""
    lda, ldb = cfg.bm + PAD, cfg.bn + PAD
    _, a_offs = row_offsets(cfg.tm, cfg.bm // cfg.tm)
    _, b_offs = row_offsets(cfg.tn, cfg.bn // cfg.tn)
    for kk in range(cfg.bk):
        for i, off in enumerate(a_offs):
            src(f"a{i} = Ar[{a_buf + kk * lda + off}]")
        for j, off in enumerate(b_offs):
            src(f"b{j} = Br[{b_buf + kk * ldb + off}]")
        for i in range(cfg.tm):
            for j in range(cfg.tn):
                src(f"c{i}_{j} += a{i} * b{j}")


def emit_zero_accumulators(src: Source, cfg, zero: str) -> None:
    for i in range(cfg.tm):
        src("; ".join(f"c{i}_{j} = {zero}" for j in range(cfg.tn)))


def emit_thread_bases(src: Source, cfg) -> None:
    """ty / tx and the shared-memory bases of the thread's rows and columns."""
    ry, rx = cfg.bm // cfg.tm, cfg.bn // cfg.tn
    a_mult, _ = row_offsets(cfg.tm, ry)
    b_mult, _ = row_offsets(cfg.tn, rx)
    src(f"ty = tid // {rx}", f"tx = tid - ty * {rx}")
    src(f"a_base = ty * {a_mult}", f"b_base = tx * {b_mult}")


def owned(cfg) -> tuple[list[str], list[str]]:
    """Expressions (in ty / tx) of the rows and columns of C a thread owns."""
    ry, rx = cfg.bm // cfg.tm, cfg.bn // cfg.tn
    return vector_rows(cfg.tm, ry, "ty"), vector_rows(cfg.tn, rx, "tx")


#: Names the generated kernels give to values that are not integers (floats, arrays
#: and views, flags): ``narrow`` leaves their assignments alone.
_NOT_INDEX = re.compile(
    r"(c\d+_\d+|a\d+|b\d+|va\d+|vb\d+|v|bv|As|Bs|Ar|Br|Aw|Bw|Xt|Rt|St|xtab|rtab|stab"
    r"|cok\d+|q_ok)"
)
_ASSIGN = re.compile(r"^(\s*)([A-Za-z_]\w*) (=|\+=|-=|//=) (.+)$")


def narrow(text: str, index: str) -> str:
    """Index arithmetic of a generated kernel in ``index`` ("int32" or "int64").

    Numba computes integer arithmetic in 64 bits; for "int32", every integer
    assignment is cast back to int32 (LLVM then does the arithmetic itself in 32 bits:
    half the registers, one instruction per add) and arrays are indexed through
    ``uint32`` (one 32-bit offset per address). The launch picks "int32" only when
    every tensor it touches has fewer than 2**31 elements, so no offset overflows.
    """
    if index == "int64":
        return text
    out = []
    for line in text.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        statements = []
        for statement in line.strip().split("; "):
            m = _ASSIGN.match(statement)
            if m and not _NOT_INDEX.fullmatch(m.group(2)) and "cuda.shared" not in statement:
                name, op, expr = m.group(2), m.group(3), m.group(4)
                if op != "=":
                    expr = f"{name} {op[:-1]} ({expr})"
                statement = f"{name} = int32({expr})"
            statements.append(statement)
        out.append(indent + "; ".join(statements) if line.strip() else line)
    text = "\n".join(out).replace("[uint64(", "[uint32(").replace(">> 62", ">> 31")
    return text.replace(", int64)", ", int32)") + "\n"  # shared index tables too


class Counter:
    """A position along a reduction decomposed in mixed radix (most significant digit
    first, unbounded), advanced by a fixed delta with one carry per digit: no division
    in the loop. ``tracked`` are linear forms ``start + sum(coef_d * digit_d)`` kept
    up to date with the digits.

    Names: digits ``{p}_d{i}``, tracked ``{p}_{name}``, per-launch constants
    ``{p}_D{i}`` (delta digits), ``{p}_T{name}`` (tracked delta), ``{p}_C{i}{name}``
    (tracked change of a carry into digit i).
    """

    def __init__(self, prefix: str, radices: list[str], tracked: dict[str, tuple[str, list[str]]]):
        self.p = prefix
        self.radices = radices  # radix of digits 1..; digit 0 is unbounded
        self.tracked = tracked  # name -> (start expression, coefficient per digit)

    @property
    def digits(self) -> int:
        return len(self.radices) + 1

    def emit_init(self, src: Source, position: str, delta: str) -> None:
        """Digits of ``position`` and of ``delta`` (divisions here, outside the loop)."""
        p = self.p
        src(f"{p}_rest = {position}")
        for i in range(self.digits - 1, 0, -1):
            src(
                f"{p}_d{i} = {p}_rest % {self.radices[i - 1]}",
                f"{p}_rest //= {self.radices[i - 1]}",
            )
        src(f"{p}_d0 = {p}_rest")
        src(f"{p}_rest = {delta}")
        for i in range(self.digits - 1, 0, -1):
            src(
                f"{p}_D{i} = {p}_rest % {self.radices[i - 1]}",
                f"{p}_rest //= {self.radices[i - 1]}",
            )
        src(f"{p}_D0 = {p}_rest")
        for name, (start, coefs) in self.tracked.items():
            terms = " + ".join(f"({c}) * {p}_d{i}" for i, c in enumerate(coefs) if c != "0")
            dterms = " + ".join(f"({c}) * {p}_D{i}" for i, c in enumerate(coefs) if c != "0")
            src(f"{p}_{name} = {start} + {terms or '0'}", f"{p}_T{name} = {dterms or '0'}")
            for i in self._carries(name):
                # digit i wraps (-radix * coef_i), digit i-1 goes up by one (+coef_{i-1})
                src(f"{p}_C{i}{name} = ({coefs[i - 1]}) - {self.radices[i - 1]} * ({coefs[i]})")

    def _carries(self, name: str) -> list[int]:
        """The digits whose carry changes the tracked form ``name``."""
        coefs = self.tracked[name][1]
        return [i for i in range(self.digits - 1, 0, -1) if coefs[i - 1] != "0" or coefs[i] != "0"]

    def emit_advance(self, src: Source) -> None:
        p = self.p
        # digit 0 is only ever read through the tracked forms: not kept
        src("; ".join(f"{p}_d{i} += {p}_D{i}" for i in range(1, self.digits)))
        if self.tracked:
            src("; ".join(f"{p}_{n} += {p}_T{n}" for n in self.tracked))
        for i in range(self.digits - 1, 0, -1):
            with src.block(f"if {p}_d{i} >= {self.radices[i - 1]}:"):
                src(f"{p}_d{i} -= {self.radices[i - 1]}")
                if i > 1:
                    src(f"{p}_d{i - 1} += 1")
                for n in self.tracked:
                    if i in self._carries(n):
                        src(f"{p}_{n} += {p}_C{i}{n}")


def buffer_sizes(cfg) -> tuple[int, int]:
    """Elements of one A and one B buffer in shared memory."""
    return cfg.bk * (cfg.bm + PAD), cfg.bk * (cfg.bn + PAD)


def emit_shared_tiles(src: Source, cfg, dt: str) -> None:
    """Two buffers of each tile, flat; 16-byte aligned for 128-bit loads."""
    a, b = buffer_sizes(cfg)
    align = "" if rt.SIMULATOR else ", alignment=16"  # the simulator takes no alignment
    src(
        f"As = cuda.shared.array({2 * a}, {dt}{align})",
        f"Bs = cuda.shared.array({2 * b}, {dt}{align})",
    )


def emit_guarded_loads(src: Source, prefix: str, loads: list[tuple[str, str]], dt: str) -> None:
    """``{prefix}{t} = value if condition else 0``: the load only runs where it may."""
    for t, (condition, value) in enumerate(loads):
        src(f"{prefix}{t} = {value} if {condition} else {dt}(0)")


def emit_main_loop(src: Source, cfg, dt: str, load, a_store: list[str], b_store: list[str]):
    """The double-buffered reduction: registers <- global (``load(src)``, which also
    advances to the next slice; loads past the end give zeros), the current buffer's
    inner product, registers -> the other buffer, one barrier per step. The loop body
    is written twice, one per buffer, so every shared-memory offset is a constant.
    Needs ``steps`` (slices; at least one pass is made) set before it."""
    a_size, b_size = buffer_sizes(cfg)

    def store(buf: int) -> None:
        for t, off in enumerate(a_store):
            src(f"Aw[{buf * a_size + int(off)}] = va{t}")
        for t, off in enumerate(b_store):
            src(f"Bw[{buf * b_size + int(off)}] = vb{t}")

    # per-thread views: every shared-memory access through them is at a constant offset
    src("Ar = As[a_base:]", "Br = Bs[b_base:]", "Aw = As[a_s:]", "Bw = Bs[b_s:]")
    emit_zero_accumulators(src, cfg, f"{dt}(0)")
    load(src)
    store(0)
    src("cuda.syncthreads()", "step = 0")
    with src.block("while True:"):
        for buf in (0, 1):
            load(src)
            emit_mma(src, cfg, buf * a_size, buf * b_size)
            store(1 - buf)
            src("cuda.syncthreads()", "step += 1")
            with src.block("if step >= steps:"):
                src("break")


def launch_bounds(cfg, dtype, kernel: str = "gemm", index: str = "int32") -> tuple[int, int]:
    """(threads, minimum resident blocks per SM): the register budget ptxas works to
    (``_tiles.register_budget``)."""
    from ._tiles import register_budget

    budget = register_budget(cfg, dtype, kernel, index)
    return cfg.threads, max(1, 65536 // (cfg.threads * budget))
