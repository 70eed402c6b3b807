"""Data-parallel scaling of ``fastconv.distributed``: measured on this machine, projected
for a cluster.  Prints the markdown tables of the README's "Scaling" section::

    python benchmarks/distributed_scaling.py [--json out.json] [--quick]
    python benchmarks/distributed_scaling.py --from-json out.json   # the tables again

Measured (``mpiexec -n 2`` over loopback, started by this script):

* training throughput, 1 process x 2 threads against 2 processes x 1 thread, at the same
  global batch (alternating, best of ``--rounds``);
* allreduce time against message size, 2 ranks: ``MPI_Allreduce`` and what
  ``DistributedDataParallel`` runs (``MPI_Iallreduce`` plus its timed polling wait).

Fitted: the alpha-beta model of a 2-rank allreduce, ``T(n) = 2 alpha + n beta`` (alpha
from the small messages, beta from the large ones: :func:`fit_alpha_beta`), and gamma,
the seconds per byte of summing two float32 arrays (NumPy, 16 MiB, measured in the same
run).  Projected, for P workers on a network of ``B`` bits/s (Rabenseifner's
reduce-scatter + allgather, the algorithm MPICH uses for large messages)::

    T_allreduce(n, P) = 2 ceil(log2 P) (alpha + alpha_link)
                        + 2 (P - 1) / P * n * 8 / B  +  (P - 1) / P * n * gamma

with ``alpha`` the loopback fit (the software's cost per message), ``alpha_link`` the
network's per-message latency (an assumption: 20 us), the link carrying the bytes in
place of loopback's shared-memory copies (beta), and gamma the sums every worker still
does.
A step is ``T_compute + T_allreduce`` when nothing overlaps (the bound the tables use;
efficiency ``T_compute / T_step``), ``max(T_compute, T_allreduce)`` when everything does.
``T_compute`` is measured here: one ResNet forward and backward pass at 224x224, per
image, times the per-worker batch (32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
SIZES_BYTES = [4 * 4**k for k in range(13)]  # 4 B .. 64 MiB
QUICK_SIZES_BYTES = [4 * 16**k for k in range(6)]  # 4 B .. 4 MiB
LINKS_GBPS = (25, 100)
LINK_LATENCY_S = 20e-6
WORKERS = (2, 4, 8, 16, 32, 64)
PER_WORKER_BATCH = 32
THROUGHPUT_CASES = (
    # (label, model, global batch, steps, SyncBatchNorm)
    ("demo CNN, digits 1x8x8", "demo", 64, 30, True),
    ("ResNet-20, 3x32x32", "resnet20", 64, 6, True),
    ("ResNet-20, 3x32x32, per-rank BatchNorm", "resnet20", 64, 6, False),
)


# --------------------------------------------------------------------------- the model


def fit_alpha_beta(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """(alpha, beta) of ``T(n) = 2 alpha + n beta``: alpha from the latency-bound
    messages (up to 1 KiB: half their median time), beta the least-squares slope of the
    bandwidth-bound ones (from 1 MiB on), whose regime a gradient allreduce is in.  One
    straight line through every size fits neither end: past the caches the copies run
    at memory speed."""
    n = np.asarray(sizes, np.float64)
    t = np.asarray(seconds, np.float64)
    small, large = n <= 1024, n >= 2**20
    small = small if small.any() else n == n.min()
    large = large if large.any() else n == n.max()
    alpha = float(np.median(t[small])) / 2
    beta = float(np.sum((t[large] - 2 * alpha) * n[large]) / np.sum(n[large] ** 2))
    return max(alpha, 0.0), max(beta, 0.0)


def allreduce_time(
    nbytes: float,
    workers: int,
    link_gbps: float,
    alpha: float,
    gamma: float,
    link_latency: float = LINK_LATENCY_S,
) -> float:
    """Seconds of one allreduce of ``nbytes`` over ``workers`` (the docstring's formula)."""
    if workers == 1:
        return 0.0
    rounds = 2 * math.ceil(math.log2(workers))
    share = (workers - 1) / workers * nbytes
    return rounds * (alpha + link_latency) + 2 * share * 8.0 / (link_gbps * 1e9) + share * gamma


def project(
    compute_s: float, nbytes: float, workers: int, link_gbps: float, alpha: float, gamma: float
) -> dict:
    """Step time, efficiency and images/s of ``workers`` data-parallel workers."""
    comm = allreduce_time(nbytes, workers, link_gbps, alpha, gamma)
    step = compute_s + comm
    return {
        "allreduce_s": comm,
        "step_s": step,
        "efficiency": compute_s / step,
        "efficiency_overlapped": compute_s / max(compute_s, comm),
        "images_per_s": workers * PER_WORKER_BATCH / step,
    }


# --------------------------------------------------------------------------- workers


def _build(model_name: str):
    from fastconv import models, training

    if model_name == "demo":
        return training.build_model(1, (8, 8), 10, dropout=0.0), (1, 8, 8)
    return models.get_model(model_name, num_classes=10, in_channels=3), (3, 32, 32)


def worker_throughput(args: argparse.Namespace) -> None:
    import fastconv
    from fastconv import distributed as dist
    from fastconv import nn, optim

    fastconv.set_num_threads(args.threads)
    dist.init()
    world, rank = dist.world_size(), dist.rank()
    nn.manual_seed(0)
    model, shape = _build(args.model)
    net = model
    if world > 1:
        if args.sync_bn:
            model = dist.convert_sync_batchnorm(model)
        net = dist.DistributedDataParallel(model, broadcast_buffers=not args.sync_bn)
    batch = args.batch // world
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    waits = []

    def step() -> None:
        criterion(net(x), y)
        net.backward(criterion.backward())
        optimizer.step()
        optimizer.zero_grad()
        if world > 1:
            waits.append(net.last_sync["wait_s"])

    for _ in range(2):
        step()
    waits.clear()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    dist.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        print(
            json.dumps(
                {
                    "samples_per_s": args.batch * args.steps / elapsed,
                    "step_s": elapsed / args.steps,
                    "exposed_wait_s": float(np.mean(waits)) if waits else 0.0,
                    "gradient_bytes": sum(p.data.nbytes for p in model.parameters()),
                }
            )
        )


def worker_allreduce(args: argparse.Namespace) -> None:
    from mpi4py import MPI

    from fastconv import distributed as dist
    from fastconv.distributed import runtime

    dist.init()
    comm = MPI.COMM_WORLD.Dup()
    sizes = QUICK_SIZES_BYTES if args.quick else SIZES_BYTES
    rows = []
    for nbytes in sizes:
        buffer = np.ones(max(nbytes // 4, 1), np.float32)
        reps = max(3, min(200, int(4e7 // max(nbytes, 1))))
        timings: dict[str, list[float]] = {"blocking": [], "ddp": []}
        for rep in range(reps + 2):
            for kind in ("blocking", "ddp"):
                comm.Barrier()
                start = time.perf_counter()
                if kind == "blocking":
                    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
                else:
                    runtime.wait([comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)], "bench")
                elapsed = time.perf_counter() - start
                if rep >= 2:  # the first two are warm-up
                    timings[kind].append(elapsed)
            buffer[...] = 1  # keep the values finite
        # the slower rank's figure is the collective's: the median, and the best repetition
        # (the cores are shared: the best is the transport without interference)
        row = {"bytes": nbytes, "reps": reps}
        for kind, values in timings.items():
            row[kind] = comm.allreduce(float(np.median(values)), op=MPI.MAX)
            row[f"{kind}_best"] = comm.allreduce(float(np.min(values)), op=MPI.MAX)
        rows.append(row)
    a = np.ones(2**22, np.float32)  # 16 MiB
    b = np.ones_like(a)
    sums = []
    for _ in range(7):
        start = time.perf_counter()
        np.add(a, b, out=a)
        sums.append(time.perf_counter() - start)
    gamma = comm.allreduce(min(sums) / a.nbytes, op=MPI.MAX)
    if comm.Get_rank() == 0:
        print(json.dumps({"rows": rows, "gamma_s_per_byte": gamma}))


def measure_compute(model_name: str, batch: int, threads: int) -> float:
    """Seconds of one forward + backward pass per 224x224 image (after one untimed pass)."""
    import fastconv
    from fastconv import models, nn

    fastconv.set_num_threads(threads)
    nn.manual_seed(0)
    model = models.get_model(model_name)
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    y = np.arange(batch) % 1000
    criterion = nn.CrossEntropyLoss()
    best = math.inf
    for rep in range(2):
        start = time.perf_counter()
        criterion(model(x), y)
        model.backward(criterion.backward())
        model.zero_grad()
        if rep:
            best = min(best, time.perf_counter() - start)
    return best / batch


# --------------------------------------------------------------------------- driver


def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        sys.exit("mpiexec not found: pip install 'fastconv[distributed]'")
    return found


def _launch(ranks: int, *argv: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, 2 // ranks)))
    command = [sys.executable, str(HERE), *argv]
    if ranks > 1:
        command = [_mpiexec(), "-n", str(ranks), *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args: argparse.Namespace) -> dict:
    report: dict = {"cpu": _cpu_name(), "cores": os.cpu_count(), "throughput": []}
    report["load_average_before"] = os.getloadavg()[0]
    cases = THROUGHPUT_CASES[:1] if args.quick else THROUGHPUT_CASES
    for label, model, batch, steps, sync_bn in cases:
        best: dict[str, dict] = {}
        for _ in range(args.rounds):  # alternating, best of the rounds: the cores are shared
            for ranks, threads in ((1, 2), (2, 1), (1, 1)):
                argv = ["--worker", "throughput", "--model", model, "--batch", str(batch)]
                argv += ["--steps", str(steps), "--threads", str(threads)]
                argv += [] if sync_bn else ["--no-sync-bn"]
                got = _launch(ranks, *argv)
                key = f"{ranks}x{threads}"
                if key not in best or got["samples_per_s"] > best[key]["samples_per_s"]:
                    best[key] = got
        report["throughput"].append({"case": label, "batch": batch, **best})
    measured = _launch(2, "--worker", "allreduce", *(["--quick"] if args.quick else []))
    report["allreduce"] = measured["rows"]
    report["gamma_s_per_byte"] = measured["gamma_s_per_byte"]
    from fastconv import models

    report["compute"] = [
        {
            "model": name,
            "per_image_s": measure_compute(name, args.compute_batch, 2),
            "bytes": 4 * models.get_model(name).num_parameters(),
        }
        for name in ("resnet18", "resnet50")
    ]
    report["load_average_after"] = os.getloadavg()[0]
    return report


def analyse(report: dict) -> tuple[float, float, list[dict]]:
    """The fit (alpha, beta) of the measurements, and the projections they give."""
    rows = report["allreduce"]
    alpha, beta = fit_alpha_beta([r["bytes"] for r in rows], [r["ddp_best"] for r in rows])
    gamma = report["gamma_s_per_byte"]
    projections = []
    for measured in report["compute"]:
        compute = measured["per_image_s"] * PER_WORKER_BATCH
        entry = {**measured, "compute_s": compute}
        entry["rows"] = [
            {"workers": p, "gbps": g, **project(compute, measured["bytes"], p, g, alpha, gamma)}
            for g in LINKS_GBPS
            for p in WORKERS
        ]
        projections.append(entry)
    return alpha, beta, projections


def _size(nbytes: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.3g} B"


def markdown(report: dict) -> str:
    lines = [
        f"Measured on {report['cpu']} ({report['cores']} cores, shared with other jobs "
        f"while it ran: load average {report['load_average_before']:.1f} before, "
        f"{report['load_average_after']:.1f} after), `mpiexec -n 2` over loopback (MPICH "
        "from the mpich wheel).",
        "",
        "| training step | global batch | 1 process x 2 threads | 2 processes x 1 thread "
        "| 2x1 / 1x2 | 1 process x 1 thread (2x1 / 1x1) | 2x1: exposed allreduce wait |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["throughput"]:
        one, two = row["1x2"], row["2x1"]
        alone = row.get("1x1")
        lines.append(
            f"| {row['case']} | {row['batch']} | {one['samples_per_s']:,.0f} samples/s "
            f"| {two['samples_per_s']:,.0f} samples/s "
            f"| {two['samples_per_s'] / one['samples_per_s']:.2f} "
            + (
                f"| {alone['samples_per_s']:,.0f} samples/s "
                f"({two['samples_per_s'] / alone['samples_per_s']:.2f}) "
                if alone
                else "| - "
            )
            + f"| {two['exposed_wait_s'] * 1e3:.2f} ms of {two['step_s'] * 1e3:.1f} ms per step "
            f"({_size(two['gradient_bytes'])} of gradients) |"
        )
    lines += [
        "",
        "| message | MPI_Allreduce median (best) | Iallreduce + polling wait, DDP's way: "
        "median (best) | fit 2 alpha + n beta |",
        "|---|---|---|---|",
    ]
    alpha, beta, projections = analyse(report)
    for row in report["allreduce"]:
        lines.append(
            f"| {_size(row['bytes'])} "
            f"| {row['blocking'] * 1e6:,.1f} us ({row['blocking_best'] * 1e6:,.1f} us) "
            f"| {row['ddp'] * 1e6:,.1f} us ({row['ddp_best'] * 1e6:,.1f} us) "
            f"| {(2 * alpha + row['bytes'] * beta) * 1e6:,.1f} us |"
        )
    lines += [
        "",
        f"Fit (best repetitions of DDP's way; alpha from messages up to 1 KiB, beta from "
        f"1 MiB on): alpha = {alpha * 1e6:.2f} us per message, beta = "
        f"{beta * 1e9:.4f} ns per byte ({1 / max(beta, 1e-30) / 1e9:.2f} GB/s) on loopback; "
        f"summing: gamma = {report['gamma_s_per_byte'] * 1e9:.4f} ns per byte.",
        "",
        f"Projection (per-worker batch {PER_WORKER_BATCH}, float32 gradients, link latency "
        f"{LINK_LATENCY_S * 1e6:g} us, no overlap; in brackets: with full overlap):",
        "",
    ]
    links = " / ".join(f"{g}" for g in LINKS_GBPS) + " Gb/s"
    for entry in projections:
        lines += [
            f"{entry['model']}: {_size(entry['bytes'])} of gradients; compute "
            f"{entry['per_image_s'] * 1e3:.0f} ms per image here, {entry['compute_s']:.2f} s "
            "per step.",
            "",
            f"| workers | allreduce, {links} | step | efficiency (overlapped), {links} "
            f"| images/s | compute per step below which efficiency < 90%, {links} |",
            "|---|---|---|---|---|---|",
        ]
        for workers in WORKERS:
            rows = [r for r in entry["rows"] if r["workers"] == workers]
            cells = [
                " / ".join(f"{r['allreduce_s'] * 1e3:.0f} ms" for r in rows),
                " / ".join(f"{r['step_s']:.2f} s" for r in rows),
                " / ".join(
                    f"{r['efficiency']:.1%} ({r['efficiency_overlapped']:.0%})" for r in rows
                ),
                " / ".join(f"{r['images_per_s']:,.1f}" for r in rows),
                " / ".join(f"{9 * r['allreduce_s']:.2f} s" for r in rows),
            ]
            lines.append(f"| {workers} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the measurements as JSON")
    parser.add_argument(
        "--from-json", metavar="PATH", help="print the tables of an earlier --json run"
    )
    parser.add_argument("--quick", action="store_true", help="fewer cases and sizes")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case")
    parser.add_argument("--compute-batch", type=int, default=4, help="images per timed ResNet pass")
    parser.add_argument("--worker", choices=("throughput", "allreduce"), help=argparse.SUPPRESS)
    parser.add_argument("--model", default="demo", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-sync-bn", dest="sync_bn", action="store_false", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker == "throughput":
        worker_throughput(args)
        return
    if args.worker == "allreduce":
        worker_allreduce(args)
        return
    if args.from_json:
        print(markdown(json.loads(Path(args.from_json).read_text())))
        return
    report = run(args)
    if args.json:  # the raw measurements: --from-json derives the rest
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
