"""The ladder: what a Python user would write instead of fastconv, rung by rung.

The rungs are the NumPy peer (vectorised NumPy, the yardstick), the Cython peer
(``peers_cython``: im2col/col2im and max pooling in OpenMP loops, NumPy's matmul), the
Numba peer (``peers_numba``: direct loops under ``@njit(parallel=True)``), PyTorch and
fastconv. ``fastconv bench --impls fastconv,torch,numpy,cython,numba`` runs them side
by side; ``ladder()`` summarises a run as the geometric mean of each implementation's
speed relative to NumPy (NumPy best time / its best time) per op and direction.

The Cython and Numba peers run only when ``--impls`` names them: they are slow rungs
that would multiply the default run's time, and they compile on first use. Their
packages are optional (the ``bench`` and ``test`` extras bring them); where one is
missing, ``unavailable_reason`` says why and the run goes on without it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from .timing import geomean

__all__ = [
    "LADDER_ORDER",
    "LADDER_PEERS",
    "PeerUnavailable",
    "conv_makers",
    "ladder",
    "ladder_rows",
    "peer_module",
    "peer_versions",
    "plot_ladder",
    "pool_makers",
    "unavailable_reason",
]

# The peers that run only when named, and the order of the ladder's rows (the yardstick
# first, then roughly from what takes least effort to what takes most).
LADDER_PEERS = ("cython", "numba")
LADDER_ORDER = ("numpy", "cython", "numba", "torch", "fastconv")


class PeerUnavailable(LookupError):
    """A ladder peer cannot run here (its package or a compiler is missing)."""


# Peers whose build failed in this process, and why.
_failed: dict[str, str] = {}


def unavailable_reason(name: str) -> str | None:
    """Why the ladder peer ``name`` cannot run here, or None when it can (nothing is
    compiled or imported to find out; a build that failed in this process counts)."""
    if name in _failed:
        return _failed[name]
    if name == "numba":
        if importlib.util.find_spec("numba") is None:
            return "Numba is not installed (pip install 'fastconv[bench]')"
        return None
    if name == "cython":
        from .peers_cython import unavailable_reason as cython_reason

        return cython_reason()
    raise ValueError(f"unknown ladder peer {name!r}: choose from {', '.join(LADDER_PEERS)}")


_ready: dict[str, Any] = {}


def peer_module(name: str):
    """The module of the ladder peer ``name``, compiled and warmed up: the Cython loops
    built (once, into the cache) and loaded, Numba's kernels compiled for float32. Raises
    PeerUnavailable when it cannot run here, or when its build fails (the compiler's
    output in the message; the peer then stays unavailable in this process)."""
    if name not in _ready:
        reason = unavailable_reason(name)
        if reason is not None:
            raise PeerUnavailable(f"{name}: {reason}")
        if name == "cython":
            from . import peers_cython as module

            try:
                module.load()
            except RuntimeError as exc:
                _failed[name] = str(exc)
                raise PeerUnavailable(f"{name}: {exc}") from exc
        else:
            from . import peers_numba as module

            module.warm_up()
        _ready[name] = module
    return _ready[name]


def peer_versions(names: Sequence[str]) -> dict[str, str]:
    """{peer: version} of the ladder peers among ``names`` that can run here (Numba's
    with its threading layer)."""
    out = {}
    for name in names:
        if name in LADDER_PEERS and unavailable_reason(name) is None:
            package = "Cython" if name == "cython" else "numba"
            out[name] = getattr(__import__(package), "__version__", "?")
            if name == "numba":
                from .peers_numba import threading_layer

                out[name] += f" ({threading_layer()} threads)"
    return out


def _requested(impls: Sequence[str] | None) -> list[str]:
    """The ladder peers ``impls`` names that can run here."""
    return [n for n in LADDER_PEERS if impls and n in impls and unavailable_reason(n) is None]


def conv_makers(
    impls: Sequence[str] | None, direction: str, stride: int, pad: int, groups: int
) -> dict[str, Callable]:
    """{peer: maker(x, w, gy) -> zero-argument callable} running conv ``direction``
    (fwd | dx | dw), for the ladder peers ``impls`` names that can run here."""
    from ..functional import get_num_threads

    makers = {}
    for name in _requested(impls):
        module = peer_module(name)
        threads = get_num_threads()

        def make(x, w, gy, module=module, threads=threads):
            if direction == "fwd":
                return lambda: module.conv2d(x, w, stride, pad, groups, threads=threads)
            if direction == "dx":
                return lambda: module.conv2d_input(
                    x.shape, w, gy, stride, pad, groups, threads=threads
                )
            return lambda: module.conv2d_weight(
                x, w.shape, gy, stride, pad, groups, threads=threads
            )

        makers[name] = make
    return makers


def pool_makers(
    impls: Sequence[str] | None, op: str, direction: str, kernel: int, stride: int, pad: int
) -> dict[str, Callable]:
    """{peer: maker(x, gy, indices) -> zero-argument callable} for max pooling forward or
    backward (``direction`` fwd | dx), for the ladder peers ``impls`` names that can run
    here; none for other pooling ops (the peers have max pooling only)."""
    from ..functional import get_num_threads

    if op != "max_pool2d":
        return {}
    makers = {}
    for name in _requested(impls):
        module = peer_module(name)
        threads = get_num_threads()

        def make(x, gy, indices, module=module, threads=threads):
            if direction == "fwd":
                return lambda: module.max_pool2d(x, kernel, stride, pad, threads=threads)
            return lambda: module.max_pool2d_backward(gy, indices, x.shape, threads=threads)

        makers[name] = make
    return makers


# =========================================================================== the summary


def _impl_order(names) -> list[str]:
    names = set(names)
    return [n for n in LADDER_ORDER if n in names] + sorted(names - set(LADDER_ORDER))


def ladder(results: list[dict]) -> list[dict]:
    """Per op and direction that NumPy ran: the geometric mean over the cases that every
    implementation of that group ran of NumPy's best time / each implementation's best
    time (numpy itself: 1.0). Groups with fewer than two implementations are left out.

    Returns [{op, direction, cases, speed: {impl: geomean}}] in the results' order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if "numpy" in r["impls"]:
            groups.setdefault((r["op"], r["direction"]), []).append(r)
    out = []
    for (op, direction), rows in groups.items():
        impls = _impl_order(name for r in rows for name in r["impls"])
        common = [r for r in rows if all(name in r["impls"] for name in impls)]
        if len(impls) < 2 or not common:
            continue
        speed = {
            name: geomean(
                r["impls"]["numpy"]["best_ms"] / r["impls"][name]["best_ms"] for r in common
            )
            for name in impls
        }
        out.append({"op": op, "direction": direction, "cases": len(common), "speed": speed})
    return out


def _column(entry: dict) -> str:
    return f"{entry['op']} {entry['direction']}".strip()


def ladder_rows(entries: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """The ladder as a table: one row per implementation, one column per op and
    direction (the speed relative to NumPy), headed with its number of cases."""
    impls = _impl_order(name for e in entries for name in e["speed"])
    headers = [f"{_column(e)} ({e['cases']})" for e in entries]
    rows = [
        {"impl": name, **{h: e["speed"].get(name) for h, e in zip(headers, entries)}}
        for name in impls
    ]
    return rows, [("impl", "s")] + [(h, ".2f") for h in headers]


def plot_ladder(entries: list[dict], path: str, meta: dict | None = None) -> bool:
    """A PNG bar chart of the ladder (log scale, NumPy = 1): one group of bars per op and
    direction, one bar per implementation, labelled with its speed. False when
    matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    import numpy as np

    impls = _impl_order(name for e in entries for name in e["speed"])
    colors = {
        "numpy": "tab:gray",
        "cython": "tab:green",
        "numba": "tab:purple",
        "torch": "tab:orange",
        "fastconv": "tab:blue",
    }
    fig = Figure(figsize=(max(6.0, 1.6 * len(entries) + 2), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / max(1, len(impls))
    xs = np.arange(len(entries))
    for j, name in enumerate(impls):
        vals = [e["speed"].get(name) or np.nan for e in entries]
        bars = ax.bar(
            xs + (j - (len(impls) - 1) / 2) * width, vals, width, label=name, color=colors.get(name)
        )
        ax.bar_label(bars, labels=[f"{v:.2g}" if v == v else "" for v in vals], fontsize=7)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(xs, [f"{_column(e)}\n({e['cases']} cases)" for e in entries], fontsize=8)
    ax.set_ylabel("speed relative to NumPy (geomean, log scale)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")
    if meta:
        ax.set_title(
            f"{meta.get('cpu')}, {meta.get('threads')} threads | "
            f"{str(meta.get('date', ''))[:10]}",
            fontsize=9,
        )
    fig.savefig(path, dpi=100)
    return True
