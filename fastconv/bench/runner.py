"""Running cases: check every implementation, time them alternately, and turn the
timings into result rows; and the plan of which catalogue cases a run builds.
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .._progress import Progress
from ..functional import last_algorithms
from .cases import (
    OVERHEAD_CALLS,
    Case,
    conv_case,
    gemm_case,
    overhead_case,
    pool_case,
    train_case,
)
from .catalogue import (
    CONV_BY_NAME,
    CONV_DIRECTIONS,
    CORPUS_OPS,
    GEMM_BY_NAME,
    MODEL_BY_NAME,
    MODEL_DIRECTIONS,
    MODEL_OPS,
    OPS,
    POOL_BY_NAME,
    POOL_DIRECTIONS,
    TRAIN_BY_NAME,
    ZOO_BY_NAME,
)
from .corpus import CorpusLayer, corpus, random_layers
from .models import MODEL_ROUNDS, model_case
from .timing import settle_times, time_alternating
from .zoo import zoo_case

# The conv op each benchmark direction runs, as fastconv.last_algorithms() names it.
_CONV_PASSES = {"fwd": "conv2d", "dx": "conv2d_input", "dw": "conv2d_weight"}

__all__ = ["Plan", "build_plan", "run_case", "run_plan"]


def run_case(
    case: Case,
    *,
    rounds: int = 7,
    min_sample_s: float = 0.05,
    settle_s: float | None = None,
    peaks: dict | None = None,
) -> dict:
    """Check every implementation against the reference, then time them alternately.

    Returns a result dict: op, case, direction, shape, algorithm, unit, work and, per
    implementation, best_ms, median_ms, rate (GFLOP/s or GB/s at the best time),
    pct_peak, max_err, ok (max_err within tolerance) and speedup {peer: peer best / best}.
    """
    errors = case.check()
    if case.rounds is not None:
        rounds = case.rounds
    probe_rates: dict[str, list[float]] = {name: [] for name in case.probes}

    def recording(name: str, probe: Callable[[], float]) -> Callable[[], None]:
        return lambda: probe_rates[name].append(probe())

    timed = {**case.impls, **{f"probe {n}": recording(n, p) for n, p in case.probes.items()}}
    timings = time_alternating(
        timed,
        rounds=rounds,
        min_sample_s=min_sample_s,
        settle=settle_times(timed, case.op, settle_s),
    )
    timings = {name: t for name, t in timings.items() if name in case.impls}
    # A callable algorithm describes what the timed calls chose (autotuned models).
    algorithm = case.algorithm() if callable(case.algorithm) else case.algorithm
    if case.op == "conv" and "fastconv" in timings:
        # What the timed calls ran (this thread's last fastconv call), not a prediction.
        algorithm = last_algorithms().get(_CONV_PASSES[case.direction], algorithm)
    ceilings = {name: max(rates) for name, rates in probe_rates.items() if rates}
    peak = None
    if peaks is not None:
        peak = {"GB/s": peaks.get("copy_gbps"), "GFLOP/s": peaks.get("fma_gflops")}.get(case.unit)
    impls = {}
    for name, t in timings.items():
        rate = case.work / t.best / 1e9
        err = errors.get(name)
        impls[name] = {
            "best_ms": t.best * 1e3,
            "median_ms": t.median * 1e3,
            "rate": rate,
            "pct_peak": (100.0 * rate / peak) if peak else None,
            "pct_ceilings": {c: 100.0 * rate / v for c, v in ceilings.items()},
            "max_err": err,
            "ok": None if err is None or case.tolerance is None else bool(err <= case.tolerance),
            "samples_ms": [s * 1e3 for s in t.samples],
            "speedup": {peer: pt.best / t.best for peer, pt in timings.items() if peer != name},
        }
    return {
        "op": case.op,
        "case": case.name,
        "direction": case.direction,
        "shape": case.shape,
        "algorithm": algorithm,
        "unit": case.unit,
        "work": case.work,
        "rounds": rounds,
        "tolerance": case.tolerance,
        "note": case.note,
        "ceilings": ceilings,
        "impls": impls,
        **case.extra,
    }


# =========================================================================== plans


def corpus_case(layer, direction: str, op: str, count: int, impls) -> Case:
    """A conv case of a corpus layer, reported under ``op``; the NumPy peer only when
    asked for (it costs minutes on the large layers)."""
    case = conv_case(layer, direction, impls=impls or ["fastconv", "torch"])
    case.op = op
    case.extra["count"] = count
    return case


def _match(names: Sequence[str], patterns: list[str] | None) -> list[str]:
    if not patterns:
        return list(names)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


@dataclass
class Plan:
    """Which cases to build, lazily: (label, builder) pairs."""

    items: list[tuple[str, Callable[[], Case]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _sized_for(layer, mode: str, smoke_hw: int):
    """A conv layer at the size a run mode times: 'quick' caps the batch at 2, 'smoke'
    runs one image of at most ``smoke_hw`` pixels a side."""
    if mode == "quick":
        return layer.reduced(batch=2)
    if mode == "smoke":
        return layer.reduced(batch=1, max_hw=smoke_hw)
    return layer


def corpus_sample(op: str, sample: int, seed: int) -> list[CorpusLayer]:
    """The layers a corpus op runs: for 'corpus', ``sample`` distinct network layers
    drawn with ``seed`` (0: every one); for 'random', ``sample`` random draws."""
    if op == "random":
        return random_layers(sample, seed)
    layers = corpus()
    if 0 < sample < len(layers):
        layers = random.Random(seed).sample(layers, sample)
    return layers


def build_plan(
    ops: Sequence[str],
    *,
    layers: list[str] | None = None,
    directions: list[str] | None = None,
    impls: list[str] | None = None,
    mode: str = "full",
    sample: int = 60,
    seed: int = 0,
    model_rounds: int | None = None,
) -> Plan:
    """The cases of ``ops`` filtered by case name patterns (``layers``) and directions.

    ``mode``: 'full' (the catalogue's shapes), 'quick' (conv batch <= 2, pool batch
    <= 4) or 'smoke' (tiny shapes, for tests). The corpus ops ('corpus', 'random') run
    ``sample`` layers chosen with ``seed`` (``corpus_sample``), fastconv and torch only
    unless ``impls`` says otherwise. The model ops ('torch', 'models') run
    ``model_rounds`` alternating rounds (default ``models.MODEL_ROUNDS`` of the mode);
    'quick' caps their batch at 8, 'smoke' runs the models under 64 pixels at batch 2
    at most.
    """
    plan = Plan()
    corpus_layers = {op: corpus_sample(op, sample, seed) for op in ops if op in CORPUS_OPS}
    all_names = list(GEMM_BY_NAME) + list(CONV_BY_NAME) + list(POOL_BY_NAME) + list(TRAIN_BY_NAME)
    all_names += [f"{call}_tiny" for call in OVERHEAD_CALLS]
    all_names += [entry.layer.name for entries in corpus_layers.values() for entry in entries]
    all_names += list(dict.fromkeys([*MODEL_BY_NAME, *ZOO_BY_NAME]))
    if layers:
        unknown = [p for p in layers if not _match(all_names, [p])]
        if unknown:
            raise ValueError(f"no case matches {', '.join(unknown)}; cases: {', '.join(all_names)}")
    for op in ops:
        if op == "gemm":
            for name in _match(list(GEMM_BY_NAME), layers):
                case = GEMM_BY_NAME[name]
                if mode == "smoke":
                    case = case.reduced(96)
                plan.items.append((f"gemm {name}", lambda c=case: gemm_case(c, impls=impls)))
        elif op == "conv":
            dirs = [d for d in CONV_DIRECTIONS if directions is None or d in directions]
            for name in _match(list(CONV_BY_NAME), layers):
                layer = _sized_for(CONV_BY_NAME[name], mode, smoke_hw=12)
                for d in dirs:
                    plan.items.append(
                        (f"conv {name} {d}", lambda ly=layer, d=d: conv_case(ly, d, impls=impls))
                    )
        elif op == "pool":
            dirs = [d for d in POOL_DIRECTIONS if directions is None or d in directions]
            for name in _match(list(POOL_BY_NAME), layers):
                case = POOL_BY_NAME[name]
                if mode == "quick":
                    case = case.reduced(batch=4)
                elif mode == "smoke":
                    case = case.reduced(batch=2, max_hw=16)
                for d in dirs:
                    plan.items.append(
                        (f"pool {name} {d}", lambda c=case, d=d: pool_case(c, d, impls=impls))
                    )
        elif op in CORPUS_OPS:
            dirs = [d for d in CONV_DIRECTIONS if directions is None or d in directions]
            chosen = [e for e in corpus_layers[op] if _match([e.layer.name], layers)]
            for entry in chosen:
                layer = _sized_for(entry.layer, mode, smoke_hw=8)
                for d in dirs:
                    plan.items.append(
                        (
                            f"{op} {layer.name} {d}",
                            lambda ly=layer, d=d, op=op, e=entry: corpus_case(
                                ly, d, op, e.count, impls
                            ),
                        )
                    )
        elif op == "overhead":
            for call in OVERHEAD_CALLS:
                if _match([f"{call}_tiny"], layers):
                    plan.items.append(
                        (f"overhead {call}", lambda c=call: overhead_case(c, impls=impls))
                    )
        elif op == "train":
            for name in _match(list(TRAIN_BY_NAME), layers):
                case = TRAIN_BY_NAME[name]
                if mode == "smoke":
                    case = case.reduced(batch=4)
                plan.items.append((f"train {name}", lambda c=case: train_case(c, impls=impls)))
        elif op in MODEL_OPS:
            dirs = [d for d in MODEL_DIRECTIONS if directions is None or d in directions]
            by_name = MODEL_BY_NAME if op == "torch" else ZOO_BY_NAME
            build_case = model_case if op == "torch" else zoo_case
            specs = [by_name[name] for name in _match(list(by_name), layers)]
            if mode == "smoke":
                specs = [spec for spec in specs if spec.image < 64]
            max_batch = {"full": None, "quick": 8, "smoke": 2}[mode]
            rounds = model_rounds or MODEL_ROUNDS[mode]
            for spec in specs:
                for d in dirs:
                    plan.items.append(
                        (
                            f"{op} {spec.name} {d}",
                            lambda s=spec, d=d, cap=max_batch, r=rounds, b=build_case: b(
                                s, d, impls=impls, max_batch=cap, rounds=r
                            ),
                        )
                    )
        else:
            choices = ", ".join(OPS + CORPUS_OPS + MODEL_OPS)
            raise ValueError(f"unknown op {op!r}: choose from {choices} or all")
    return plan


def run_plan(
    plan: Plan,
    *,
    rounds: int,
    min_sample_s: float,
    settle_s: float | None,
    peaks: dict,
    progress: bool = True,
) -> tuple[list[dict], list[str]]:
    """Build and run every case of ``plan`` in turn; returns (results, skipped reasons)."""
    results, skipped = [], list(plan.skipped)
    bar = Progress(len(plan.items), enabled=progress, unit="case", terminal_only=True)
    try:
        for label, build in plan.items:
            bar.describe(label)
            try:
                case = build()
            except LookupError as exc:
                skipped.append(f"{label}: {exc}")
                bar.step()
                continue
            results.append(
                run_case(
                    case, rounds=rounds, min_sample_s=min_sample_s, settle_s=settle_s, peaks=peaks
                )
            )
            del case
            bar.step()
    finally:
        bar.close()
    return results, skipped
