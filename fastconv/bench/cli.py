"""The ``fastconv bench`` command: its options (``add_arguments``) and ``run``, which
``fastconv.cli`` calls."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..functional import get_num_threads
from ..precision import PRECISIONS, float32_conv_precision, get_float32_conv_precision
from .catalogue import CONV_DIRECTIONS, CORPUS_OPS, MODEL_DIRECTIONS, MODEL_OPS, OPS
from .ladder import LADDER_PEERS, PeerUnavailable, peer_module, peer_versions, unavailable_reason
from .machine import OtherLoad, describe_machine, load_average, machine_peaks
from .peers import ALL_IMPLS
from .report import format_header, publish_report, summarize
from .runner import build_plan, run_plan
from .timing import OMP_SETTLE_S, default_settle_s, thread_count

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fastconv bench`` options (called by fastconv.cli)."""
    parser.description = (
        "Time fastconv against a vectorised NumPy peer and PyTorch (when installed), "
        "alternating in one process; report best/median time, GFLOP/s or GB/s, % of the "
        "measured peak, speedups, fastconv's algorithm and the max error vs the reference."
    )
    parser.add_argument(
        "--op",
        default="all",
        help="conv, gemm, pool, train or all (comma-separated list allowed; default all); "
        "corpus (conv layers of whole networks at 224 and 32, batch 1, 8, 32) and random "
        "(random conv layers) run only when named, as does torch (whole torch models -- "
        "resnet18, vgg11, mobilenet_v2 at 224 and 32 -- native against converted by "
        "fastconv.torch, with and without autotune), and models (every fastconv.models "
        "network against the same network in torch eager, with fastconv's time by layer "
        "kind)",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=60,
        metavar="N",
        help="corpus: time N distinct layers drawn with --seed (0: all of them); "
        "random: N draws (default 60)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="which corpus sample or random draws (default 0)"
    )
    parser.add_argument(
        "--layers",
        metavar="NAMES",
        help="comma-separated case names or "
        "shell patterns, e.g. 'resnet_3x3_*,vgg_3x3_112' or 'square_2048'",
    )
    parser.add_argument(
        "--direction",
        metavar="DIRS",
        help="conv: fwd,dx,dw; pool: fwd,dx; torch and models: infer_b1,infer_b32,train_b32 "
        "(default all)",
    )
    parser.add_argument(
        "--impls",
        metavar="NAMES",
        help=f"implementations to run, of {','.join(ALL_IMPLS)} (default: those of "
        f"{','.join(i for i in ALL_IMPLS if i not in LADDER_PEERS)} present; the ladder's "
        "cython and numba peers run only when named)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds, conv batch <= 2, "
        "pool batch <= 4: a rough picture in a fraction of the time",
    )
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for fastconv, torch and numpy's BLAS (default: fastconv's current count)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="float32 conv precision to measure fastconv at (default: the current setting, "
        "'high' unless changed); the report says which",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="alternating rounds per case (default 7; --quick 3; --op torch, models: 3, --quick 2)",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=None,
        metavar="S",
        help="repeat short calls so one sample lasts >= S seconds (default 0.05; --quick 0.02)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        metavar="S",
        help="sleep S seconds after every sample so the implementation's "
        "spinning worker threads go idle before the next one runs (default "
        "0.02, and 0.12 after numpy's OpenBLAS unless OPENBLAS_THREAD_TIMEOUT "
        "is set)",
    )
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (matplotlib)")
    parser.add_argument(
        "--ladder-plot",
        metavar="PATH",
        help="write a PNG chart of the ladder: each implementation's speed relative to numpy",
    )
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        nargs="?",
        const="-",
        help="print (or write to PATH) the markdown report for README",
    )
    parser.add_argument(
        "--readme",
        metavar="PATH",
        help="replace the text between "
        "'<!-- bench-SECTION:start -->' and '<!-- bench-SECTION:end -->' in "
        "PATH with the markdown report (e.g. benchmarks/README.md)",
    )
    parser.add_argument(
        "--section", default="table", help="the SECTION of --readme (default: table)"
    )
    parser.add_argument(
        "--from-json",
        metavar="PATH",
        help="measure nothing: print the "
        "report (and write --markdown/--readme/--plot) from a saved --json",
    )
    parser.add_argument(
        "--reprobe",
        action="store_true",
        help="measure the machine's peak "
        "FMA throughput and copy bandwidth again and update the cache",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _command_line(args: argparse.Namespace) -> str:
    """The options of this run, as one would type them (for the report header)."""
    parts = [f"--op {args.op}"]
    for opt in ("layers", "direction", "impls", "threads", "repeat"):
        value = getattr(args, opt)
        if value is not None:
            parts.append(f"--{opt} {value}")
    if set(_split(args.op) or ()) & set(CORPUS_OPS):
        parts += [f"--sample {args.sample}", f"--seed {args.seed}"]
    parts += [f"--{flag}" for flag in ("quick", "smoke") if getattr(args, flag)]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    """``fastconv bench``: returns the exit status (2 on bad arguments, 1 when a result
    fails its correctness check)."""
    if args.from_json:
        try:
            saved = json.loads(Path(args.from_json).read_text())
            meta, results = saved["meta"], saved["results"]
        except (OSError, ValueError, KeyError) as exc:
            print(f"fastconv bench: --from-json: {exc}", file=sys.stderr)
            return 2
        if args.markdown != "-":
            print(format_header(meta))
        return publish_report(meta, results, summarize(results), saved.get("skipped", []), args)
    ops_arg = _split(args.op) or ["all"]
    ops = list(OPS) if "all" in ops_arg else ops_arg
    bad = [o for o in ops if o not in OPS + CORPUS_OPS + MODEL_OPS]
    impls = _split(args.impls)
    directions = _split(args.direction)
    errors = []
    if bad:
        choices = ", ".join(OPS + CORPUS_OPS + MODEL_OPS)
        errors.append(f"--op: unknown {', '.join(bad)} (choose from {choices}, all)")
    if args.sample < 0:
        errors.append("--sample must be >= 0")
    known_impls = (*ALL_IMPLS, "autotune")  # autotune: the model op's third
    if impls and not set(impls) <= set(known_impls):
        errors.append(f"--impls: choose from {', '.join(known_impls)}")
    if directions and not set(directions) <= set(CONV_DIRECTIONS + MODEL_DIRECTIONS):
        errors.append(f"--direction: choose from {', '.join(CONV_DIRECTIONS + MODEL_DIRECTIONS)}")
    if args.threads is not None and args.threads < 1:
        errors.append("--threads must be >= 1")
    if args.repeat is not None and args.repeat < 1:
        errors.append("--repeat must be >= 1")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = None
    if not errors:
        try:
            plan = build_plan(
                ops,
                layers=_split(args.layers),
                directions=directions,
                impls=impls,
                mode=mode,
                sample=args.sample,
                seed=args.seed,
                model_rounds=args.repeat,
            )
        except ValueError as exc:
            errors.append(str(exc))
    if errors or plan is None:
        for e in errors:
            print(f"fastconv bench: error: {e}", file=sys.stderr)
        return 2
    if not plan.items:
        print("fastconv bench: no case matches these options", file=sys.stderr)
        return 2
    for peer in [p for p in LADDER_PEERS if impls and p in impls]:
        reason = unavailable_reason(peer)
        if reason is None:
            try:
                peer_module(peer)  # compiled and warmed up before anything is timed
            except PeerUnavailable:
                reason = unavailable_reason(peer)
        if reason is not None:
            print(f"fastconv bench: running without {peer}: {reason}", file=sys.stderr)
            plan.skipped.append(f"{peer}: {reason}")
    rounds = args.repeat or {"full": 7, "quick": 3, "smoke": 1}[mode]
    min_time = (
        args.min_time
        if args.min_time is not None
        else {"full": 0.05, "quick": 0.02, "smoke": 0.0}[mode]
    )
    settle = args.settle if args.settle is not None else (0.0 if mode == "smoke" else None)
    threads = args.threads or get_num_threads()
    markdown_only = args.markdown == "-"
    precision = args.precision or get_float32_conv_precision()
    with thread_count(threads), float32_conv_precision(precision):
        peaks = machine_peaks(threads, reprobe=args.reprobe, quick=mode == "smoke")
        meta = describe_machine(peaks, threads)
        meta.update(
            rounds=rounds,
            min_sample_s=min_time,
            settle_s=(
                settle
                if settle is not None
                else {"numpy (gemm, conv)": default_settle_s(), "others": OMP_SETTLE_S}
            ),
            mode={"full": "", "quick": "--quick: reduced batches", "smoke": "--smoke: tiny shapes"}[
                mode
            ],
            argv=_command_line(args),
            precision=precision,
            ladder_peers=peer_versions(impls or ()),
        )
        if not markdown_only:
            print(format_header(meta), flush=True)
        others = OtherLoad().start()
        results, skipped = run_plan(
            plan,
            rounds=rounds,
            min_sample_s=min_time,
            settle_s=settle,
            peaks=peaks,
            progress=not args.no_progress,
        )
    meta["load_average_after"] = load_average()
    meta["cpu_others_during"] = others.stop()
    return publish_report(meta, results, summarize(results), skipped, args)
