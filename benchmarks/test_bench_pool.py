"""Pooling benchmark: fastconv vs PyTorch vs a plain copy.

On a (32, 64, 112, 112) float32 input, 2 threads:

* ``max_pool2d`` 3x3, stride 2, padding 1 (the ResNet stem pool);
* ``avg_pool2d`` 2x2, stride 2.

Each implementation is one pytest-benchmark case, grouped by op; ``np.copyto`` of the
input into a preallocated array is the memory-bandwidth yardstick (a pooling pass reads
the input once and writes a quarter of it, a copy reads and writes all of it). Every
implementation's result is checked against ``fastconv.reference`` once before timing
(on the first two images: the NumPy reference is slow on the whole batch).

Targets from the issue: at least 5x faster than PyTorch, and within 2x of the copy time.

    python -m pytest benchmarks/test_bench_pool.py --benchmark-only
    python benchmarks/test_bench_pool.py       # pool_ratio_table()
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers, when run as a script

from peers import format_table, gbps, thread_count, time_alternating, torch_or_none

import fastconv
from fastconv import reference

SHAPE = (32, 64, 112, 112)
CHECK_IMAGES = 2  # images checked against the reference

# op name -> (fastconv/reference arguments, the same call for torch.nn.functional)
POOL_OPS = {
    "max_pool2d_3x3s2p1": ("max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    "avg_pool2d_2x2s2": ("avg_pool2d", dict(kernel_size=2, stride=2)),
}
IMPLS = ["fastconv", "torch", "copy"]


def make_input(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def runner(op: str, impl: str, x: np.ndarray):
    """A zero-argument callable running ``impl`` of ``op`` on ``x``, and a check of its
    result against the reference (raises AssertionError; returns None when fine)."""
    name, kwargs = POOL_OPS[op]
    head = x[:CHECK_IMAGES]
    if impl == "fastconv":
        fn = getattr(fastconv, name)

        def run():
            return fn(x, **kwargs)

        def check(result):
            expected = getattr(reference, name)(head, **kwargs)
            np.testing.assert_array_equal(result[:CHECK_IMAGES], expected)

    elif impl == "torch":
        torch = torch_or_none()
        if torch is None:
            pytest.skip("torch is not installed")
        fn = getattr(torch.nn.functional, name)
        t = torch.from_numpy(x)  # shares memory: no copy is timed

        def run():
            with torch.no_grad():
                return fn(t, **kwargs)

        def check(result):
            expected = getattr(reference, name)(head, **kwargs)
            np.testing.assert_array_equal(result.numpy()[:CHECK_IMAGES], expected)

    elif impl == "copy":
        out = np.empty_like(x)

        def run():
            np.copyto(out, x)
            return out

        def check(result):
            assert result.tobytes() == x.tobytes()

    else:
        raise AssertionError(impl)
    return run, check


@pytest.fixture(scope="module")
def pool_input():
    return make_input()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(POOL_OPS))
def test_pool(benchmark, pool_input, op, impl):
    run, check = runner(op, impl, pool_input)
    check(run())  # correctness first, once, before any timing
    benchmark.group = op
    benchmark.extra_info.update(
        op=op, impl=impl, shape=list(pool_input.shape), input_bytes=pool_input.nbytes
    )
    benchmark(run)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB/s (input read, best)"] = round(
            gbps(pool_input.nbytes, stats.stats.min), 2
        )


def pool_ratio_table(shape=SHAPE, rounds: int = 9, threads: int = 2, *, verbose=True):
    """Time every implementation of each op alternately in this process and print
    op, impl, best ms, median ms, GB/s of input read (best), speedup vs torch (torch best /
    impl best) and ratio to copy time (impl best / copy best). Returns the rows."""
    x = make_input(shape)
    rows = []
    with thread_count(threads):
        for op in POOL_OPS:
            impls = {}
            for impl in IMPLS:
                if impl == "torch" and torch_or_none() is None:
                    continue
                run, check = runner(op, impl, x)
                check(run())
                impls[impl] = run
            timings = time_alternating(impls, rounds=rounds)
            torch_best = timings["torch"].best if "torch" in timings else None
            copy_best = timings["copy"].best
            for impl, t in timings.items():
                rows.append(
                    {
                        "op": op,
                        "impl": impl,
                        "best_ms": t.best * 1e3,
                        "median_ms": t.median * 1e3,
                        "GB/s": gbps(x.nbytes, t.best),
                        "vs_torch": torch_best / t.best if torch_best else None,
                        "x_copy": t.best / copy_best,
                    }
                )
    if verbose:
        print(
            f"pooling on {shape} float32, {threads} threads, best/median of {rounds} "
            f"alternating rounds (fastconv {fastconv.__version__}, isa {fastconv._cpu.isa()})"
        )
        print(
            format_table(
                rows,
                [
                    ("op", "s"),
                    ("impl", "s"),
                    ("best_ms", ".2f"),
                    ("median_ms", ".2f"),
                    ("GB/s", ".2f"),
                    ("vs_torch", ".2f"),
                    ("x_copy", ".2f"),
                ],
            )
        )
    return rows


def test_pool_ratio_table_smoke(capsys):
    """The table function runs (tiny input, one round); skipped by --benchmark-only."""
    rows = pool_ratio_table(shape=(2, 8, 20, 20), rounds=1)
    assert {(r["op"], r["impl"]) for r in rows} >= {
        (op, i) for op in POOL_OPS for i in ("fastconv", "copy")
    }
    assert all(r["best_ms"] > 0 and r["median_ms"] >= r["best_ms"] for r in rows)
    assert "vs_torch" in capsys.readouterr().out


if __name__ == "__main__":
    pool_ratio_table()
