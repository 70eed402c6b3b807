"""Fit the conv selectors' thresholds to timings of every algorithm on a corpus sample.

Two steps, each a subcommand:

``collect`` times, for every layer of a sample and each pass (forward, input gradient,
weight gradient), every algorithm that can run it (tapwise, the exact path for
far-reaching windows and non-finite operands, is not a contender). The algorithms of
one problem alternate in rounds and each keeps its median, so the machine's drift hits
them alike. The sample: ``--corpus N`` layers drawn from ``fastconv.bench.corpus``
(every network at batch 1, 8 and 32) and ``--random N`` from its written-down random
distribution, each at most ``--max-gflop``. The timings go to a JSON file with the
machine, ISA tier and thread count.

``fit`` reads one or more such files and scores the selectors on them: a problem's
regret is the time of the algorithm the selector picks over the fastest one's, and the
score is the geometric mean regret. Layers are split in two halves (alternating by
position); each threshold in turn tries a grid of values on the first half, keeping a
value that lowers the score by more than ``--min-gain``, and both halves are scored
before and after, so a value fitted to noise shows as no gain on the second half. It
prints the thresholds whose fitted value differs from the built-in one; the built-in
values (``csrc/conv2d/conv2d.cpp``, ConvTuning) are changed by hand from that table.

    python benchmarks/fit_selector.py collect --out mine.json --seed 3
    FASTCONV_ISA=avx2 python benchmarks/fit_selector.py collect --out mine_avx2.json --seed 4
    python benchmarks/fit_selector.py fit benchmarks/selector_timings/*.json mine*.json

``benchmarks/selector_timings/`` holds the samples the built-in values were judged on
(machine, tier and seed in each file's name and header).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np

import fastconv
from fastconv import _cpu, autotune
from fastconv.bench import corpus

PASSES = ("forward", "input", "weight")
NOT_CONTENDERS = {"tapwise"}


def sample_layers(corpus_count: int, random_count: int, seed: int, max_gflop: float):
    rng = random.Random(seed)
    pool = [entry for entry in corpus.corpus() if entry.gflop <= max_gflop]
    drawn = rng.sample(pool, min(corpus_count, len(pool)))
    drawn += corpus.random_layers(random_count, seed=seed, max_gflop=max_gflop)
    return [entry.layer for entry in drawn]


def _layer_record(layer) -> dict:
    return {
        "name": layer.name,
        "input_shape": list(layer.input_shape),
        "weight_shape": list(layer.weight_shape),
        "stride": layer.stride,
        "padding": layer.pad,
        "groups": layer.groups,
    }


def _runners(record: dict, rng: np.random.Generator):
    """Per pass: (the algorithms it offers, a function running one of them)."""
    kwargs = {"stride": record["stride"], "padding": record["padding"], "groups": record["groups"]}
    x = rng.standard_normal(record["input_shape"], dtype=np.float32)
    w = rng.standard_normal(record["weight_shape"], dtype=np.float32)
    y = fastconv.conv2d(x, w, **kwargs)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    return {
        "forward": (
            _cpu.conv2d_algorithms(),
            lambda a: fastconv.conv2d(x, w, **kwargs, algorithm=a),
        ),
        "input": (
            _cpu.conv2d_input_algorithms(),
            lambda a: fastconv.conv2d_input(x.shape, w, gy, **kwargs, algorithm=a),
        ),
        "weight": (
            _cpu.conv2d_weight_algorithms(),
            lambda a: fastconv.conv2d_weight(x, w.shape, gy, **kwargs, algorithm=a),
        ),
    }


def time_pass(algorithms, run, rounds: int) -> dict[str, float]:
    """Median ms per algorithm over ``rounds`` alternating rounds (after one untimed run
    each); algorithms that refuse the problem are left out."""
    runnable = []
    for algorithm in algorithms:
        if algorithm in NOT_CONTENDERS:
            continue
        try:
            run(algorithm)
        except ValueError:
            continue
        runnable.append(algorithm)
    samples: dict[str, list[float]] = {a: [] for a in runnable}
    for _ in range(rounds):
        for algorithm in runnable:
            start = time.perf_counter()
            run(algorithm)
            samples[algorithm].append((time.perf_counter() - start) * 1e3)
    return {a: statistics.median(t) for a, t in samples.items()}


def collect(args) -> None:
    layers = sample_layers(args.corpus, args.random, args.seed, args.max_gflop)
    rng = np.random.default_rng(args.seed)
    records = []
    started = time.perf_counter()
    for i, layer in enumerate(layers):
        record = _layer_record(layer)
        runners = _runners(record, rng)
        for pass_name in PASSES:
            algorithms, run = runners[pass_name]
            times = time_pass(algorithms, run, args.rounds)
            records.append({**record, "pass": pass_name, "times_ms": times})
        print(f"[{i + 1}/{len(layers)}] {layer.name}: {time.perf_counter() - started:.0f} s")
    data = {
        "machine": platform.processor() or platform.machine(),
        "isa": _cpu.isa(),
        "threads": _cpu.get_num_threads(),
        "precision": fastconv.get_float32_conv_precision(),
        "sample": {
            "corpus": args.corpus,
            "random": args.random,
            "seed": args.seed,
            "max_gflop": args.max_gflop,
            "rounds": args.rounds,
        },
        "records": records,
    }
    Path(args.out).write_text(json.dumps(data, indent=0) + "\n")
    print(f"{len(records)} problems -> {args.out}")


PLANNERS = {
    "forward": fastconv.conv2d_algorithm,
    "input": fastconv.conv2d_input_algorithm,
    "weight": fastconv.conv2d_weight_algorithm,
}


def chosen_algorithm(record: dict) -> str:
    return PLANNERS[record["pass"]](
        record["input_shape"],
        record["weight_shape"],
        record["stride"],
        record["padding"],
        groups=record["groups"],
    )


def log_regret(record: dict) -> float | None:
    """log(time of the selector's pick / the fastest time), None if the pick was not timed."""
    times = record["times_ms"]
    picked = times.get(chosen_algorithm(record))
    return None if picked is None else math.log(picked / min(times.values()))


def score(datasets) -> tuple[float, int]:
    """Geometric mean regret over every (ISA tier, record), and how many records the
    selector sent to an algorithm that was not timed (counted as no regret)."""
    total, count, untimed = 0.0, 0, 0
    for isa, records in datasets:
        with _cpu.use_isa(isa):
            for record in records:
                regret = log_regret(record)
                if regret is None:
                    untimed += 1
                    continue
                total += regret
                count += 1
    return math.exp(total / max(count, 1)), untimed


def candidate_values(current: int) -> list[int]:
    values = {0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32}
    values |= {current + step for step in (-2, -1, 1, 2) if current + step >= 0}
    values |= {round(current * 2**k) for k in range(-4, 5)}
    return sorted(values)


def halves(datasets):
    first, second = [], []
    for isa, records in datasets:
        by_layer: dict[tuple, list[dict]] = {}
        for record in records:
            key = (record["name"], *record["input_shape"], *record["weight_shape"])
            by_layer.setdefault(key, []).append(record)
        groups = list(by_layer.values())
        first.append((isa, [r for group in groups[0::2] for r in group]))
        second.append((isa, [r for group in groups[1::2] for r in group]))
    return first, second


def fit_thresholds(datasets, min_gain: float) -> dict[str, int]:
    """Coordinate descent from the built-in values: each threshold in turn takes the grid
    value with the lowest score, if it beats the current one by more than min_gain."""
    fitted = autotune.thresholds(defaults=True)
    autotune.set_thresholds(**fitted)
    for name in fitted:
        best_value, best_score = fitted[name], score(datasets)[0]
        for value in candidate_values(fitted[name]):
            autotune.set_thresholds(**{name: value})
            trial = score(datasets)[0]
            if trial < best_score * (1 - min_gain):
                best_value, best_score = value, trial
        fitted[name] = best_value
        autotune.set_thresholds(**{name: best_value})
    return fitted


def load_datasets(paths):
    datasets = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if data["isa"] not in _cpu.isa_tiers():
            raise SystemExit(f"{path}: measured on {data['isa']}, which this CPU cannot run")
        if data["threads"] != _cpu.get_num_threads():
            print(f"note: {path} was measured on {data['threads']} threads")
        datasets.append((data["isa"], data["records"]))
    return datasets


def fit(args) -> None:
    datasets = load_datasets(args.files)
    fit_half, check_half = halves(datasets)
    defaults = autotune.thresholds(defaults=True)
    try:
        autotune.set_thresholds(**defaults)
        before = (score(fit_half), score(check_half), score(datasets))
        fitted = fit_thresholds(fit_half, args.min_gain)
        after = (score(fit_half), score(check_half), score(datasets))
    finally:
        autotune.set_thresholds(**defaults)
    print("geometric mean regret (selector's pick / fastest), built-in -> fitted:")
    for label, b, a in zip(("fitted half", "held-out half", "all"), before, after):
        print(f"  {label:14s} {b[0]:.4f} -> {a[0]:.4f}  ({a[1]} picks untimed)")
    changed = {name: value for name, value in fitted.items() if value != defaults[name]}
    print("thresholds that moved:" if changed else "every threshold keeps its built-in value")
    for name, value in changed.items():
        print(f"  {name}: {defaults[name]} -> {value}")
    if args.worst:
        print(f"worst {args.worst} problems under the built-in thresholds:")
        rows = []
        for isa, records in datasets:
            with _cpu.use_isa(isa):
                for record in records:
                    regret = log_regret(record)
                    if regret is not None:
                        rows.append((regret, isa, record, chosen_algorithm(record)))
        for regret, isa, record, picked in sorted(rows, key=lambda row: -row[0])[: args.worst]:
            fastest = min(record["times_ms"], key=record["times_ms"].get)
            print(
                f"  {math.exp(regret):5.2f}x {isa:8s} {record['pass']:7s} {record['name']}: "
                f"{picked} {record['times_ms'][picked]:.3f} ms, "
                f"{fastest} {record['times_ms'][fastest]:.3f} ms"
            )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    take = commands.add_parser("collect", help="time every algorithm on a corpus sample")
    take.add_argument("--out", required=True)
    take.add_argument("--corpus", type=int, default=120, help="corpus layers (default 120)")
    take.add_argument("--random", type=int, default=60, help="random layers (default 60)")
    take.add_argument("--seed", type=int, default=0)
    take.add_argument("--max-gflop", type=float, default=2.0)
    take.add_argument("--rounds", type=int, default=5)
    score_them = commands.add_parser("fit", help="fit the thresholds to collected timings")
    score_them.add_argument("files", nargs="+")
    score_them.add_argument("--min-gain", type=float, default=0.002)
    score_them.add_argument("--worst", type=int, default=10)
    args = parser.parse_args(argv)
    if args.command == "collect":
        collect(args)
    else:
        fit(args)


if __name__ == "__main__":
    main()
