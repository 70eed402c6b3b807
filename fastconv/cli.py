"""The ``fastconv`` command: ``info``, ``train`` and ``bench``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys


def info() -> dict:
    """What this installation runs on: version, ISA path, threads, CUDA."""
    from . import __version__, _cpu, get_num_threads

    return {
        "version": __version__,
        "isa": _cpu.isa(),
        "threads": get_num_threads(),
        "openmp": _cpu.openmp_version(),
        "cuda": cuda_status(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def cuda_status() -> str:
    """Whether the CUDA backend can run, without importing numba unless it is installed."""
    if importlib.util.find_spec("numba") is None:
        return "unavailable (numba-cuda not installed: pip install fastconv[cuda])"
    try:
        from numba import cuda
    except Exception as exc:  # a broken numba install must not break `fastconv info`
        return f"unavailable ({type(exc).__name__}: {exc})"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "simulator (NUMBA_ENABLE_CUDASIM=1)"
    try:
        return "available" if cuda.is_available() else "unavailable (no CUDA device or driver)"
    except Exception as exc:
        return f"unavailable ({type(exc).__name__}: {exc})"


def _run_info(args: argparse.Namespace) -> int:
    report = info()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>10}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    info_parser = commands.add_parser("info", help="version, ISA path, threads, CUDA")
    info_parser.add_argument("--json", action="store_true", help="print JSON")
    info_parser.set_defaults(run=_run_info)

    for name, module, help_text in (
        ("train", "training", "train a CNN (default: scikit-learn digits)"),
        ("bench", "bench", "benchmark fastconv against the NumPy reference and PyTorch"),
    ):
        if importlib.util.find_spec(f"fastconv.{module}") is None:
            continue
        mod = importlib.import_module(f"fastconv.{module}")
        sub = commands.add_parser(name, help=help_text)
        mod.add_arguments(sub)
        sub.set_defaults(run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
