"""Opt-in autotuning: what it times, what it caches, and that a cached choice is used."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fastconv
from fastconv import autotune, nn, reference

SHAPE, WEIGHT = (4, 32, 14, 14), (32, 32, 3, 3)


@pytest.fixture(autouse=True)
def tuning():
    autotune.clear()
    autotune.set_enabled(True)
    yield
    autotune.set_enabled(False)
    autotune.clear()


def data(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE).astype(dtype)
    w = rng.standard_normal(WEIGHT).astype(dtype)
    return x, w


def test_off_by_default_in_a_fresh_process():
    from helpers import run_python

    child = run_python("import fastconv; print(fastconv.get_conv_autotune())")
    assert child.stdout.strip() == "False", child.stderr


def test_set_enabled_takes_a_bool():
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fastconv.set_conv_autotune(1)
    assert fastconv.get_conv_autotune()


def test_first_call_times_every_candidate_then_runs_the_winner():
    x, w = data()
    y = fastconv.conv2d(x, w, padding=1)
    gx = fastconv.conv2d_input(x.shape, w, y, padding=1)
    gw = fastconv.conv2d_weight(x, w.shape, y, padding=1)
    ran = fastconv.last_algorithms()
    tuned = {e["pass"]: e for e in autotune.entries()}
    assert set(tuned) == {"conv2d", "conv2d_input", "conv2d_weight"}
    forward = tuned["conv2d"]
    assert {"direct", "implicit_gemm", "winograd"} <= set(forward["times_ms"])
    assert "pointwise_gemm" not in forward["times_ms"]  # refused: not 1x1
    assert forward["selector"] == fastconv.conv2d_algorithm(SHAPE, WEIGHT, padding=1)
    for name, entry in tuned.items():
        assert ran[name] == entry["algorithm"]
        assert all(t > 0 for t in entry["times_ms"].values())
        assert entry["threads"] == fastconv.get_num_threads()
        assert entry["isa"] == fastconv._cpu.isa()
        assert entry["precision"] == "high"
    # The winner's results, bit for bit, and right.
    assert y.tobytes() == fastconv.conv2d(x, w, padding=1, algorithm=ran["conv2d"]).tobytes()
    forced = fastconv.conv2d_input(x.shape, w, y, padding=1, algorithm=ran["conv2d_input"])
    assert gx.tobytes() == forced.tobytes()
    forced = fastconv.conv2d_weight(x, w.shape, y, padding=1, algorithm=ran["conv2d_weight"])
    assert gw.tobytes() == forced.tobytes()
    want = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    assert np.abs(y - want).max() <= 1e-4 * np.abs(want).max()


def test_a_cached_problem_is_not_timed_again(monkeypatch):
    x, w = data()
    first = fastconv.conv2d(x, w, padding=1)

    def no_timing():
        raise AssertionError("a cached problem was timed again")

    monkeypatch.setattr(autotune.time, "perf_counter", no_timing)
    again = fastconv.conv2d(data(seed=1)[0], w, padding=1)  # same problem, other data
    assert again.shape == first.shape
    assert len(autotune.entries()) == 1


def test_the_key_holds_threads_dtype_and_precision(threads):
    threads(2)
    default_threads = 2
    x, w = data()
    fastconv.conv2d(x, w, padding=1)
    threads(1)
    fastconv.conv2d(x, w, padding=1)
    fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    with fastconv.float32_conv_precision("highest"):
        fastconv.conv2d(x, w, padding=1)
    entries = autotune.entries()
    assert len(entries) == 4
    keys = {(e["threads"], e["dtype"], e["precision"]) for e in entries}
    assert keys == {
        (default_threads, "float32", "high"),
        (1, "float32", "high"),
        (1, "float64", "high"),
        (1, "float32", "highest"),
    }
    highest = [e for e in entries if e["precision"] == "highest"]
    assert len(highest) == 1
    assert not any("winograd" in name for name in highest[0]["times_ms"])


def test_non_finite_weights_are_not_tuned():
    x, w = data()
    w[0, 0, 0, 0] = np.inf
    fastconv.conv2d(x, w, padding=1)
    assert fastconv.last_algorithms()["conv2d"] == "tapwise"
    assert autotune.entries() == []


def test_save_and_load(tmp_path, monkeypatch):
    x, w = data()
    y = fastconv.conv2d(x, w, padding=1)
    fastconv.conv2d_input(x.shape, w, y, padding=1)
    path = tmp_path / "tuned.json"
    autotune.save(path)
    saved = autotune.entries()
    autotune.clear()
    assert autotune.load(path) == 2
    assert sorted(map(json.dumps, autotune.entries())) == sorted(map(json.dumps, saved))
    monkeypatch.setattr(autotune.time, "perf_counter", lambda: 1 / 0)  # no tuning now
    fastconv.conv2d(x, w, padding=1)
    assert fastconv.last_algorithms()["conv2d"] == saved[0]["algorithm"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not an autotune cache"),
        ('{"a": 1}', "expected a list"),
        ("[{}]", "entry 0 is not an autotune entry"),
    ],
)
def test_load_refuses_what_is_not_a_cache(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        autotune.load(path)


def test_load_refuses_unknown_algorithms(tmp_path):
    x, w = data()
    fastconv.conv2d(x, w, padding=1)
    (entry,) = autotune.entries()
    entry["algorithm"] = "fft"
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match="unknown algorithm 'fft'"):
        autotune.load(path)


def test_the_layer_library_is_tuned():
    nn.manual_seed(0)
    layer = nn.Conv2d(32, 32, 3, padding=1)
    x, _ = data()
    out = layer(x)
    layer.backward(np.ones_like(out))
    assert {e["pass"] for e in autotune.entries()} == {"conv2d", "conv2d_input", "conv2d_weight"}
