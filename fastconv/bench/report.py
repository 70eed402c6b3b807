"""Presenting results: the terminal tables, the summaries judged against the speed
targets in ``targets.json``, the report header, the markdown report (and the README
section it replaces), the JSON file and the PNG chart.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .catalogue import CONV_DIRECTIONS, CORPUS_OPS, MODEL_OPS, OPS, THREE_BY_THREE_S1
from .ladder import ladder, ladder_rows, plot_ladder
from .models import MODEL_IMPLS, model_summaries
from .peers import ALL_IMPLS
from .timing import geomean

__all__ = [
    "busy_warning",
    "compact_rows",
    "format_header",
    "format_markdown",
    "format_markdown_report",
    "format_summary",
    "format_table",
    "load_targets",
    "long_rows",
    "plot_results",
    "publish_report",
    "summarize",
    "terminal_table",
    "update_readme",
]

TARGETS_FILE = "targets.json"

# When the report calls the machine busy: the share of all CPUs that other processes
# used during the run, or just before it; without /proc/stat, the 1-minute load average
# per core. A busy machine makes spinning OpenMP workers lose their cores.
BUSY_DURING_RUN = 0.1
BUSY_BEFORE_RUN = 0.25
BUSY_LOAD_PER_CORE = 0.5

# =========================================================================== tables


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table: ``columns`` are (key, format spec) pairs, e.g. ("best_ms", ".2f");
    a missing value prints as '-'."""
    header = [key for key, _ in columns]
    cells = [
        [("-" if row.get(key) is None else format(row[key], spec)) for key, spec in columns]
        for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
        "  ".join("-" * w for w in widths),
    ]
    text = [spec == "s" for _, spec in columns]  # text left, numbers right
    lines += [
        "  ".join(c.ljust(w) if t else c.rjust(w) for c, w, t in zip(r, widths, text))
        for r in cells
    ]
    return "\n".join(lines)


def format_markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """The same table as ``format_table`` in GitHub markdown."""
    header = [key for key, _ in columns]
    text = [spec == "s" for _, spec in columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if t else "---:" for t in text) + "|",
    ]
    for row in rows:
        cells = [("-" if row.get(k) is None else format(row[k], s)) for k, s in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Report order: the model op's converted-with-autotune models right after fastconv.
REPORT_IMPLS = tuple(dict.fromkeys((*MODEL_IMPLS[:2], *ALL_IMPLS)))


def _ordered_impls(results: list[dict]) -> list[str]:
    seen = {name for r in results for name in r["impls"]}
    return [name for name in REPORT_IMPLS if name in seen]


def _described_impl(result: dict) -> str:
    """The implementation a result's ``algorithm`` describes: fastconv's kernel choice,
    or for whole models what autotuning kept."""
    return "autotune" if result["op"] == "torch" else "fastconv"


def long_rows(results: list[dict]) -> list[dict]:
    """One row per (case, direction, implementation) for the terminal table."""
    rows = []
    for r in results:
        first = True
        for name in REPORT_IMPLS:
            if name not in r["impls"]:
                continue
            i = r["impls"][name]
            row = {
                "case": r["case"] if first else "",
                "dir": r["direction"] if first else "",
                "impl": name,
                "algorithm": (r["algorithm"] or "") if name == _described_impl(r) else "",
                "best_ms": i["best_ms"],
                "median_ms": i["median_ms"],
                "rate": i["rate"],
                "img/s": r["images_per_call"] / (i["best_ms"] / 1e3)
                if r.get("images_per_call")
                else None,
                "%peak": i["pct_peak"],
                "max_err": i["max_err"],
                "ok": None if i["ok"] is None else ("ok" if i["ok"] else "FAIL"),
            }
            for peer, v in i["speedup"].items():
                row[f"x_{peer}"] = v
            rows.append(row)
            first = False
    return rows


def terminal_table(results: list[dict]) -> str:
    unit = results[0]["unit"]
    impls = _ordered_impls(results)
    cols = [
        ("case", "s"),
        ("dir", "s"),
        ("impl", "s"),
        ("algorithm", "s"),
        ("best_ms", ".3f"),
        ("median_ms", ".3f"),
        (unit, ".1f"),
        ("%peak", ".1f"),
    ]
    if any(r.get("images_per_call") for r in results):
        cols.append(("img/s", ".3g"))
    cols += [(f"x_{p}", ".2f") for p in impls]
    cols += [("max_err", ".1e"), ("ok", "s")]
    rows = long_rows(results)
    for row in rows:
        row[unit] = row.pop("rate")
    return format_table(rows, cols)


def compact_rows(results: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """One row per case and direction: fastconv's figures, each peer's time and rate,
    fastconv's speedup over each peer (the README table)."""
    impls = _ordered_impls(results)
    unit = results[0]["unit"]
    short = "GF/s" if unit == "GFLOP/s" else unit
    cols = [("case", "s"), ("dir", "s"), ("algorithm", "s")]
    for name in impls:
        cols += [(f"{name} ms", ".3g"), (f"{name} {short}", ".1f")]
        if name == "fastconv":
            cols.append(("fastconv %peak", ".0f"))
    cols += [(f"x {p}", ".2f") for p in impls if p not in ("fastconv", "autotune")]
    cols += [(f"autotune x {p}", ".2f") for p in impls if p not in ("fastconv", "autotune")]
    cols += [(f"{name} img/s", ".3g") for name in impls]
    cols.append(("max err", ".0e"))
    rows = []
    order = {d: i for i, d in enumerate(CONV_DIRECTIONS)}
    # direction-major (all fwd rows, then dx, then dw): as the summaries are
    for r in sorted(results, key=lambda r: order.get(r["direction"], 0)):
        row: dict[str, Any] = {
            "case": r["case"],
            "dir": r["direction"],
            "algorithm": r["algorithm"],
        }
        for name, i in r["impls"].items():
            row[f"{name} ms"] = i["best_ms"]
            row[f"{name} {short}"] = i["rate"]
            if r.get("images_per_call"):
                row[f"{name} img/s"] = r["images_per_call"] / (i["best_ms"] / 1e3)
        fc = r["impls"].get("fastconv")
        if fc is not None:
            row["fastconv %peak"] = fc["pct_peak"]
            row["max err"] = fc["max_err"]
            for p, v in fc["speedup"].items():
                row[f"x {p}"] = v
        for p, v in r["impls"].get("autotune", {}).get("speedup", {}).items():
            row[f"autotune x {p}"] = v
        rows.append(row)
    cols = [(k, f) for k, f in cols if any(row.get(k) not in (None, "") for row in rows)]
    return rows, cols


# =========================================================================== summaries


def load_targets() -> dict:
    """The speed targets the summaries judge against (``targets.json`` in this package;
    each entry says what it means)."""
    text = resources.files(__package__).joinpath(TARGETS_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def _peak_case(targets: dict) -> tuple[str, str]:
    """The GEMM case the percent-of-peak target is judged on, and the size that names
    its summary fields and text: ('square_2048', '2048')."""
    case = targets["gemm"]["percent_of_peak"]["case"]
    return case, case.rsplit("_", 1)[-1]


def summarize(results: list[dict], targets: dict | None = None) -> list[dict]:
    """Per op group and direction: geometric mean of fastconv's speedup over each peer,
    the slowest case, and whether the targets are met (``targets``, by default
    ``load_targets()``): conv against torch, GEMM against numpy."""
    targets = load_targets() if targets is None else targets
    conv, gemm = targets["conv"], targets["gemm"]
    peak_case, size = _peak_case(targets)
    out = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["op"], r["direction"]), []).append(r)
    for (op, direction), rows in groups.items():
        if op in MODEL_OPS:
            continue  # model_summaries below
        fc_rows = [r for r in rows if "fastconv" in r["impls"]]
        for peer in ("torch", "numpy"):
            pairs = [
                (r["case"], r["impls"]["fastconv"]["speedup"][peer])
                for r in fc_rows
                if peer in r["impls"]
            ]
            if not pairs:
                continue
            entry: dict[str, Any] = {
                "op": op,
                "direction": direction,
                "peer": peer,
                "cases": len(pairs),
                "geomean": geomean(v for _, v in pairs),
                "min": min(v for _, v in pairs),
                "min_case": min(pairs, key=lambda p: p[1])[0],
                "below_1": sum(v < 1.0 for _, v in pairs) / len(pairs),
            }
            calls = targets["overhead"]
            if op == "overhead" and peer == calls["peers"].get(direction):
                entry["target"] = f"no more than {peer}'s time per call"
                entry["meets"] = entry["min"] >= calls["speedup"]["min"]
            shapes = targets.get(op) if op in ("corpus", "random") else None
            if shapes is not None and peer == shapes["peer"]:
                geo = shapes["geomean_speedup"]["min"]
                entry["target"] = f"geomean >= {geo}"
                entry["meets"] = entry["geomean"] >= geo
                if "slowest_case_speedup" in shapes:
                    slowest = shapes["slowest_case_speedup"]["min"]
                    entry["target"] += f", no layer < {slowest}"
                    entry["meets"] = entry["meets"] and entry["min"] >= slowest
            if op == "conv" and peer == conv["peer"]:
                geo, slowest = conv["geomean_speedup"]["min"], conv["slowest_case_speedup"]["min"]
                entry["target"] = f"geomean >= {geo}, no layer < {slowest}"
                entry["meets"] = entry["geomean"] >= geo and entry["min"] >= slowest
                subset = conv["geomean_speedup_3x3_s1"]
                sub = [v for name, v in pairs if name in THREE_BY_THREE_S1]
                if sub and direction in subset["directions"]:
                    entry["geomean_3x3_s1"] = geomean(sub)
                    entry["cases_3x3_s1"] = len(sub)
                    entry["target"] += f"; 3x3 stride-1 geomean >= {subset['min']}"
                    entry["meets"] = entry["meets"] and entry["geomean_3x3_s1"] >= subset["min"]
            if op == "gemm" and peer == gemm["peer"]:
                geo, slowest = gemm["geomean_speedup"]["min"], gemm["slowest_case_speedup"]["min"]
                min_pct = gemm["percent_of_peak"]["min"]
                entry["target"] = f"geomean >= {geo}, no case < {slowest}"
                big = [r for r in fc_rows if r["case"] == peak_case]
                fc = big[0]["impls"]["fastconv"] if big else {}
                entry[f"pct_peak_{size}"] = fc.get("pct_peak")
                for ceiling, pct_of in fc.get("pct_ceilings", {}).items():
                    entry[f"pct_{ceiling}_{size}"] = pct_of
                # The peak of the same minutes when it was timed alongside, else the
                # cached one.
                pct = entry.get(f"pct_fma_loop_{size}", entry[f"pct_peak_{size}"])
                if pct is not None:
                    entry["target"] += f", >= {min_pct}% of peak at {size}"
                entry["meets"] = (
                    entry["geomean"] >= geo
                    and entry["min"] >= slowest
                    and (pct is None or pct >= min_pct)
                )
            out.append(entry)
    return out + model_summaries(results, targets)


def format_summary(summary: list[dict]) -> str:
    """One line per ``summarize`` entry."""
    lines = []
    for s in summary:
        # the size the GEMM peak fields are named by ('2048' in pct_peak_2048), if any
        size = next((k[len("pct_peak_") :] for k in s if k.startswith("pct_peak_")), "")
        d = f" {s['direction']}" if s["direction"] else ""
        line = (
            f"{s['op']}{d}: {s.get('impl', 'fastconv')} vs {s['peer']} geomean "
            f"{s['geomean']:.2f}x over "
            f"{s['cases']} cases, min {s['min']:.2f}x ({s['min_case']})"
        )
        if "geomean_3x3_s1" in s:
            line += f", 3x3 stride-1 geomean {s['geomean_3x3_s1']:.2f}x"
        if s["op"] in ("corpus", "random"):
            line += f", {100 * s['below_1']:.0f}% of cases below 1.0x"
        if s.get(f"pct_peak_{size}") is not None:
            line += f", {s[f'pct_peak_{size}']:.0f}% of the cached peak at {size}"
        if s.get(f"pct_fma_loop_{size}") is not None:
            line += f" ({s[f'pct_fma_loop_{size}']:.0f}% of the FMA loop timed alongside"
            if s.get(f"pct_micro_kernel_{size}") is not None:
                line += f", {s[f'pct_micro_kernel_{size}']:.0f}% of the micro-kernel in L1"
            line += ")"
        if "target" in s:
            line += f"  [target: {s['target']}: {'met' if s['meets'] else 'NOT met'}]"
        lines.append(line)
    return "\n".join(lines)


# =========================================================================== header


def busy_warning(meta: dict) -> str | None:
    """A warning when other processes used the CPUs: during the run, just before it, or
    (without /proc/stat) a high 1-minute load average (limits: ``BUSY_*``)."""
    la, cores = meta.get("load_average"), meta.get("cores") or 1
    busy, during = meta.get("cpu_busy_before"), meta.get("cpu_others_during")
    if during is not None and during > BUSY_DURING_RUN:
        what = f"other processes used {100 * during:.0f}% of the {cores} cores during the run"
    elif busy is not None:
        if busy <= BUSY_BEFORE_RUN:
            return None
        what = f"other processes kept {100 * busy:.0f}% of the {cores} cores busy just before"
    elif not la or la[0] <= BUSY_LOAD_PER_CORE * cores:
        return None
    else:
        what = f"load average {la[0]} on {cores} cores"
    return (
        f"warning: the machine is busy ({what}): timings "
        "are noisy, and spinning OpenMP workers (fastconv's and PyTorch's) lose their "
        "cores to other processes, which can slow small calls tenfold; re-run on a quiet "
        "machine, or run both sides with OMP_WAIT_POLICY=PASSIVE."
    )


def format_header(meta: dict) -> str:
    la = meta["load_average"]
    return (
        f"fastconv {meta['fastconv']} | {meta['cpu']}, {meta['cores']} cores | "
        f"ISA path {meta['isa']} | {meta['threads']} threads | "
        f"float32 conv precision {meta.get('precision', 'high')}\n"
        f"measured peak ({meta['threads']} threads): {meta['fma_peak_gflops']} GFLOP/s fp32 FMA, "
        f"{meta['copy_gbps']} GB/s copy ({meta['peaks_source']}, {meta['peaks_measured']})\n"
        f"peers: numpy {meta['numpy']} [{meta['blas']}], torch {meta['torch'] or 'not installed'}"
        + "".join(f", {name} {v}" for name, v in meta.get("ladder_peers", {}).items())
        + f" | {meta['date']} | load average {la[0] if la else '?'}"
        + (f" {la[1]} {la[2]}" if la else "")
        + (
            f" | CPUs {100 * meta['cpu_busy_before']:.0f}% busy before the start"
            if meta.get("cpu_busy_before") is not None
            else ""
        )
        + (f" | {meta['mode']}" if meta.get("mode") else "")
        + "".join(f" | {k}={v}" for k, v in meta.get("env", {}).items())
        + (f"\n{busy_warning(meta)}" if busy_warning(meta) else "")
    )


# =========================================================================== markdown, plot


def format_markdown_report(meta: dict, results: list[dict], summary: list[dict]) -> str:
    """The README section: header, one table per op group, the summary lines."""
    la = meta["load_average"]
    out = [
        f"Measured {meta['date'][:10]} with `fastconv bench {meta.get('argv', '')}`".rstrip() + ": "
        f"{meta['cpu']}, {meta['cores']} cores, ISA path `{meta['isa']}`, "
        f"{meta['threads']} threads; measured peak {meta['fma_peak_gflops']} GFLOP/s fp32 "
        f"(FMA loop) and {meta['copy_gbps']} GB/s (copy); numpy {meta['numpy']} "
        f"({meta['blas']}), torch {meta['torch'] or 'not installed'}"
        + "".join(f", {name} {v}" for name, v in meta.get("ladder_peers", {}).items())
        + "; "
        f"load average {' '.join(map(str, la)) if la else 'unknown'}"
        + (
            f" at the start, {' '.join(map(str, meta['load_average_after']))} at the end"
            if meta.get("load_average_after")
            else ""
        )
        + (
            f", CPUs {100 * meta['cpu_busy_before']:.0f}% busy just before the start"
            if meta.get("cpu_busy_before") is not None
            else ""
        )
        + (
            f", other processes used {100 * meta['cpu_others_during']:.0f}% of the CPUs "
            "during the run"
            if meta.get("cpu_others_during") is not None
            else ""
        )
        + (f"; {meta['mode']}" if meta.get("mode") else "")
        + "".join(f"; `{k}={v}`" for k, v in meta.get("env", {}).items())
        + ".",
        "",
    ]
    if busy_warning(meta):
        out += [f"*{busy_warning(meta)}*", ""]
    entries = ladder(results)
    if entries:
        out += [
            "**ladder** (speed relative to numpy: the geometric mean, over the cases every "
            "implementation ran (their number in brackets), of numpy's best time / the "
            "implementation's best time)",
            "",
            format_markdown(*ladder_rows(entries)),
            "",
        ]
    for op in OPS + CORPUS_OPS + MODEL_OPS:
        rows = [r for r in results if r["op"] == op]
        if not rows:
            continue
        table_rows, cols = compact_rows(rows)
        rounds = rows[0].get("rounds", meta.get("rounds", "?"))
        out += [
            f"**{op}** ({rows[0]['unit']}; best of {rounds} alternating "
            "rounds; `x peer` = peer time / fastconv time)",
            "",
            format_markdown(table_rows, cols),
            "",
        ]
        lines = [s for s in summary if s["op"] == op]
        if lines:
            out += ["```", format_summary(lines), "```", ""]
    return "\n".join(out)


def update_readme(path: str, text: str, section: str = "table") -> None:
    """Replace what lies between ``<!-- bench-SECTION:start -->`` and
    ``<!-- bench-SECTION:end -->`` in ``path`` with ``text``."""
    start, end = f"<!-- bench-{section}:start -->", f"<!-- bench-{section}:end -->"
    doc = Path(path).read_text()
    i, j = doc.find(start), doc.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{path} has no {start} ... {end} markers")
    Path(path).write_text(doc[: i + len(start)] + "\n" + text.strip() + "\n" + doc[j:])


def plot_results(results: list[dict], path: str, meta: dict | None = None) -> bool:
    """A PNG bar chart of GFLOP/s (GB/s) per case and implementation, one panel per op
    group and direction; False when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    panels: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        panels.setdefault((r["op"], r["direction"]), []).append(r)
    fig = Figure(figsize=(12, 3.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    colors = {
        "fastconv": "tab:blue",
        "numpy": "tab:gray",
        "torch": "tab:orange",
        "cython": "tab:green",
        "numba": "tab:purple",
    }
    for ax, ((op, direction), rows) in zip(axes, panels.items()):
        impls = _ordered_impls(rows)
        width = 0.8 / max(1, len(impls))
        xs = np.arange(len(rows))
        for j, name in enumerate(impls):
            vals = [r["impls"][name]["rate"] if name in r["impls"] else 0.0 for r in rows]
            ax.bar(
                xs + (j - (len(impls) - 1) / 2) * width,
                vals,
                width,
                label=name,
                color=colors.get(name),
            )
        ax.set_xticks(xs, [r["case"] for r in rows], rotation=90, fontsize=8)
        ax.set_ylabel(rows[0]["unit"])
        ax.set_title(f"{op} {direction}".strip())
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if meta:
        fig.suptitle(
            f"fastconv {meta.get('fastconv')} | {meta.get('cpu')}, "
            f"{meta.get('threads')} threads, {meta.get('isa')} | peak "
            f"{meta.get('fma_peak_gflops')} GFLOP/s, {meta.get('copy_gbps')} GB/s | "
            f"{str(meta.get('date', ''))[:10]}",
            fontsize=10,
        )
    fig.savefig(path, dpi=100)
    return True


# =========================================================================== the command's output


def publish_report(
    meta: dict,
    results: list[dict],
    summary: list[dict],
    skipped: list[str],
    args: argparse.Namespace,
) -> int:
    """Write the files the ``fastconv bench`` options ask for (first: a closed stdout
    must not lose them), then print the tables; returns the exit status."""
    status = 0
    if args.json and not args.from_json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "meta": meta,
                    "results": results,
                    "summary": summary,
                    "ladder": ladder(results),
                    "skipped": skipped,
                },
                indent=2,
                default=float,
            )
        )
    text = format_markdown_report(meta, results, summary) if (args.markdown or args.readme) else ""
    if args.markdown and args.markdown != "-":
        Path(args.markdown).write_text(text + "\n")
    if args.readme:
        try:
            update_readme(args.readme, text, args.section)
        except (OSError, ValueError) as exc:
            print(f"fastconv bench: --readme: {exc}", file=sys.stderr)
            status = 2
    if args.plot and results and not plot_results(results, args.plot, meta):
        print("fastconv bench: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
    ladder_plot = getattr(args, "ladder_plot", None)
    if ladder_plot:
        if not ladder(results):
            print(
                "fastconv bench: --ladder-plot: no op ran numpy and another implementation",
                file=sys.stderr,
            )
        elif not plot_ladder(ladder(results), ladder_plot, meta):
            print("fastconv bench: --ladder-plot needs matplotlib", file=sys.stderr)
    if args.markdown == "-":
        print(text)
    else:
        for op in OPS + CORPUS_OPS + MODEL_OPS:
            rows = [r for r in results if r["op"] == op]
            if rows:
                rounds = rows[0].get("rounds", meta.get("rounds"))
                print(
                    f"\n== {op} ({rows[0]['unit']}, best of {rounds}; x_peer = "
                    f"peer best / this best)"
                    f"{' -- ' + rows[0]['note'] if rows[0]['note'] else ''}"
                )
                print(terminal_table(rows))
        if summary:
            print()
            print(format_summary(summary))
        if ladder(results):
            print(
                "\nladder: speed relative to numpy (geomean of numpy best / impl best over "
                "the cases every implementation ran; their number in brackets)"
            )
            print(format_table(*ladder_rows(ladder(results))))
        if meta.get("load_average_after"):
            print(f"load average at the end: {' '.join(map(str, meta['load_average_after']))}")
        if meta.get("cpu_others_during") is not None:
            print(
                f"other processes used {100 * meta['cpu_others_during']:.0f}% of the CPUs "
                "during the run"
                + (
                    " -- a disturbed run: re-run on a quiet machine"
                    if meta["cpu_others_during"] > BUSY_DURING_RUN
                    else ""
                )
            )
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    failed = [
        f"{r['case']} {r['direction']} {name}"
        for r in results
        for name, i in r["impls"].items()
        if i["ok"] is False
    ]
    if failed:
        print(
            f"fastconv bench: results outside the error tolerance: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return status
