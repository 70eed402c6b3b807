#!/usr/bin/env python
"""One command for a GPU machine without network: build, test, check and time fastconv's
CUDA backend against torch CUDA, in under 8 minutes.

    python benchmarks/gpu_check.py                    # on the GPU machine, from the checkout
    python benchmarks/gpu_check.py --out gpu_check    # where the JSON and markdown go
    python benchmarks/gpu_check.py --simulate         # no GPU: the CUDA simulator, small shapes

Steps (each reported; a failing step or op is recorded and the rest still run):

1. **build**: ``pip install --no-build-isolation --no-deps .`` (torch, numba, numba-cuda,
   pybind11, scikit-build-core, cmake and ninja preinstalled), unless the fastconv this
   Python imports already has its C++ extension (``--no-build``);
2. **tests**: ``tests/test_cuda.py`` on the device (the simulator under ``--simulate``,
   on a few cases);
3. **kernel cache**: a first call of conv2d in two fresh processes sharing an empty
   kernel cache: the second must load, not compile;
4. **host overhead**: CPU time per conv2d call (validation, argument marshalling,
   allocation, launch) with the device never waited for;
5. **ops**: every op (conv2d forward, input and weight gradients on the layer set of
   ``fastconv.bench.catalogue.CONV_LAYERS``, gemm, max/avg pooling) checked against
   torch CUDA (cuDNN / cuBLAS, TF32 off) then timed alternately with CUDA events:
   GFLOP/s (GB/s for pooling), % of the GPU's FP32 peak and fastconv / torch.

Writes ``{out}/gpu_check.json`` (everything) and ``{out}/gpu_check.md`` (the tables).
Exit status 0 when every step and op passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The whole check stays under this many seconds (the loan is short); ops left when it
#: runs out are reported as skipped.
BUDGET_S = 450
#: FP32 lanes per SM by compute capability (FMA = 2 FLOP per lane per clock).
FP32_LANES = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 9): 128, (9, 0): 128}

SIM_LAYERS = (
    # (name, N, C, H=W, K, kernel, stride, pad, groups): every kernel family at a few pixels
    ("sim_3x3", 2, 16, 6, 20, 3, 1, 1, 1),
    ("sim_3x3s2", 1, 16, 7, 16, 3, 2, 1, 1),
    ("sim_dw", 1, 4, 5, 4, 3, 1, 1, 4),
)
SIM_GEMMS = ((33, 20, 17),)
SIM_POOLS = (("max_3x3s2", 2, 3, 9, 3, 2, 1), ("avg_2x2s2", 2, 3, 8, 2, 2, 0))
GEMMS = ((1024, 1024, 1024), (4096, 4096, 4096), (25088, 64, 576), (64, 576, 25088))
POOLS = (("max_3x3s2_112", 32, 64, 112, 3, 2, 1), ("avg_2x2s2_56", 32, 256, 56, 2, 2, 0))


class Report:
    def __init__(self, out: str, deadline: float):
        self.out, self.deadline = out, deadline
        self.steps: list[dict] = []
        self.ops: list[dict] = []
        self.info: dict = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @contextlib.contextmanager
    def step(self, name: str):
        start = time.monotonic()
        row: dict = {"step": name}
        print(f"== {name}", flush=True)
        try:
            yield row
            row["ok"] = True
        except Exception as exc:  # recorded; the next steps still run
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["ok"] = False
            traceback.print_exc()
        row["seconds"] = round(time.monotonic() - start, 1)
        print(f"   {'ok' if row['ok'] else 'FAILED'} in {row['seconds']} s", flush=True)
        self.steps.append(row)

    def write(self) -> None:
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "gpu_check.json"), "w") as fh:
            json.dump({"info": self.info, "steps": self.steps, "ops": self.ops}, fh, indent=1)
        with open(os.path.join(self.out, "gpu_check.md"), "w") as fh:
            fh.write(markdown(self))


def markdown(report: Report) -> str:
    info = report.info
    lines = [
        f"GPU check: {info.get('device', '?')}, FP32 peak {info.get('fp32_peak_tflops', 0):.1f}"
        f" TFLOP/s; torch {info.get('torch', '-')}, TF32 off; {info.get('mode', '')}",
        "",
        "| step | ok | s | detail |",
        "|---|---|---|---|",
    ]
    for s in report.steps:
        detail = s.get("error") or s.get("detail") or ""
        lines.append(f"| {s['step']} | {'yes' if s['ok'] else 'NO'} | {s['seconds']} | {detail} |")
    lines += [
        "",
        "| case | op | kernel | fastconv | torch | unit | % FP32 peak | ratio | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.ops:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['case']} | {r['op']} | {r.get('kernel', '')} | {r['status']} | | | | | "
                f"{r.get('detail', '')} |"
            )
            continue
        ours, theirs = r["fastconv_rate"], r.get("torch_rate")
        peak = f"{r['peak_share']:.1%}" if r.get("peak_share") is not None else "-"
        lines.append(
            f"| {r['case']} | {r['op']} | {r['kernel']} | {ours:.1f} | "
            f"{theirs:.1f} | {r['unit']} | {peak} | {ours / theirs:.2f} | {r['error']:.2f} |"
            if theirs
            else f"| {r['case']} | {r['op']} | {r['kernel']} | {ours:.1f} | - | {r['unit']} | "
            f"{peak} | - | {r['error']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- steps


def build(report: Report, args) -> None:
    with report.step("build") as row:
        probe = "import fastconv, fastconv._C; print(fastconv.__file__)"
        have = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, cwd="/"
        )
        if args.no_build or args.simulate:
            row["detail"] = "skipped (--no-build/--simulate): using " + (
                have.stdout.strip() or "the checkout"
            )
            return
        cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "."]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        if proc.returncode:
            raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
        row["detail"] = "pip install --no-build-isolation --no-deps ."


def checkout_is_built() -> bool:
    """Whether the source checkout holds a compiled extension (./dev-build.sh ran)."""
    package = os.path.join(REPO, "fastconv")
    return any(name.startswith("_C.") for name in os.listdir(package))


def run_tests(report: Report, args) -> None:
    with report.step("tests") as row:
        test_file = os.path.join(REPO, "tests", "test_cuda.py")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
        env = dict(os.environ)
        if args.simulate:  # a few cases of each kind
            cmd += ["-k", "production_tiles and 64x64 or public_gemm"]
            if checkout_is_built():
                env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        timeout = max(30, min(240, report.left() - 200))
        # run outside the checkout, so that the installed fastconv (with its extension) loads
        proc = subprocess.run(
            cmd, cwd=tempfile.gettempdir(), capture_output=True, text=True, env=env, timeout=timeout
        )
        last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
        row["detail"] = last
        print(proc.stdout[-3000:], proc.stderr[-2000:])
        if proc.returncode:
            raise RuntimeError(f"pytest exit {proc.returncode}: {last}")


CACHE_CHILD = """
import time, numpy as np
t0 = time.perf_counter()
import fastconv
from numba import cuda
x = cuda.to_device(np.ones((2, 16, 12, 12), np.float32))
w = cuda.to_device(np.ones((32, 16, 3, 3), np.float32))
t1 = time.perf_counter()
y = fastconv.conv2d(x, w, padding=1)
cuda.synchronize()
t2 = time.perf_counter()
from fastconv.cuda import _runtime as rt
stats = [k.stats for k in rt._kernels.values() if hasattr(k, "stats")]
hits = sum(sum(s.cache_hits.values()) for s in stats)
misses = sum(sum(s.cache_misses.values()) for s in stats)
print("FIRST_CALL", t2 - t1, "HITS", hits, "MISSES", misses, float(y.copy_to_host()[0, 0, 5, 5]))
"""


def kernel_cache(report: Report, args) -> None:
    with report.step("kernel cache") as row:
        if args.simulate:
            row["detail"] = "skipped under the simulator (nothing is compiled)"
            return
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, FASTCONV_CUDA_CACHE=cache, NUMBA_CACHE_DIR=cache)
            env.pop("NUMBA_ENABLE_CUDASIM", None)
            firsts = []
            for _ in range(2):
                proc = subprocess.run(
                    [sys.executable, "-c", CACHE_CHILD],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd="/",
                    timeout=180,
                )
                line = [s for s in proc.stdout.splitlines() if s.startswith("FIRST_CALL")]
                if proc.returncode or not line:
                    raise RuntimeError(proc.stderr[-2000:])
                parts = line[0].split()
                firsts.append((float(parts[1]), int(parts[3]), int(parts[5])))
        (cold, _, cold_misses), (warm, warm_hits, warm_misses) = firsts
        row["detail"] = (
            f"first conv2d call: {cold:.2f} s cold ({cold_misses} compiled), {warm:.3f} s in a "
            f"second process ({warm_hits} loaded from disk, {warm_misses} compiled)"
        )
        row["cold_s"], row["warm_s"], row["warm_misses"] = cold, warm, warm_misses
        if warm_misses:
            raise RuntimeError(row["detail"])


def host_overhead(report: Report, args, cuda) -> None:
    with report.step("host overhead") as row:
        import numpy as np

        import fastconv

        x = cuda.to_device(np.ones((1, 8, 4, 4), np.float32))
        w = cuda.to_device(np.ones((16, 8, 3, 3), np.float32))
        calls = 2 if args.simulate else 2000
        for _ in range(3):
            fastconv.conv2d(x, w, padding=1)
        cuda.synchronize()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(calls):
            fastconv.conv2d(x, w, padding=1)
        cpu = (time.process_time() - cpu0) / calls
        wall = (time.perf_counter() - wall0) / calls
        cuda.synchronize()
        row["cpu_us_per_call"] = cpu * 1e6
        row["detail"] = (
            f"conv2d 1x8x4x4 (3x3, 16 out): {cpu * 1e6:.1f} us CPU per call "
            f"({wall * 1e6:.1f} us wall)"
        )


# --------------------------------------------------------------------------- ops


def scaled_error(actual, expected, k: int) -> float:
    import numpy as np

    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(float(np.abs(e).max(initial=0.0)), 1e-30)
    return float(np.abs(a - e).max(initial=0.0)) / (
        max(k, 1) * float(np.finfo(np.float32).eps) * scale
    )


def timed(cuda, fn, iters: int, simulate: bool) -> float:
    """Seconds per call: the mean over ``iters`` back-to-back calls, CUDA events."""
    if simulate:
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    start, stop = cuda.event(), cuda.event()
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    stop.synchronize()
    return cuda.event_elapsed_time(start, stop) / 1e3 / iters


def run_case(report: Report, args, cuda, torch, case: dict) -> None:
    """Check then time one op; whatever goes wrong is recorded in its row."""
    row = {k: case[k] for k in ("case", "op", "unit")}
    report.ops.append(row)
    if report.left() < 15:
        row["status"] = "skipped: time budget"
        return
    try:
        row["kernel"] = case.get("kernel", "")
        got = case["fastconv"]()
        expected = case["expected"]()
        row["error"] = scaled_error(got, expected, case["k"])
        if row["error"] > args.tolerance:
            row["status"] = f"WRONG (scaled error {row['error']:.1f})"
            return
        fns = {"fastconv": case["fastconv_launch"]}
        if case.get("torch_launch") is not None:
            fns["torch"] = case["torch_launch"]
        best = {name: math.inf for name in fns}
        for fn in fns.values():  # warm-up (the check above already compiled the kernels)
            if not args.simulate:
                fn()
        for _ in range(args.repeat):
            for name, fn in fns.items():
                best[name] = min(best[name], timed(cuda, fn, args.iters, args.simulate))
        for name, seconds in best.items():
            row[f"{name}_s"] = seconds
            row[f"{name}_rate"] = case["work"] / seconds * 1e-9
        peak = report.info.get("fp32_peak_tflops")
        if case["unit"] == "GFLOP/s" and peak:
            row["peak_share"] = row["fastconv_rate"] / (peak * 1e3)
        row["status"] = "ok"
        theirs = row.get("torch_rate")
        print(
            f"   {row['case']:22s} {row['op']:8s} {row['fastconv_rate']:9.1f} "
            f"{theirs or 0:9.1f} {case['unit']}  err {row['error']:.2f}  {row['kernel']}",
            flush=True,
        )
    except Exception as exc:
        row["status"] = "FAILED"
        row["detail"] = f"{type(exc).__name__}: {exc}"[:300]
        traceback.print_exc()


def conv_cases(args, cuda, torch):
    import numpy as np

    import fastconv
    import fastconv.cuda as fcuda
    from fastconv import reference as ref
    from fastconv.geometry import ConvGeometry

    if args.simulate:
        layers = SIM_LAYERS
    else:
        from fastconv.bench.catalogue import CONV_LAYERS

        layers = [(c.name, c.n, c.c, c.h, c.k, c.r, c.stride, c.pad, c.groups) for c in CONV_LAYERS]
    rng = np.random.default_rng(0)
    for name, n, c, hw, k, rs, stride, pad, groups in layers:
        x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        w = (
            rng.standard_normal((k, c // groups, rs, rs)) / math.sqrt(c // groups * rs * rs)
        ).astype(np.float32)
        oh = (hw + 2 * pad - rs) // stride + 1
        g = rng.standard_normal((n, k, oh, oh)).astype(np.float32)
        kw = dict(stride=stride, padding=pad, groups=groups)
        dx, dw, dg = cuda.to_device(x), cuda.to_device(w), cuda.to_device(g)
        flops = 2.0 * n * k * oh * oh * (c // groups) * rs * rs
        geometry = ConvGeometry((stride, stride), (pad,) * 4, (1, 1), groups)
        if torch is not None:
            tx, tw, tg = (torch.from_numpy(a).cuda() for a in (x, w, g))
            tx64, tw64, tg64 = (t.double() for t in (tx, tw, tg))
        ops = {
            "forward": (
                lambda dx=dx, dw=dw, kw=kw: fastconv.conv2d(dx, dw, **kw),
                lambda x=x, w=w, kw=kw: ref.conv2d(x, w, **kw),
                "tf.conv2d(tx64, tw64, **kw)",
                "tf.conv2d(tx, tw, **kw)",
                (c // groups) * rs * rs,
            ),
            "input": (
                lambda x=x, dw=dw, dg=dg, kw=kw: fastconv.conv2d_input(x.shape, dw, dg, **kw),
                lambda x=x, w=w, g=g, kw=kw: ref.conv2d_input(x.shape, w, g, **kw),
                "tg_.conv2d_input(tx.shape, tw64, tg64, **kw)",
                "tg_.conv2d_input(tx.shape, tw, tg, **kw)",
                (k // groups) * rs * rs,
            ),
            "weight": (
                lambda dx=dx, w=w, dg=dg, kw=kw: fastconv.conv2d_weight(dx, w.shape, dg, **kw),
                lambda x=x, w=w, g=g, kw=kw: ref.conv2d_weight(x, w.shape, g, **kw),
                "tg_.conv2d_weight(tx64, tw.shape, tg64, **kw)",
                "tg_.conv2d_weight(tx, tw.shape, tg, **kw)",
                n * oh * oh,
            ),
        }
        for op, (ours, reference, torch_ref, torch_fast, red) in ops.items():
            choice = fcuda.conv_algorithm(op, x.shape, w.shape, (oh, oh), geometry)
            kernel = choice.algorithm + (f"/{choice.tile.name}" if choice.tile else "")
            if op == "weight" and choice.tile:
                kernel += f"/split{choice.splits}"
            if torch is not None:
                scope = dict(
                    tf=torch.nn.functional, tg_=torch.nn.grad, tx=tx, tw=tw, tg=tg, tx64=tx64,
                    tw64=tw64, tg64=tg64, kw=kw,
                )  # fmt: skip
                expected = lambda e=torch_ref, s=scope: eval(e, s).cpu().numpy()  # noqa: E731
                torch_launch = lambda e=torch_fast, s=scope: eval(e, s)  # noqa: E731
            else:
                expected, torch_launch = reference, None
            yield dict(
                case=name,
                op=op,
                unit="GFLOP/s",
                kernel=kernel,
                work=flops,
                k=red,
                fastconv=lambda f=ours: f().copy_to_host(),
                fastconv_launch=ours,
                expected=expected,
                torch_launch=torch_launch,
            )


def gemm_cases(args, cuda, torch):
    import numpy as np

    import fastconv
    import fastconv.cuda as fcuda

    rng = np.random.default_rng(1)
    for m, n, k in SIM_GEMMS if args.simulate else GEMMS:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        da, db = cuda.to_device(a), cuda.to_device(b)
        dc = cuda.device_array((m, n), np.float32)
        ours = lambda da=da, db=db, dc=dc: fastconv.gemm(da, db, dc)  # noqa: E731
        torch_launch = None
        if torch is not None:
            ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            tc = torch.empty((m, n), device="cuda")
            torch_launch = lambda ta=ta, tb=tb, tc=tc: torch.mm(ta, tb, out=tc)  # noqa: E731
        yield dict(
            case=f"sgemm_{m}x{n}x{k}",
            op="nn",
            unit="GFLOP/s",
            kernel=fcuda._tiles.pick_tile(m, n, fcuda._runtime.sm_count()).name,
            work=2.0 * m * n * k,
            k=k,
            fastconv=lambda f=ours: f().copy_to_host(),
            fastconv_launch=ours,
            expected=lambda a=a, b=b: a.astype(np.float64) @ b,
            torch_launch=torch_launch,
        )


def pool_cases(args, cuda, torch):
    import numpy as np

    import fastconv
    from fastconv import reference as ref

    rng = np.random.default_rng(2)
    for name, n, c, hw, ks, stride, pad in SIM_POOLS if args.simulate else POOLS:
        x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        dx = cuda.to_device(x)
        is_max = name.startswith("max")
        oh = (hw + 2 * pad - ks) // stride + 1
        work = float(x.nbytes + n * c * oh * oh * (12 if is_max else 4))
        if is_max:
            ours = lambda dx=dx: fastconv.max_pool2d(dx, 3, 2, 1)  # noqa: E731
            expected = lambda x=x: ref.max_pool2d(x, 3, 2, 1)  # noqa: E731
        else:
            ours = lambda dx=dx: fastconv.avg_pool2d(dx, 2, 2)  # noqa: E731
            expected = lambda x=x: ref.avg_pool2d(x, 2, 2)  # noqa: E731
        torch_launch = None
        if torch is not None:
            tx = torch.from_numpy(x).cuda()
            tf = torch.nn.functional
            torch_launch = (
                (lambda tx=tx, tf=tf: tf.max_pool2d(tx, 3, 2, 1, return_indices=True))
                if is_max
                else (lambda tx=tx, tf=tf: tf.avg_pool2d(tx, 2, 2))
            )
        yield dict(
            case=name,
            op="forward",
            unit="GB/s",
            kernel="direct",
            work=work,
            k=ks * ks,
            fastconv=lambda f=ours: f().copy_to_host(),
            fastconv_launch=ours,
            expected=expected,
            torch_launch=torch_launch,
        )


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulate", action="store_true", help="CUDA simulator, small shapes")
    parser.add_argument("--no-build", action="store_true", help="use the fastconv importable now")
    parser.add_argument("--out", default="gpu_check", help="folder for the JSON and markdown")
    parser.add_argument("--iters", type=int, default=10, help="calls per timed round")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (best kept)")
    parser.add_argument("--tolerance", type=float, default=4.0, help="largest scaled error")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for everything")
    args = parser.parse_args(argv)
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        args.iters, args.repeat = 1, 1
    else:
        os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    report = Report(os.path.abspath(args.out), time.monotonic() + args.budget)
    report.info.update(
        mode="simulator" if args.simulate else "device", python=platform.python_version()
    )
    build(report, args)
    if args.simulate and checkout_is_built():
        sys.path.insert(0, REPO)
    else:
        # the installed fastconv: the checkout's extension may not be built
        sys.path = [p for p in sys.path if os.path.abspath(p or ".") != REPO]
    run_tests(report, args)
    kernel_cache(report, args)
    cuda = torch = None
    with report.step("device") as row:
        from numba import cuda

        if not args.simulate:
            dev = cuda.get_current_device()
            name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
            cc = tuple(dev.compute_capability)
            lanes = FP32_LANES.get(cc, 128)
            peak = dev.MULTIPROCESSOR_COUNT * lanes * 2 * dev.CLOCK_RATE * 1e3 / 1e12
            report.info.update(device=name, compute_capability=cc, fp32_peak_tflops=peak)
            try:
                import torch as _torch

                if _torch.cuda.is_available():
                    torch = _torch
                    torch.backends.cudnn.allow_tf32 = False
                    torch.backends.cuda.matmul.allow_tf32 = False
                    torch.backends.cudnn.benchmark = True
                    report.info["torch"] = torch.__version__
            except ImportError:
                pass
        else:
            report.info.update(device="CUDA simulator", fp32_peak_tflops=0.0)
        row["detail"] = f"{report.info['device']}, torch {report.info.get('torch', 'absent')}"
    if cuda is not None:
        host_overhead(report, args, cuda)
        with report.step("ops") as row:
            for cases in (conv_cases, gemm_cases, pool_cases):
                try:
                    for case in cases(args, cuda, torch):
                        run_case(report, args, cuda, torch, case)
                except Exception as exc:  # a broken case list: the next one still runs
                    report.ops.append(
                        dict(
                            case=cases.__name__, op="-", unit="-", status="FAILED", detail=str(exc)
                        )
                    )
                    traceback.print_exc()
            bad = [r for r in report.ops if r.get("status") != "ok"]
            row["detail"] = f"{len(report.ops) - len(bad)} of {len(report.ops)} ops ok"
            if bad:
                raise RuntimeError(row["detail"])
    report.write()
    print(markdown(report))
    print(f"gpu_check: wrote {report.out}/gpu_check.json and gpu_check.md")
    return 0 if all(s["ok"] for s in report.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
