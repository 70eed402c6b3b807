"""The cases of ``test_thread_partitions``: every parallel kernel family on problems above
its threading threshold, with sizes that no thread count divides evenly.

``CASES`` maps a case name to a ``Case``; ``Case.run()`` calls fastconv on the case's
inputs (rebuilt from its seed, the same in every process) and ``Case.expected()`` the
NumPy reference. Run as a script (``python thread_cases.py THREADS OUT.npz``), it sets the
thread count, runs every case twice in this one process and saves the results: the
test runs it in a fresh process per thread count.

The thresholds (``Case.work`` against ``Case.grain`` per thread) are the kernels':
conv2d passes split from 2**21 FLOPs per thread (tapwise from 2**16 multiply-adds),
pooling from 2**18 taps (the backward passes from 2**18 input elements, by planes),
batch norm from 2**16 elements, GEMM from 64**3 multiply-adds.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Callable

import numpy as np

import fastconv
from fastconv import reference

THREAD_COUNTS = (1, 2, 3)


@dataclasses.dataclass
class Case:
    family: str
    make: Callable[[np.random.Generator], dict[str, Any]]
    run_op: Callable[..., Any]
    reference_op: Callable[..., Any]
    work: int  # the kernel's measure of the problem, to compare with grain * threads
    grain: int
    k: int  # reduction length behind one output, for the tolerance
    bitwise: bool  # documented deterministic whatever the thread count
    seed: int = 0
    algorithm: str | None = None  # a forced conv algorithm

    def inputs(self) -> dict[str, Any]:
        return self.make(np.random.default_rng(self.seed))

    def run(self) -> list[np.ndarray]:
        return _as_list(self.run_op(**self.inputs()))

    def expected(self) -> list[np.ndarray]:
        return _as_list(self.reference_op(**self.inputs()))


def _as_list(result) -> list[np.ndarray]:
    if isinstance(result, tuple):
        return [np.asarray(r) for r in result if r is not None]
    return [np.asarray(result)]


# --------------------------------------------------------------------------- convolution


@dataclasses.dataclass(frozen=True)
class Conv:
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    groups: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(
            reference.conv_output_size(size, kernel, self.stride, self.padding, self.dilation)
            for size, kernel in ((self.h, self.r), (self.w, self.s))
        )

    @property
    def reduction(self) -> int:
        return self.c // self.groups * self.r * self.s

    @property
    def flops(self) -> int:
        return 2 * self.n * self.k * self.reduction * self.out_hw[0] * self.out_hw[1]

    @property
    def geometry(self) -> dict[str, int]:
        return dict(
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups
        )


# N, C, H, W, K, R, S (+ stride, padding, dilation, groups): odd sizes throughout.
GEOMETRIES = {
    "3x3": Conv(5, 7, 31, 29, 13, 3, 3),
    "3x3-wide-channels": Conv(3, 33, 19, 21, 35, 3, 3),
    "5x5-stride2": Conv(5, 6, 47, 45, 11, 5, 5, stride=2, padding=2),
    "3x3-dilated": Conv(5, 6, 41, 45, 7, 3, 3, padding=2, dilation=2),
    "3x3-groups3": Conv(5, 12, 37, 35, 15, 3, 3, groups=3),
    "3x3-batch1": Conv(1, 16, 67, 61, 24, 3, 3),
    "1x1": Conv(3, 67, 27, 25, 53, 1, 1, padding=0),
    "1x1-on-1x1-planes": Conv(101, 223, 1, 1, 161, 1, 1, padding=0),
    "depthwise-wide-rows": Conv(5, 45, 41, 43, 45, 3, 3, groups=45),
    "depthwise-narrow-rows": Conv(17, 95, 17, 19, 95, 3, 3, groups=95),
    "depthwise-multiplier2": Conv(7, 21, 37, 39, 42, 3, 3, groups=21),
}
FLOAT64_GEOMETRIES = ("3x3", "5x5-stride2", "depthwise-narrow-rows")

# Which geometries each forced algorithm runs (the ones it accepts and that matter to it).
FORWARD = {
    "pointwise_gemm": ["1x1", "1x1-on-1x1-planes"],
    "depthwise": ["depthwise-wide-rows", "depthwise-narrow-rows", "depthwise-multiplier2"],
    "direct": ["3x3", "5x5-stride2", "3x3-dilated", "3x3-groups3", "3x3-batch1", "1x1"],
    "implicit_gemm": ["3x3", "5x5-stride2", "3x3-dilated", "3x3-groups3", "3x3-batch1"],
    "winograd": ["3x3", "3x3-wide-channels", "3x3-batch1"],
    "tapwise": ["3x3", "5x5-stride2", "3x3-dilated", "3x3-groups3", "depthwise-wide-rows"],
}
INPUT = {
    "pointwise_gemm": ["1x1", "1x1-on-1x1-planes"],
    "depthwise": ["depthwise-narrow-rows"],
    "depthwise (transposed)": ["depthwise-wide-rows", "depthwise-narrow-rows"],
    "direct": ["5x5-stride2", "3x3-dilated", "3x3-groups3"],
    "pointwise_gemm (transposed)": ["1x1", "1x1-on-1x1-planes"],
    "direct (transposed)": ["3x3", "3x3-dilated", "3x3-groups3", "3x3-batch1"],
    "implicit_gemm (transposed)": ["3x3", "3x3-groups3", "3x3-batch1"],
    "winograd (transposed)": ["3x3", "3x3-wide-channels"],
    "implicit_gemm (col2im)": ["3x3", "5x5-stride2", "3x3-dilated", "3x3-batch1"],
    "tapwise": ["3x3", "5x5-stride2", "3x3-groups3", "depthwise-wide-rows"],
}
WEIGHT = {
    "depthwise": ["depthwise-wide-rows", "depthwise-narrow-rows", "depthwise-multiplier2"],
    "direct_dot": ["3x3", "5x5-stride2", "3x3-batch1"],
    "direct": ["3x3", "5x5-stride2", "3x3-dilated", "3x3-groups3", "3x3-batch1"],
    "implicit_gemm": ["3x3", "3x3-dilated", "3x3-batch1", "1x1", "1x1-on-1x1-planes"],
    "tapwise": ["3x3", "5x5-stride2", "3x3-groups3", "depthwise-wide-rows"],
}


def _conv_inputs(g: Conv, dtype) -> Callable[[np.random.Generator], dict[str, Any]]:
    def make(rng):
        return dict(
            x=rng.standard_normal((g.n, g.c, g.h, g.w)).astype(dtype),
            w=rng.standard_normal((g.k, g.c // g.groups, g.r, g.s)).astype(dtype),
            b=rng.standard_normal(g.k).astype(dtype),
            gy=rng.standard_normal((g.n, g.k, *g.out_hw)).astype(dtype),
        )

    return make


def _conv_case(direction: str, algorithm: str, g: Conv, dtype) -> Case:
    def run(x, w, b, gy):
        if direction == "forward":
            return fastconv.conv2d(x, w, b, **g.geometry, algorithm=algorithm)
        if direction == "input":
            return fastconv.conv2d_input(x.shape, w, gy, **g.geometry, algorithm=algorithm)
        return fastconv.conv2d_weight(x, w.shape, gy, **g.geometry, algorithm=algorithm)

    def expected(x, w, b, gy):
        x, w, b, gy = (a.astype(np.float64) for a in (x, w, b, gy))
        if direction == "forward":
            return reference.conv2d(x, w, b, **g.geometry)
        if direction == "input":
            return reference.conv2d_input(x.shape, w, gy, **g.geometry)
        return reference.conv2d_weight(x, w.shape, gy, **g.geometry)

    # Reduction per output: forward C/g*R*S; input gradient K/g*R*S (at most); weight
    # gradient N*OH*OW.
    k = {
        "forward": g.reduction,
        "input": g.k // g.groups * g.r * g.s,
        "weight": g.n * g.out_hw[0] * g.out_hw[1],
    }[direction]
    tapwise = algorithm == "tapwise"
    return Case(
        family=f"conv2d {direction}",
        make=_conv_inputs(g, dtype),
        run_op=run,
        reference_op=expected,
        # tapwise splits from 2**16 multiply-adds per thread, the others from 2**21 FLOPs
        work=g.flops // 2 if tapwise else g.flops,
        grain=2**16 if tapwise else 2**21,
        k=k,
        bitwise=False,  # deterministic for a fixed thread count only
        algorithm=algorithm,
    )


# --------------------------------------------------------------------------- the rest


def _pool_inputs(shape, dtype, nan_fraction=0.0):
    def make(rng):
        x = rng.standard_normal(shape).astype(dtype)
        if nan_fraction:
            x[rng.random(shape) < nan_fraction] = np.nan
        return dict(x=x)

    return make


def _max_pool_case(shape, window: dict[str, Any], dtype=np.float32) -> Case:
    def run(x):
        out, idx = fastconv.max_pool2d(x, **window, return_indices=True)
        grad = fastconv.max_pool2d_backward(_grad_like(out), idx, x.shape)
        return out, idx, grad

    def expected(x):
        out, idx = reference.max_pool2d(x, **window, return_indices=True)
        return out, idx, reference.max_pool2d_backward(_grad_like(out), idx, x.shape)

    return _pool_case(shape, window, run, expected, dtype, nan_fraction=0.01)


def _avg_pool_case(shape, window: dict[str, Any], dtype=np.float32) -> Case:
    def run(x):
        out = fastconv.avg_pool2d(x, **window)
        return out, fastconv.avg_pool2d_backward(_grad_like(out), x.shape, **window)

    def expected(x):
        out = reference.avg_pool2d(x.astype(np.float64), **window)
        return out, reference.avg_pool2d_backward(_grad_like(out), x.shape, **window)

    return _pool_case(shape, window, run, expected, dtype)


def _grad_like(out: np.ndarray) -> np.ndarray:
    """A grad_output with distinct values (a fixed function of its shape)."""
    return (np.arange(out.size) % 17 - 8).astype(out.dtype).reshape(out.shape)


def _pool_case(shape, window, run, expected, dtype, nan_fraction=0.0) -> Case:
    n, c, h, w = shape
    kernel = window["kernel_size"]
    taps = min(kernel, h) * min(kernel, w)
    geometry = {
        k: window[k]
        for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
        if k in window
    }
    out_h, out_w = reference.max_pool2d(np.zeros((1, 1, h, w)), **geometry).shape[2:]
    return Case(
        family="pooling",
        make=_pool_inputs(shape, dtype, nan_fraction),
        run_op=run,
        reference_op=expected,
        # forward: (plane, output row) pairs from 2**18 taps per thread; backward: planes
        # from 2**18 input elements per thread (the smaller of the two counts)
        work=min(n * c * out_h * out_w * taps, n * c * h * w),
        grain=2**18,
        k=kernel * kernel,
        bitwise=True,
    )


def _gemm_case(m, k, n, dtype=np.float32, trans_a=False, trans_b=False, with_c=True) -> Case:
    def make(rng):
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
        c = rng.standard_normal((m, n)).astype(dtype) if with_c else None
        return dict(a=a, b=b, c=c)

    def run(a, b, c):
        kwargs = dict(alpha=1.5, trans_a=trans_a, trans_b=trans_b)
        return (
            fastconv.gemm(a, b, c, beta=-0.5, **kwargs) if with_c else fastconv.gemm(a, b, **kwargs)
        )

    def expected(a, b, c):
        a, b = (a.T if trans_a else a), (b.T if trans_b else b)
        out = 1.5 * (a.astype(np.float64) @ b.astype(np.float64))
        return out - 0.5 * c if with_c else out

    return Case(
        family="gemm",
        make=make,
        run_op=run,
        reference_op=expected,
        work=m * n * k,
        grain=64**3,
        k=k,
        bitwise=True,  # each C element is reduced over k in one order (gemm.h)
    )


def _batch_norm_case(shape, training=True, dtype=np.float32) -> Case:
    c = shape[1]

    def make(rng):
        return dict(
            x=(rng.standard_normal(shape) * 2 + rng.standard_normal((1, c, 1, 1))).astype(dtype),
            weight=rng.uniform(0.5, 1.5, c).astype(dtype),
            bias=rng.standard_normal(c).astype(dtype),
            grad=rng.standard_normal(shape).astype(dtype),
            mean=rng.standard_normal(c).astype(dtype),
            var=rng.uniform(0.5, 2, c).astype(dtype),
        )

    def run(x, weight, bias, grad, mean, var):
        out, saved = fastconv.batch_norm(
            x, mean, var, weight, bias, training, 0.1, 1e-5, return_saved=True
        )
        return (out, mean, var, *fastconv.batch_norm_backward(grad, saved, weight))

    def expected(x, weight, bias, grad, mean, var):
        out, saved = reference.batch_norm(
            x, mean, var, weight, bias, training, 0.1, 1e-5, return_saved=True
        )
        return (out, mean, var, *reference.batch_norm_backward(grad, saved, weight))

    return Case(
        family="batch_norm",
        make=make,
        run_op=run,
        reference_op=expected,
        work=int(np.prod(shape)),
        grain=2**16,
        k=8 * int(np.prod(shape)) // c,
        bitwise=True,  # sums over images in order, whatever the thread count
    )


def build_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for direction, table in (("forward", FORWARD), ("input", INPUT), ("weight", WEIGHT)):
        for algorithm, names in table.items():
            for name in names:
                dtypes = [np.float32]
                if name in FLOAT64_GEOMETRIES and "winograd" not in algorithm:
                    dtypes.append(np.float64)
                for dtype in dtypes:
                    label = f"conv2d {direction} {algorithm} {name} {np.dtype(dtype).name}"
                    cases[label] = _conv_case(direction, algorithm, GEOMETRIES[name], dtype)
    # 65 planes (not a multiple of 2 or 3) of odd sizes; 897 narrow planes (the 2x2 kernel
    # for rows under 16 outputs); one plane, whose forward pass splits over rows.
    planes, narrow, plane = (5, 13, 113, 109), (23, 39, 30, 31), (1, 1, 997, 1003)
    pools = [
        ("3x3/2 pad 1", planes, dict(kernel_size=3, stride=2, padding=1)),
        ("3x3/1 ceil", planes, dict(kernel_size=3, stride=1, ceil_mode=True)),
        ("3x3/2 dilation 2", planes, dict(kernel_size=3, stride=2, dilation=2)),
        ("2x2/2", narrow, dict(kernel_size=2)),
        ("5x5/2 pad 2", plane, dict(kernel_size=5, stride=2, padding=2)),
    ]
    for name, shape, window in pools:
        cases[f"max_pool2d {name} {shape}"] = _max_pool_case(shape, window)
    window = dict(kernel_size=3, stride=2, padding=1)
    cases[f"max_pool2d float64 {planes}"] = _max_pool_case(planes, window, np.float64)
    averages = [
        ("3x3/2 pad 1 without pad", planes, dict(window, count_include_pad=False)),
        ("4x4/3 ceil", planes, dict(kernel_size=4, stride=3, ceil_mode=True)),
        ("2x2/2", narrow, dict(kernel_size=2)),
        ("5x5/1 pad 2 divisor 7", plane, dict(kernel_size=5, padding=2, divisor_override=7)),
    ]
    for name, shape, window_args in averages:
        cases[f"avg_pool2d {name} {shape}"] = _avg_pool_case(shape, window_args)
    cases[f"avg_pool2d float64 {planes}"] = _avg_pool_case(planes, window, np.float64)
    gemms = {
        "517x301x263": dict(m=517, k=301, n=263),
        "517x301x263 trans_a": dict(m=517, k=301, n=263, trans_a=True),
        "413x1031x67 trans_b": dict(m=413, k=1031, n=67, trans_b=True),
        "narrow C 1001x300x49": dict(m=1001, k=300, n=49, with_c=False),
        "wide C 37x257x3001": dict(m=37, k=257, n=3001),
        "float64 301x211x199": dict(m=301, k=211, n=199, dtype=np.float64),
    }
    for name, kwargs in gemms.items():
        cases[f"gemm {name}"] = _gemm_case(**kwargs)
    norms = {
        # above 2**17 elements with an odd channel count: a split of C / threads that
        # dropped the remainder left the last channels unnormalised
        "train (5, 7, 83, 89)": dict(shape=(5, 7, 83, 89)),
        "eval (5, 7, 83, 89)": dict(shape=(5, 7, 83, 89), training=False),
        "train 2 channels (3, 2, 191, 197)": dict(shape=(3, 2, 191, 197)),
        "train 1 channel (2, 1, 311, 317)": dict(shape=(2, 1, 311, 317)),
        "train 67 channels (3, 67, 33, 35)": dict(shape=(3, 67, 33, 35)),
        "train float64 (5, 7, 83, 89)": dict(shape=(5, 7, 83, 89), dtype=np.float64),
    }
    for name, kwargs in norms.items():
        cases[f"batch_norm {name}"] = _batch_norm_case(**kwargs)
    return cases


CASES = build_cases()


def conv_pass_name(family: str) -> str | None:
    """The key of fastconv.last_algorithms() for a conv family ('conv2d input' ->
    'conv2d_input'), None for the other families."""
    if not family.startswith("conv2d"):
        return None
    return {"forward": "conv2d"}.get(family.split()[1], family.replace(" ", "_"))


def main(threads: int, out_path: str, repeats: int) -> None:
    """Every case ``repeats`` times at ``threads`` threads, in this process; the results
    (or the refusal of a forced algorithm) go into an .npz."""
    fastconv.set_num_threads(threads)
    arrays, notes = {}, {}
    for name, case in CASES.items():
        try:
            runs = [case.run() for _ in range(repeats)]
        except ValueError as exc:  # a forced algorithm that refuses the problem
            notes[name] = {"refused": str(exc)}
            continue
        pass_name = conv_pass_name(case.family)
        notes[name] = {"ran": fastconv.last_algorithms().get(pass_name) if pass_name else None}
        for run, results in enumerate(runs):
            for i, result in enumerate(results):
                arrays[f"{name}|{run}|{i}"] = result
    np.savez(out_path, notes=np.array(json.dumps(notes)), **arrays)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
