"""``fastconv bench``: fastconv against a vectorised NumPy peer and PyTorch, in one process.

Every case (a GEMM shape, a conv layer and direction, a pooling op, a training step) is
run by every implementation present -- ``fastconv``, ``numpy`` (OpenBLAS ``matmul``; for
convolution an im2col + matmul baseline, for pooling ``fastconv.reference``) and
``torch`` (PyTorch CPU, when installed) -- alternating A B C A B C in this process, so
that turbo, thermal and background-load drift hit all of them alike. Each implementation's
result is first checked against ``fastconv.reference`` (computed once per case, in float64,
on the real input or on its first images). Reported per implementation: best and median
time, GFLOP/s (GB/s for memory-bound pooling), % of this machine's measured peak (an FMA
throughput probe and a copy-bandwidth probe, measured once and cached in
``~/.cache/fastconv/machine.json``), speedup against each peer, the algorithm fastconv
chose and the maximum error against the reference. The summaries judge the speedups
against the targets in ``targets.json``.

    fastconv bench --op all                      # everything, full-size shapes
    fastconv bench --op conv --layers 'resnet_3x3_*' --direction fwd,dx
    fastconv bench --op gemm --threads 1         # single-thread figures
    fastconv bench --op all --markdown           # the README table

The modules: ``catalogue`` (the case lists), ``peers`` (the NumPy and PyTorch
implementations), ``ladder`` with ``peers_cython`` and ``peers_numba`` (what a Python
user would write instead: ``--impls fastconv,torch,numpy,cython,numba``), ``timing``
(the alternating timer), ``machine`` (peak and load probes), ``cases`` (runnable cases),
``runner`` (checking and timing them), ``report`` (tables, summaries, markdown, plot) and
``cli`` (the command); ``models`` and ``zoo`` run whole networks (``--op torch``,
``--op models``) built by ``torch_models``. The names below are the ones
``benchmarks/`` and ``fastconv.cli`` use.
"""

from __future__ import annotations

from .cases import Case, conv_backward_algorithm, conv_case, gemm_case, pool_case, train_case
from .catalogue import (
    CONV_BY_NAME,
    CONV_DIRECTIONS,
    CONV_LAYERS,
    GEMM_BY_NAME,
    GEMM_CASES,
    POOL_CASES,
    THREE_BY_THREE_S1,
    TRAIN_BY_NAME,
    TRAIN_CASES,
    ConvLayer,
    GemmCase,
    PoolCase,
    TrainCase,
)
from .cli import add_arguments, run
from .ladder import LADDER_PEERS
from .machine import machine_peaks
from .peers import (
    ALL_IMPLS,
    IMPLS,
    numpy_conv2d,
    numpy_conv2d_input,
    numpy_conv2d_weight,
    torch_or_none,
)
from .report import format_summary, format_table, summarize
from .runner import run_case
from .timing import Timing, gbps, geomean, thread_count, time_alternating

__all__ = [
    "ALL_IMPLS",
    "CONV_BY_NAME",
    "CONV_DIRECTIONS",
    "CONV_LAYERS",
    "GEMM_BY_NAME",
    "GEMM_CASES",
    "IMPLS",
    "LADDER_PEERS",
    "POOL_CASES",
    "THREE_BY_THREE_S1",
    "TRAIN_BY_NAME",
    "TRAIN_CASES",
    "Case",
    "ConvLayer",
    "GemmCase",
    "PoolCase",
    "Timing",
    "TrainCase",
    "add_arguments",
    "conv_backward_algorithm",
    "conv_case",
    "format_summary",
    "format_table",
    "gbps",
    "gemm_case",
    "geomean",
    "machine_peaks",
    "numpy_conv2d",
    "numpy_conv2d_input",
    "numpy_conv2d_weight",
    "pool_case",
    "run",
    "run_case",
    "summarize",
    "thread_count",
    "time_alternating",
    "torch_or_none",
    "train_case",
]
