"""Mutation testing: inject realistic bugs one at a time and check that the tests fail.

Each mutant is an exact text substitution in one file of the kernels (csrc/) or of the
Python validation. The script never touches this working tree: it extracts a commit
(HEAD by default) into a temporary folder, builds it there once with ./dev-build.sh
(the same CMake invocation as development builds), checks that the tests pass
unmutated, then for each mutant applies the substitution, rebuilds incrementally, runs
the mutant's test files against that copy (python -m pytest from its root, -x), records
the verdict and reverts the file.

Verdicts: 'assertion' (a test failed: killed as it should be), 'crash' (the test run,
or a child process it watched, died of a signal: killed, but only by luck), 'timeout',
'survived' (every test passed: the suite misses the bug), 'not applied' (the text is
not in the file any more) or 'build failed'.

    python tools/mutation.py                  # every mutant; prints the score
    python tools/mutation.py --list
    python tools/mutation.py --only batch_norm_remainder gemm_edge_column --keep
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, or file::test ids, or -k expressions
    why: str


THREADS = "tests/test_thread_partitions.py"
MUTANTS = [
    Mutant(
        "batch_norm_remainder",
        "csrc/norm/batch_norm.cpp",
        "const int64_t c0 = shape.c * t / nt, c1 = shape.c * (t + 1) / nt;",
        "const int64_t c0 = shape.c / nt * t, c1 = shape.c / nt * (t + 1);",
        (THREADS, "-k", "batch_norm", "tests/test_batch_norm.py"),
        "channels split as C / threads, the remainder dropped",
    ),
    Mutant(
        "gemm_edge_column",
        "csrc/gemm/gemm.cpp",
        "const int64_t cols = std::min<int64_t>(nr, nc - jr);",
        "const int64_t cols = std::min<int64_t>(nr, nc - jr + 1);",
        ("tests/test_output_bounds.py", "tests/test_gemm.py"),
        "an edge micro-tile writes one column past C's edge",
    ),
    Mutant(
        "gemm_edge_tile_beta",
        "csrc/gemm/gemm.cpp",
        "merge_tile(tile, nr, rows, cols, cij, c.row_stride, c.col_stride, beta);",
        "merge_tile(tile, nr, rows, cols, cij, c.row_stride, c.col_stride, T(0));",
        ("tests/test_gemm.py",),
        "partial tiles overwrite C instead of adding beta * C (and later K blocks)",
    ),
    Mutant(
        "direct_weight_grad_partial",
        "csrc/conv2d/conv2d_direct.cpp",
        "for (int th = 0; th < threads; ++th)",
        "for (int th = 0; th + 1 < threads; ++th)",
        (THREADS, "-k", "weight"),
        "the direct weight gradient drops the last thread's partial sum",
    ),
    Mutant(
        "gemm_weight_grad_partial",
        "csrc/conv2d/conv2d_gemm.cpp",
        "for (int t = 1; t < threads; ++t) {",
        "for (int t = 2; t < threads; ++t) {",
        (THREADS, "-k", "weight"),
        "the implicit-GEMM weight gradient drops thread 1's partial sum",
    ),
    Mutant(
        "avg_pool_window_clip",
        "csrc/pool2d/pool2d.cpp",
        "return {std::max<int64_t>(start, 0), std::min(padded_end, size), padded_end - start};",
        "return {std::max<int64_t>(start, 0), std::min(padded_end, size - 1), "
        "padded_end - start};",
        ("tests/test_pooling.py",),
        "average-pool windows clipped one element short of the input's edge",
    ),
    Mutant(
        "max_pool_ties_go_last",
        "csrc/pool2d/pool2d_row_scalar.h",
        "const bool take = (x > m) | (x != x);",
        "const bool take = (x >= m) | (x != x);",
        ("tests/test_pooling.py", "tests/test_pooling_isa.py"),
        "max pooling ties go to the last element instead of the first",
    ),
    Mutant(
        "max_pool_backward_overwrites",
        "csrc/pool2d/pool2d.cpp",
        "for (int64_t o = 0; o < p.out_plane(); ++o) gin[index[o]] += gout[o];",
        "for (int64_t o = 0; o < p.out_plane(); ++o) gin[index[o]] = gout[o];",
        ("tests/test_pooling.py",),
        "max_pool2d_backward overwrites instead of adding where windows overlap",
    ),
    Mutant(
        "depthwise_weight_grad_last_row",
        "csrc/conv2d/conv2d_depthwise.cpp",
        "const T* row = (ih >= 0 && ih < p.in_h) ? phase + ih * layout.size() : zeros.data();",
        "const T* row = (ih >= 0 && ih < p.in_h - 1) ? phase + ih * layout.size() : zeros.data();",
        ("tests/test_depthwise.py", "tests/test_conv.py"),
        "the depthwise weight gradient reads the input's last row as padding",
    ),
    Mutant(
        "tapwise_range_short",
        "csrc/conv2d/conv2d_tapwise.cpp",
        "return {std::min(first, out), std::min(out, top / stride + 1)};",
        "return {std::min(first, out), std::min(out, top / stride)};",
        ("tests/test_conv_nonfinite.py", "tests/test_conv.py"),
        "a tap skips the last output that reads the input's edge",
    ),
    Mutant(
        "max_pool_indices_range",
        "fastconv/functional.py",
        "        if low < 0 or high >= plane:",
        "        if low < 0 or high > plane:",
        ("tests/test_pooling.py", "tests/test_validation_arrays.py", "tests/test_validation.py"),
        "validation lets an index one past the plane through (a write out of bounds)",
    ),
    Mutant(
        "zero_stride_accepted",
        "fastconv/_checks.py",
        "    if min(pair) <= 0:",
        "    if min(pair) < 0:",
        ("tests/test_validation.py",),
        "stride, dilation and kernel_size of 0 pass validation",
    ),
    Mutant(
        "masked_arrays_accepted",
        "fastconv/_checks.py",
        "        check_not_masked(x, name)\n        if not isinstance(x, np.ndarray):",
        "        if not isinstance(x, np.ndarray):",
        ("tests/test_hardening.py",),
        "numpy.ma arrays pass validation (their masks ignored)",
    ),
    Mutant(
        "gemm_aliasing_ignored",
        "fastconv/functional.py",
        "    if writable and not (np.may_share_memory(c, a) or np.may_share_memory(c, b)):",
        "    if writable:",
        ("tests/test_output_bounds.py", "tests/test_gemm.py"),
        "gemm writes into a C that shares memory with A or B while reading them",
    ),
    Mutant(
        "pool_padding_rule",
        "fastconv/functional.py",
        "    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:",
        "    if pads[0] > kernel[0] or pads[1] > kernel[1]:",
        ("tests/test_validation.py", "tests/test_pooling.py"),
        "pooling padding up to the whole kernel passes (PyTorch allows half)",
    ),
]

# Signs in pytest's output that a process died rather than an assertion failing: a
# signal (the test run itself, or a child process a test reports on), or a fatal error.
CRASH_SIGNS = re.compile(
    r"killed by signal|died of signal|Fatal Python error|Segmentation fault|core dumped"
    r"|signal (SIGSEGV|SIGABRT|SIGBUS|SIGILL|SIGFPE)|returncode=-\d+|exited with status -\d+"
)


def extract(ref: str, dest: Path) -> None:
    """The files of commit ``ref`` (tracked files only) into ``dest``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryFile() as tar_file:
        tar_file.write(archive)
        tar_file.seek(0)
        with tarfile.open(fileobj=tar_file) as tar:
            tar.extractall(dest)


def build(root: Path, log) -> bool:
    result = subprocess.run(
        ["bash", "dev-build.sh"], cwd=root, stdout=log, stderr=subprocess.STDOUT, check=False
    )
    return result.returncode == 0


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """(verdict, seconds, output tail) of pytest on ``tests`` in the copy at ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        result = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if exc.stdout else ""
        return "timeout", time.monotonic() - start, output[-3000:]
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    if result.returncode == 0:
        verdict = "survived"
    elif result.returncode < 0 or result.returncode > 128 or CRASH_SIGNS.search(output):
        verdict = "crash"
    elif result.returncode == 1:
        verdict = "assertion"
    else:
        verdict = f"pytest error {result.returncode}"
    return verdict, seconds, output[-3000:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="HEAD", help="the commit to mutate (default HEAD)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    args = parser.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list or not mutants:
        for m in MUTANTS:
            print(f"{m.name:32} {m.path:36} {m.why}")
        return 0 if args.list else 2

    root = Path(tempfile.mkdtemp(prefix="fastconv-mutation-"))
    log_path = root.parent / f"{root.name}.build.log"
    print(f"copy of {args.ref} in {root} (build log {log_path})", flush=True)
    results = []
    try:
        extract(args.ref, root)
        with open(log_path, "w") as log:
            start = time.monotonic()
            if not build(root, log):
                print(f"the unmutated build failed: see {log_path}")
                return 2
            print(f"built in {time.monotonic() - start:.0f} s", flush=True)
            baseline = sorted({t for m in mutants for t in m.tests if t.startswith("tests/")})
            verdict, seconds, output = run_tests(root, tuple(baseline), args.timeout)
            if verdict != "survived":  # (the unmutated code must pass)
                print(f"the tests fail without a mutant ({verdict}):\n{output}")
                return 2
            print(f"unmutated: {len(baseline)} test files pass ({seconds:.0f} s)", flush=True)
            for m in mutants:
                path = root / m.path
                original = path.read_text()
                if original.count(m.old) != 1:
                    results.append((m, "not applied", 0.0, ""))
                    print(f"{m.name}: not applied ({original.count(m.old)} matches)")
                    continue
                path.write_text(original.replace(m.old, m.new))
                try:
                    if not build(root, log):
                        results.append((m, "build failed", 0.0, ""))
                        print(f"{m.name}: build failed (see {log_path})", flush=True)
                        continue
                    verdict, seconds, output = run_tests(root, m.tests, args.timeout)
                finally:
                    path.write_text(original)
                results.append((m, verdict, seconds, output))
                print(f"{m.name}: {verdict} ({seconds:.0f} s)", flush=True)
                if verdict != "assertion":
                    print(indented_tail(output))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    counts = {}
    for _, verdict, _, _ in results:
        counts[verdict] = counts.get(verdict, 0) + 1
    killed = counts.get("assertion", 0) + counts.get("crash", 0) + counts.get("timeout", 0)
    print()
    print(f"{'mutant':32} {'verdict':12} {'s':>5}  what")
    for m, verdict, seconds, _ in results:
        print(f"{m.name:32} {verdict:12} {seconds:5.0f}  {m.why}")
    print()
    others = "".join(
        f", {n} {v}" for v, n in counts.items() if v not in ("assertion", "crash", "timeout")
    )
    print(
        f"score: {killed}/{len(results)} killed ({counts.get('assertion', 0)} by an assertion, "
        f"{counts.get('crash', 0)} by a crash, {counts.get('timeout', 0)} by a timeout){others}"
    )
    return 0 if counts.get("assertion", 0) == len(results) else 1


def indented_tail(output: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in output.strip().splitlines()[-lines:])


if __name__ == "__main__":
    sys.exit(main())
