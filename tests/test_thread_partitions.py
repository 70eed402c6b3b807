"""Tests that threads cannot fool: every parallel kernel family on problems above its
threading threshold, with sizes that no thread count divides evenly, run at 1, 2 and 3
threads -- each thread count in a fresh process, so that no workspace a kernel keeps
for its next call is already warm -- and compared:

- against the NumPy reference (float64), at every thread count;
- against one thread: bit for bit where the results are documented to be the same
  whatever the thread count (pooling, GEMM, batch norm), within the reference's
  tolerance otherwise (convolutions: per-thread partial sums);
- against a second run in the same process: bit for bit (every kernel is deterministic
  for a fixed thread count, warm workspaces included).

A kernel that splits work as ``C / threads`` and drops the remainder, skips a thread's
partial sum, or reads a stale workspace fails here. The cases are in ``thread_cases``.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from helpers import assert_close_scaled, run_python
from thread_cases import CASES, THREAD_COUNTS, conv_pass_name

pytestmark = pytest.mark.slow


def _status(code: int) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exited with status {code}"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{threads: (notes, {case: [run][result]})}, one fresh process per thread count."""
    folder = tmp_path_factory.mktemp("threads")
    found = {}
    for threads in THREAD_COUNTS:
        path = folder / f"{threads}.npz"
        repeats = 1 if threads == 1 else 2
        child = run_python(
            f"import thread_cases; thread_cases.main({threads}, {str(path)!r}, {repeats})",
            timeout=600,
        )
        if child.returncode != 0:
            pytest.fail(
                f"the process running the cases at {threads} threads {_status(child.returncode)}"
                f":\n{child.stderr[-3000:]}"
            )
        with np.load(path) as saved:
            notes = json.loads(str(saved["notes"]))
            arrays = {tuple(key.split("|")): saved[key] for key in saved.files if key != "notes"}
        runs: dict[str, list[list[np.ndarray]]] = {}
        for name, run, i in sorted(arrays, key=lambda key: (key[0], int(key[1]), int(key[2]))):
            per_run = runs.setdefault(name, [[] for _ in range(repeats)])
            per_run[int(run)].append(arrays[name, run, i])
        found[threads] = (notes, runs)
    return found


def _tolerance_c(name: str) -> float:
    # Winograd's transforms round more than a dot product (README: within 1e-5 of the
    # largest value on the layer set); everything else within 2 * K * eps * max|ref|.
    return 16.0 if "winograd" in name else 2.0


def _assert_close(actual, expected, case, name, what):
    if np.issubdtype(np.asarray(expected).dtype, np.integer):
        np.testing.assert_array_equal(actual, expected, err_msg=f"{name}: {what}")
        return
    assert_close_scaled(actual, expected, k=case.k, c=_tolerance_c(name), err_msg=f"{name}: {what}")


def _assert_bitwise(actual, expected, name, what):
    assert len(actual) == len(expected), f"{name}: {what}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == e.dtype, f"{name}: {what}, result {i}"
        assert a.shape == e.shape, f"{name}: {what}, result {i}"
        if a.tobytes() != e.tobytes():
            differ = int((a != e).sum()) if a.shape == e.shape else a.size
            pytest.fail(f"{name}: {what}: result {i} differs in {differ} of {a.size} elements")


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(results, name):
    case = CASES[name]
    assert (
        case.work >= max(THREAD_COUNTS) * case.grain
    ), f"{name} is below the threshold at which {max(THREAD_COUNTS)} threads split the work"
    expected = case.expected()
    one = None
    for threads in THREAD_COUNTS:
        notes, runs = results[threads]
        note = notes[name]
        assert "refused" not in note, f"{name}: {note.get('refused')}"
        if conv_pass_name(case.family):
            assert note["ran"] == case.algorithm, f"{name} ran {note['ran']}"
        first = runs[name][0]
        assert len(first) == len(expected), name
        for i, (a, e) in enumerate(zip(first, expected)):
            _assert_close(a, e, case, name, f"{threads} threads vs the reference, result {i}")
        for again in runs[name][1:]:
            _assert_bitwise(again, first, name, f"{threads} threads, a second run")
        if threads == 1:
            one = first
        elif case.bitwise:
            _assert_bitwise(first, one, name, f"{threads} threads vs 1")
        else:
            for i, (a, e) in enumerate(zip(first, one)):
                _assert_close(a, e, case, name, f"{threads} threads vs 1, result {i}")


def test_every_algorithm_of_every_conv_pass_is_covered():
    import fastconv

    covered = {(c.family, c.algorithm) for c in CASES.values() if c.algorithm}
    for family, names in (
        ("conv2d forward", fastconv.CONV2D_ALGORITHMS),
        ("conv2d input", fastconv.CONV2D_INPUT_ALGORITHMS),
        ("conv2d weight", fastconv.CONV2D_WEIGHT_ALGORITHMS),
    ):
        missing = {n for n in names if (family, n) not in covered}
        assert not missing, f"{family}: no case for {sorted(missing)}"
    families = {c.family for c in CASES.values()}
    assert {"pooling", "gemm", "batch_norm"} <= families


def test_batch_norm_has_a_case_the_remainder_split_would_fail():
    """Above the 2**17 elements where 2 threads split channels, C odd for 2 and 3."""
    shapes = [
        CASES[name].inputs()["x"].shape for name in CASES if name.startswith("batch_norm train")
    ]
    assert any(int(np.prod(s)) > 2**17 and s[1] % 2 and s[1] % 3 for s in shapes)
