"""The Cython peer: what a Python user would write in Cython instead of a C++ extension.

im2col, col2im and max pooling are typed-memoryview loops without the GIL, parallel
with OpenMP (``_cython_peer.pyx``); each convolution pass is those loops plus one NumPy
``matmul`` per group over the whole batch (the columns of every image side by side):

* forward: ``W (K, C*R*S) @ im2col(x) (C*R*S, N*OH*OW)``, then NCHW order;
* input gradient: ``col2im(W^T @ dY)``, dY in (K, N*OH*OW) order;
* weight gradient: ``dY @ im2col(x)^T``.

Compiled on first use, not at install time: an extra (``pip install fastconv[bench]``)
can bring Cython but cannot run a build step, and compiling it with the package would
make Cython a build requirement of every install. ``load()`` compiles the .pyx once
with Cython, setuptools and Python's C compiler (``-O3`` and OpenMP; no
``-march=native``: the loops are memory-bound copies, and the cached module must not
break on another CPU sharing the home directory) into a cache directory keyed by a hash
of the source and the toolchain's versions, says so on stderr, and imports the module
from there on later runs. ``python -m fastconv.bench.peers_cython`` builds it ahead of
time and prints where.

Square kernels, strides and paddings, as the benchmark cases have them.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from ..functional import get_num_threads
from ..geometry import conv_output_size, pair, pool_output_size
from .ladder import PeerUnavailable
from .machine import cache_file

__all__ = [
    "build",
    "conv2d",
    "conv2d_input",
    "conv2d_weight",
    "load",
    "max_pool2d",
    "max_pool2d_backward",
    "module_dir",
    "unavailable_reason",
]

SOURCE = Path(__file__).with_name("_cython_peer.pyx")
MODULE = "_cython_peer"
# OpenMP for prange; MSVC spells the flags its own way.
COMPILE_FLAGS = ["/O2", "/openmp"] if sys.platform == "win32" else ["-O3", "-fopenmp"]
LINK_FLAGS = [] if sys.platform == "win32" else ["-fopenmp"]

# Run in a child process: setuptools' build machinery prints, warns and keeps global
# state, none of which should reach the benchmark's process.
_BUILD_SCRIPT = """
import sys
from Cython.Build import cythonize
from setuptools import Extension, setup

source, name, out_dir, temp_dir, compile_flags, link_flags = sys.argv[1:7]
extension = Extension(
    name, [source], extra_compile_args=compile_flags.split(), extra_link_args=link_flags.split()
)
setup(
    name=name,
    packages=[],
    py_modules=[],
    ext_modules=cythonize([extension], build_dir=temp_dir, quiet=True),
    script_args=["build_ext", "--build-lib", out_dir, "--build-temp", temp_dir],
)
"""

_loaded: ModuleType | None = None


def unavailable_reason() -> str | None:
    """Why the Cython peer cannot be built here (None when it can): a missing Cython,
    setuptools or C compiler. Compiles nothing."""
    for package, name in (("Cython", "Cython"), ("setuptools", "setuptools")):
        if importlib.util.find_spec(package) is None:
            return f"{name} is not installed (pip install 'fastconv[bench]')"
    if sys.platform != "win32":
        compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
        if not compiler or shutil.which(compiler[0]) is None:
            return f"no C compiler found (CC={' '.join(compiler)})"
    return None


def _build_key() -> str:
    """A hash of everything the compiled module depends on."""
    from Cython import __version__ as cython_version

    parts = [
        SOURCE.read_bytes(),
        _BUILD_SCRIPT.encode(),
        cython_version.encode(),
        sys.version.encode(),
        sysconfig.get_platform().encode(),
        " ".join(COMPILE_FLAGS + LINK_FLAGS).encode(),
        (os.environ.get("CC") or "").encode(),
    ]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part + b"\0")
    return digest.hexdigest()[:16]


def module_dir() -> Path:
    """Where the compiled module of the current source lives (built or not)."""
    return cache_file().parent / "cython-peer" / _build_key()


def _module_file(directory: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = directory / f"{MODULE}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def build(*, quiet: bool = False) -> Path:
    """Compile the module into ``module_dir()`` unless it is there; returns its path.

    Builds in a private directory and renames it into place, so concurrent first uses
    never load a half-written file. Raises PeerUnavailable when the toolchain is missing
    and RuntimeError (with the compiler's output) when the build fails."""
    reason = unavailable_reason()
    if reason is not None:
        raise PeerUnavailable(f"cython: {reason}")
    target = module_dir()
    found = _module_file(target)
    if found is not None:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(
            f"fastconv bench: compiling the Cython peer into {target} "
            f"({' '.join(COMPILE_FLAGS)}; once per version of its source)...",
            file=sys.stderr,
            flush=True,
        )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="build-") as scratch:
        work = Path(scratch)
        source = work / SOURCE.name
        shutil.copyfile(SOURCE, source)
        out_dir = work / "out"
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _BUILD_SCRIPT,
                str(source),
                MODULE,
                str(out_dir),
                str(work / "tmp"),
                " ".join(COMPILE_FLAGS),
                " ".join(LINK_FLAGS),
            ],
            cwd=work,  # setuptools reads the configuration of the directory it runs in
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or _module_file(out_dir) is None:
            log = (done.stdout + done.stderr).strip()[-4000:]
            raise RuntimeError(f"building the Cython peer failed (exit {done.returncode}):\n{log}")
        try:
            out_dir.rename(target)
        except OSError:
            if _module_file(target) is None:  # not a concurrent build that won the race
                raise
    if not quiet:
        print(
            f"fastconv bench: Cython peer compiled in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    found = _module_file(target)
    assert found is not None
    return found


def load() -> ModuleType:
    """The compiled loops, building them first if needed (see ``build``)."""
    global _loaded
    if _loaded is None:
        path = build()
        spec = importlib.util.spec_from_file_location(f"fastconv.bench.{MODULE}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the compiled Cython peer {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded = module
    return _loaded


# =========================================================================== convolution


def _columns(x, r, stride, pad, dilation, threads):
    """im2col of ``x`` (N, C, H, W): (C*R*R, N*OH*OW) columns, and (OH, OW)."""
    n, c, h, w = x.shape
    oh = conv_output_size(h, r, stride, pad, dilation)
    ow = conv_output_size(w, r, stride, pad, dilation)
    cols = np.empty((c * r * r, n * oh * ow), dtype=x.dtype)
    load().im2col(x, cols, r, r, stride, pad, dilation, oh, ow, threads)
    return cols, (oh, ow)


def _grouped_rows(gy, groups):
    """dY (N, K, OH, OW) as (groups, K/groups, N*OH*OW): the GEMMs' operand."""
    n, k, oh, ow = gy.shape
    rows = np.ascontiguousarray(gy.transpose(1, 0, 2, 3))
    return rows.reshape(groups, k // groups, n * oh * ow)


def conv2d(x, w, stride=1, padding=0, groups=1, dilation=1, *, threads=None):
    """conv2d without bias, as im2col + one matmul per group."""
    x = np.ascontiguousarray(x)
    threads = threads or get_num_threads()
    n = x.shape[0]
    k, cg, r, _ = w.shape
    cols, (oh, ow) = _columns(x, r, stride, padding, dilation, threads)
    cols = cols.reshape(groups, cg * r * r, n * oh * ow)
    out = np.matmul(w.reshape(groups, k // groups, cg * r * r), cols)
    return np.ascontiguousarray(out.reshape(k, n, oh, ow).transpose(1, 0, 2, 3))


def conv2d_input(input_shape, w, gy, stride=1, padding=0, groups=1, dilation=1, *, threads=None):
    """The input gradient, as one matmul per group and col2im."""
    threads = threads or get_num_threads()
    n, c, h, wd = input_shape
    k, cg, r, _ = w.shape
    oh, ow = gy.shape[2:]
    w_t = w.reshape(groups, k // groups, cg * r * r).transpose(0, 2, 1)
    gcols = np.matmul(w_t, _grouped_rows(gy, groups)).reshape(c * r * r, n * oh * ow)
    gx = np.empty((n, c, h, wd), dtype=gy.dtype)
    load().col2im(gcols, gx, r, r, stride, padding, dilation, oh, ow, threads)
    return gx


def conv2d_weight(x, weight_shape, gy, stride=1, padding=0, groups=1, dilation=1, *, threads=None):
    """The weight gradient, as im2col and one matmul per group."""
    x = np.ascontiguousarray(x)
    threads = threads or get_num_threads()
    k, cg, r, _ = weight_shape
    cols, (oh, ow) = _columns(x, r, stride, padding, dilation, threads)
    cols = cols.reshape(groups, cg * r * r, -1)
    gw = np.matmul(_grouped_rows(gy, groups), cols.transpose(0, 2, 1))
    return gw.reshape(weight_shape)


# =========================================================================== max pooling


def max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False, *, threads=None):
    """Max pooling (PyTorch's rule; no dilation or ceil mode), optionally with the flat
    ``h * W + w`` indices of the maxima."""
    x = np.ascontiguousarray(x)
    threads = threads or get_num_threads()
    (kh, kw), (ph, pw) = pair(kernel_size), pair(padding)
    sh, sw = pair(kernel_size if stride is None else stride)
    n, c, h, w = x.shape
    oh, ow = pool_output_size(h, kh, sh, ph), pool_output_size(w, kw, sw, pw)
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    indices = np.empty((n, c, oh, ow), dtype=np.int64) if return_indices else None
    load().max_pool2d(x, out, indices, kh, kw, sh, sw, ph, pw, threads)
    return (out, indices) if return_indices else out


def max_pool2d_backward(grad_output, indices, input_shape, *, threads=None):
    """The input gradient of max pooling: every output gradient added at its index."""
    threads = threads or get_num_threads()
    grad_input = np.empty(tuple(input_shape), dtype=grad_output.dtype)
    load().max_pool2d_backward(
        np.ascontiguousarray(grad_output),
        np.ascontiguousarray(indices, dtype=np.int64),
        grad_input,
        threads,
    )
    return grad_input


if __name__ == "__main__":
    print(build())
