#!/usr/bin/env python
"""GPU benchmark of fastconv's Numba CUDA kernels, against torch CUDA (cuDNN / cuBLAS).

Usage (on a machine with an NVIDIA GPU, numba-cuda and, optionally, a CUDA build of torch):

    python benchmarks/gpu_bench.py                 # everything
    python benchmarks/gpu_bench.py --ops conv --layers resnet_3x3_56
    python benchmarks/gpu_bench.py --batch 32 --json out.json
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu_bench.py --smoke  # no GPU:
        # tiny shapes under the simulator, only checks that the script runs

What it measures, per case: the time of one call through the public API
(``fastconv.conv2d(device arrays)`` ...: validation and launch overhead included), as the
best of ``--repeat`` rounds of ``--iters`` back-to-back calls timed with CUDA events;
fastconv and torch alternate round by round (A B A B) and the best of each is kept.
Before timing, every case is checked against torch (or, without torch, against
``fastconv.reference`` on a batch of one) with a tolerance that scales with the
reduction length: a kernel that is wrong is reported as such, not timed.

Convolutions are reported in GFLOP/s (2*N*K*OH*OW*Cg*R*S for forward and both
gradients), SGEMM in GFLOP/s (2*M*N*K), pooling in GB/s (bytes read + written, int64
indices included). torch runs with TF32 disabled (fp32 against fp32) unless --tf32.
The conv layers are ``fastconv.bench.catalogue.CONV_LAYERS`` (batch as there, or --batch).

This file is a plain script: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time

import numpy as np

from fastconv.bench.catalogue import CONV_LAYERS, ConvLayer
from fastconv.geometry import pool_output_size

SMOKE_LAYERS = (
    ConvLayer("smoke_3x3", 2, 16, 6, 20, 3, 1, 1),
    ConvLayer("smoke_dw", 1, 4, 5, 4, 3, 2, 1, 4),
)

# (M, N, K)
GEMMS = [
    (512, 512, 512),
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (4096, 4096, 4096),
    (25088, 64, 576),
    (64, 576, 25088),
    (4096, 1024, 4096),
]
SMOKE_GEMMS = [(33, 20, 17)]

# (name, N, C, H=W, kernel, stride, pad)
POOLS = [("max_3x3s2_112", 32, 64, 112, 3, 2, 1), ("avg_2x2s2_56", 32, 256, 56, 2, 2, 0)]
SMOKE_POOLS = [("max_smoke", 2, 3, 9, 3, 2, 1)]


def _fail(message: str, code: int = 2):
    print(f"gpu_bench: {message}", file=sys.stderr)
    sys.exit(code)


def _setup(args):
    """(numba.cuda, torch or None): exits with a clear message when no GPU is usable."""
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    if simulator and not args.smoke:
        _fail(
            "NUMBA_ENABLE_CUDASIM is set: simulator timings mean nothing. Unset it on a "
            "GPU machine, or pass --smoke to only check that this script runs."
        )
    try:
        from numba import cuda
    except ImportError:
        _fail("numba-cuda is not installed: pip install 'fastconv[cuda]' (numba-cuda)")
    if not simulator and not cuda.is_available():
        _fail(
            "no CUDA GPU is available (numba.cuda.is_available() is False): run this on a "
            "machine with an NVIDIA GPU and driver. Nothing was measured."
        )
    torch = None
    if not args.no_torch and not simulator:
        try:
            import torch as _torch

            if _torch.cuda.is_available():
                torch = _torch
                torch.backends.cudnn.allow_tf32 = bool(args.tf32)
                torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
                torch.backends.cudnn.benchmark = True
            else:
                print("gpu_bench: torch has no CUDA here; timing fastconv alone")
        except ImportError:
            print("gpu_bench: torch not installed; timing fastconv alone")
    return cuda, torch


# --------------------------------------------------------------------------- timing


class Timer:
    """Best-of-rounds CUDA-event timing of ``iters`` back-to-back calls (default stream)."""

    def __init__(self, cuda, iters, simulator):
        self.cuda, self.iters, self.simulator = cuda, iters, simulator

    def __call__(self, fn) -> float:
        if self.simulator:
            t0 = time.perf_counter()
            for _ in range(self.iters):
                fn()
            return (time.perf_counter() - t0) / self.iters
        cuda = self.cuda
        start, stop = cuda.event(), cuda.event()
        cuda.synchronize()
        start.record()
        for _ in range(self.iters):
            fn()
        stop.record()
        stop.synchronize()
        return cuda.event_elapsed_time(start, stop) / 1e3 / self.iters


def alternate(timer, fns: dict, repeat: int) -> dict:
    """A B A B ...: the best time of each callable over ``repeat`` rounds."""
    best = {name: math.inf for name in fns}
    for fn in fns.values():  # warm-up: compile, cuDNN autotune, caches
        fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            best[name] = min(best[name], timer(fn))
    return best


def max_scaled_error(actual: np.ndarray, expected: np.ndarray, k: int) -> float:
    """max|a - e| / (k * eps * max|e|): <= ~2 is what the tests accept."""
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    eps = float(np.finfo(actual.dtype).eps)
    scale = max(float(np.abs(e).max(initial=0.0)), 1e-30)
    return float(np.abs(a - e).max(initial=0.0)) / (max(k, 1) * eps * scale)


# --------------------------------------------------------------------------- cases


def conv_cases(args, cuda, torch):
    import fastconv
    import fastconv.cuda as fcuda
    from fastconv import reference as ref
    from fastconv.geometry import ConvGeometry

    layers = SMOKE_LAYERS if args.smoke else CONV_LAYERS
    rng = np.random.default_rng(0)
    for layer in layers:
        if args.layers and layer.name not in args.layers:
            continue
        if args.batch:
            layer = dataclasses.replace(layer, n=args.batch)
        name, n, c, hw, k, rs = layer.name, layer.n, layer.c, layer.h, layer.k, layer.r
        stride, pad, groups = layer.stride, layer.pad, layer.groups
        x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        w = (
            rng.standard_normal((k, c // groups, rs, rs)) / math.sqrt(c // groups * rs * rs)
        ).astype(np.float32)
        oh = layer.out_hw
        g = rng.standard_normal((n, k, oh, oh)).astype(np.float32)
        kw = dict(stride=stride, padding=pad, groups=groups)
        dx, dw_, dg = cuda.to_device(x), cuda.to_device(w), cuda.to_device(g)
        flops = 2.0 * n * k * oh * oh * (c // groups) * rs * rs
        geometry = ConvGeometry((stride, stride), (pad,) * 4, (1, 1), groups)
        partial = functools.partial
        ops = {
            "forward": (partial(fastconv.conv2d, dx, dw_, **kw), (c // groups) * rs * rs),
            "input": (
                partial(fastconv.conv2d_input, x.shape, dw_, dg, **kw),
                (k // groups) * rs * rs,
            ),
            "weight": (partial(fastconv.conv2d_weight, dx, w.shape, dg, **kw), n * oh * oh),
        }
        if torch is not None:
            tx, tw, tg = (torch.from_numpy(a).cuda() for a in (x, w, g))
            tops = {
                "forward": partial(torch.nn.functional.conv2d, tx, tw, **kw),
                "input": partial(torch.nn.grad.conv2d_input, x.shape, tw, tg, **kw),
                "weight": partial(torch.nn.grad.conv2d_weight, tx, w.shape, tg, **kw),
            }
        for op, (fn, red) in ops.items():
            if args.conv_ops and op not in args.conv_ops:
                continue
            choice = fcuda.conv_algorithm(op, x.shape, w.shape, (oh, oh), geometry)
            algo = (
                choice.algorithm
                if choice.tile is None
                else f"{choice.algorithm}/{choice.tile.name}"
                + (f"/split{choice.splits}" if op == "weight" else "")
            )
            if torch is not None:
                expected = tops[op]().cpu().numpy()
            else:  # the NumPy reference on a batch of one
                x1, g1 = x[:1], g[:1]
                expected = {
                    "forward": partial(ref.conv2d, x1, w, **kw),
                    "input": partial(ref.conv2d_input, x1.shape, w, g1, **kw),
                    "weight": partial(ref.conv2d_weight, x1, w.shape, g1, **kw),
                }[op]()
            got = fn().copy_to_host()
            if torch is None and op != "weight":
                got = got[:1]
            elif torch is None:
                got = fastconv.conv2d_weight(
                    cuda.to_device(x[:1]), w.shape, cuda.to_device(g[:1]), **kw
                ).copy_to_host()
            err = max_scaled_error(got, expected, red)
            yield dict(
                kind="conv",
                case=name,
                op=op,
                work=flops,
                unit="GFLOP/s",
                algo=algo,
                fns={"fastconv": fn, **({"torch": tops[op]} if torch else {})},
                err=err,
            )


def gemm_cases(args, cuda, torch):
    import fastconv
    import fastconv.cuda as fcuda

    rng = np.random.default_rng(1)
    for m, n, k in SMOKE_GEMMS if args.smoke else GEMMS:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        da, db = cuda.to_device(a), cuda.to_device(b)
        dc = cuda.device_array((m, n), np.float32)
        fn = functools.partial(fastconv.gemm, da, db, dc)
        fns = {"fastconv": fn}
        tile = fcuda._tiles.pick_tile(m, n, fcuda._runtime.sm_count())
        if torch is not None:
            ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            tc = torch.empty((m, n), device="cuda")
            fns["torch"] = functools.partial(torch.mm, ta, tb, out=tc)
            expected = torch.mm(ta.double(), tb.double()).cpu().numpy()
        else:
            expected = a.astype(np.float64) @ b
        err = max_scaled_error(fn().copy_to_host(), expected.astype(np.float32), k)
        yield dict(
            kind="gemm",
            case=f"sgemm_{m}x{n}x{k}",
            op="nn",
            work=2.0 * m * n * k,
            unit="GFLOP/s",
            algo=tile.name,
            fns=fns,
            err=err,
        )


def pool_cases(args, cuda, torch):
    import fastconv
    from fastconv import reference as ref

    rng = np.random.default_rng(2)
    for name, n, c, hw, ks, stride, pad in SMOKE_POOLS if args.smoke else POOLS:
        x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        dx = cuda.to_device(x)
        is_max = name.startswith("max")
        oh = pool_output_size(hw, ks, stride, pad)
        out_bytes = n * c * oh * oh * (4 + (8 if is_max else 0))
        work = float(x.nbytes + out_bytes)
        if is_max:
            fn = functools.partial(fastconv.max_pool2d, dx, ks, stride, pad, return_indices=True)
            host = ref.max_pool2d(x[:1], ks, stride, pad)
            got = fn()[0].copy_to_host()[:1]
        else:
            fn = functools.partial(fastconv.avg_pool2d, dx, ks, stride, pad)
            host = ref.avg_pool2d(x[:1], ks, stride, pad)
            got = fn().copy_to_host()[:1]
        fns = {"fastconv": fn}
        if torch is not None:
            tx = torch.from_numpy(x).cuda()
            fns["torch"] = (
                functools.partial(
                    torch.nn.functional.max_pool2d, tx, ks, stride, pad, return_indices=True
                )
                if is_max
                else functools.partial(torch.nn.functional.avg_pool2d, tx, ks, stride, pad)
            )
        yield dict(
            kind="pool",
            case=name,
            op="forward",
            work=work,
            unit="GB/s",
            algo="direct",
            fns=fns,
            err=max_scaled_error(got, host, ks * ks),
        )


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ops", nargs="*", default=["conv", "gemm", "pool"], choices=["conv", "gemm", "pool"]
    )
    parser.add_argument("--conv-ops", nargs="*", choices=["forward", "input", "weight"])
    parser.add_argument("--layers", nargs="*", help="only these layers of the layer set")
    parser.add_argument("--batch", type=int, help="override every layer's batch size")
    parser.add_argument("--iters", type=int, default=20, help="calls per timed round")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (best kept)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--tf32", action="store_true", help="let torch use TF32")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=4.0,
        help="max scaled error before a case counts as wrong",
    )
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes, 1 call: checks the script (simulator allowed)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.iters, args.repeat = 1, 1

    cuda, torch = _setup(args)
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    if simulator:
        print("gpu_bench: SIMULATOR smoke run: the timings below are meaningless")
    else:
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
        sms = dev.MULTIPROCESSOR_COUNT
        print(f"device: {name}, {sms} SMs, compute capability {dev.compute_capability}")
        if torch is not None:
            print(
                f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
                f"TF32 {'on' if args.tf32 else 'off'}"
            )
    timer = Timer(cuda, args.iters, simulator)
    generators = {"conv": conv_cases, "gemm": gemm_cases, "pool": pool_cases}
    rows, wrong = [], 0
    header = (
        f"{'case':22s} {'op':8s} {'fastconv':>10s} {'torch':>10s} {'ratio':>6s} "
        f"{'unit':8s} {'err':>6s}  kernel"
    )
    print(header)
    print("-" * len(header))
    for kind in args.ops:
        for case in generators[kind](args, cuda, torch):
            ok = case["err"] <= args.tolerance
            if not ok:
                wrong += 1
                print(
                    f"{case['case']:22s} {case['op']:8s} WRONG: scaled error "
                    f"{case['err']:.1f} > {args.tolerance}; not timed  {case['algo']}"
                )
                rows.append({k: v for k, v in case.items() if k != "fns"} | {"wrong": True})
                continue
            best = alternate(timer, case["fns"], args.repeat)
            scale = 1e-9 * case["work"]
            rate = {who: scale / t for who, t in best.items()}
            ours = rate["fastconv"]
            theirs = rate.get("torch")
            ratio = f"{ours / theirs:6.2f}" if theirs else "     -"
            theirs_s = f"{theirs:10.1f}" if theirs else "         -"
            print(
                f"{case['case']:22s} {case['op']:8s} {ours:10.1f} {theirs_s} {ratio} "
                f"{case['unit']:8s} {case['err']:6.2f}  {case['algo']}",
                flush=True,
            )
            rows.append(
                {k: v for k, v in case.items() if k != "fns"}
                | {f"{who}_s": t for who, t in best.items()}
                | {f"{who}_rate": r for who, r in rate.items()}
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    if wrong:
        print(f"gpu_bench: {wrong} case(s) gave wrong results", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
