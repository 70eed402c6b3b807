"""Leak check: 10,000 calls of each public op leave the process's memory where it was.

A child process runs each op (small valid arguments, and a call that fails validation)
a few hundred times to warm up, then measures its resident set and
``sys.getallocatedblocks()`` (live Python objects), makes 10,000 more calls, and measures
again. A leaked result array (kilobytes), a C++ buffer that is never freed, or one
leaked Python object per call (a reference count never dropped, in a kernel's binding
or on an error path) each exceeds the bounds below.
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any, Callable

import numpy as np
import pytest
from helpers import run_python

import fastconv

pytestmark = pytest.mark.slow

CALLS_PER_OP = 10_000
WARM_UP = 300
# Growth allowed over the 10,000 calls: 1.5 MB of resident memory (150 bytes a call:
# the smallest result is 1 KB) and 1,000 Python objects (a tenth of one per call).
RSS_BOUND = 1.5 * 2**20
BLOCKS_BOUND = 1_000


def make_calls() -> dict[str, Callable[[], Any]]:
    """One valid call per public op (results of at least 1 KB), and a failing one."""
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, w, b = f32(2, 3, 12, 12), f32(4, 3, 3, 3), f32(4)
    gy = f32(2, 4, 12, 12)
    out, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    pooled = fastconv.avg_pool2d(x, 3, 2, 1)
    x1, w1, gy1 = f32(2, 3, 64), f32(4, 3, 3), f32(2, 4, 64)
    out1, idx1 = fastconv.max_pool1d(x1, 2, return_indices=True)
    mean, var = np.zeros(3, np.float32), np.ones(3, np.float32)
    _, saved = fastconv.batch_norm(x, None, None, training=True, return_saved=True)
    a, m = f32(24, 16), f32(16, 20)
    wt = f32(3, 4, 3, 3)
    yt = fastconv.conv_transpose2d(x, wt, padding=1)
    up = fastconv.interpolate(x, scale_factor=2.0)
    return {
        "conv2d": lambda: fastconv.conv2d(x, w, b, padding=1),
        "conv2d_input": lambda: fastconv.conv2d_input(x.shape, w, gy, padding=1),
        "conv2d_weight": lambda: fastconv.conv2d_weight(x, w.shape, gy, padding=1),
        "conv2d strided views": lambda: fastconv.conv2d(x[:, :, ::-1], w[..., ::-1], padding=1),
        "conv2d_bias_grad": lambda: fastconv.conv2d_bias_grad(f32(2, 300, 1, 1)),
        "conv2d_algorithm": lambda: fastconv.conv2d_algorithm(x.shape, w.shape, padding=1),
        "max_pool2d": lambda: fastconv.max_pool2d(x, 2, return_indices=True),
        "max_pool2d_backward": lambda: fastconv.max_pool2d_backward(out, idx, x.shape),
        "avg_pool2d": lambda: fastconv.avg_pool2d(x, 3, 2, 1),
        "avg_pool2d_backward": lambda: fastconv.avg_pool2d_backward(pooled, x.shape, 3, 2, 1),
        "gemm": lambda: fastconv.gemm(a, m),
        "gemm into c": lambda: fastconv.gemm(a, m, np.ones((24, 20), np.float32), beta=1.0),
        "matmul": lambda: fastconv.matmul(a, m),
        "linear": lambda: fastconv.linear(a, m.T, f32(20)),
        "batch_norm": lambda: fastconv.batch_norm(x, mean, var, training=True, momentum=0.0),
        "batch_norm_backward": lambda: fastconv.batch_norm_backward(x, saved),
        "conv1d": lambda: fastconv.conv1d(x1, w1, padding=1),
        "conv1d_input": lambda: fastconv.conv1d_input(x1.shape, w1, gy1, padding=1),
        "conv1d_weight": lambda: fastconv.conv1d_weight(x1, w1.shape, gy1, padding=1),
        "conv_transpose2d": lambda: fastconv.conv_transpose2d(x, wt, padding=1),
        "conv_transpose2d_input": lambda: fastconv.conv_transpose2d_input(
            x.shape, wt, yt, padding=1
        ),
        "conv_transpose2d_weight": lambda: fastconv.conv_transpose2d_weight(
            x, wt.shape, yt, padding=1
        ),
        "max_pool1d": lambda: fastconv.max_pool1d(x1, 2, return_indices=True),
        "max_pool1d_backward": lambda: fastconv.max_pool1d_backward(out1, idx1, x1.shape),
        "avg_pool1d": lambda: fastconv.avg_pool1d(x1, 2),
        "avg_pool1d_backward": lambda: fastconv.avg_pool1d_backward(out1, x1.shape, 2),
        "group_norm": lambda: fastconv.group_norm(x, 3),
        "instance_norm": lambda: fastconv.instance_norm(x),
        "layer_norm": lambda: fastconv.layer_norm(x, x.shape[1:]),
        "interpolate": lambda: fastconv.interpolate(x, scale_factor=2.0),
        "interpolate_backward": lambda: fastconv.interpolate_backward(
            up, x.shape, scale_factor=2.0
        ),
        "pixel_shuffle": lambda: fastconv.pixel_shuffle(f32(2, 12, 6, 6), 2),
        "pixel_unshuffle": lambda: fastconv.pixel_unshuffle(x, 2),
        # Error paths: validation refuses, the kernels' own checks refuse, a huge request.
        "refused by validation": lambda: _expect_error(
            lambda: fastconv.conv2d(x, w, stride=0), ValueError
        ),
        "refused by the kernel": lambda: _expect_error(
            lambda: fastconv.conv2d(x, w, algorithm="winograd", stride=2), ValueError
        ),
        "refused allocation": lambda: _expect_error(
            lambda: fastconv.conv2d(x[:1, :1, :1, :1], w[:1, :1, :1, :1], padding=2**20),
            MemoryError,
        ),
        "masked array": lambda: _expect_error(
            lambda: fastconv.max_pool2d(np.ma.masked_array(x), 2), TypeError
        ),
    }


def _expect_error(call: Callable[[], Any], kind: type) -> None:
    try:
        call()
    except kind:
        return
    raise AssertionError(f"expected {kind.__name__}")


def measure(calls_per_op: int = CALLS_PER_OP) -> None:
    """Print, per op, a JSON line with the growth of RSS and of allocated blocks."""
    import gc
    import sys

    fastconv.set_num_threads(2)
    page = os.sysconf("SC_PAGESIZE")

    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * page

    for op, call in make_calls().items():
        for _ in range(WARM_UP):
            call()
        gc.collect()
        rss0, blocks0 = rss(), sys.getallocatedblocks()
        for _ in range(calls_per_op):
            call()
        gc.collect()
        growth = dict(op=op, rss=rss() - rss0, blocks=sys.getallocatedblocks() - blocks0)
        print(json.dumps(growth), flush=True)


@pytest.fixture(scope="module")
def growth() -> dict[str, dict[str, int]]:
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("RSS is read from /proc (Linux)")
    child = run_python("import test_leaks; test_leaks.measure()", timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    return {line["op"]: line for line in map(json.loads, child.stdout.splitlines())}


@pytest.mark.parametrize("op", list(make_calls()))
def test_memory_is_stable_over_10000_calls(growth, op):
    assert op in growth, "the child stopped before this op"
    assert growth[op]["rss"] <= RSS_BOUND, f"{op}: RSS grew by {growth[op]['rss']} bytes"
    assert (
        growth[op]["blocks"] <= BLOCKS_BOUND
    ), f"{op}: {growth[op]['blocks']} more Python objects after {CALLS_PER_OP} calls"


def test_the_leak_check_sees_a_leak():
    """One leaked 1 KB array per call (a list that keeps them) breaks both bounds."""
    code = textwrap.dedent(
        """
        import numpy as np
        import test_leaks
        kept = []
        test_leaks.make_calls = lambda: {"leaky": lambda: kept.append(np.ones(256, np.float32))}
        test_leaks.measure()
        """
    )
    child = run_python(code, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout)
    assert result["rss"] > RSS_BOUND
    assert result["blocks"] > BLOCKS_BOUND
