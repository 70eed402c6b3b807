"""benchmarks/fit_selector.py: collecting a tiny sample, scoring, and a fit that finds a
threshold planted in synthetic timings."""

from __future__ import annotations

import json
import math

import fit_selector
import pytest

from fastconv import _cpu, autotune


@pytest.fixture(autouse=True)
def built_in_thresholds():
    yield
    autotune.set_thresholds(**autotune.thresholds(defaults=True))


def test_collect_then_fit(tmp_path, capsys):
    out = tmp_path / "timings.json"
    args = ["collect", "--out", str(out), "--corpus", "2", "--random", "1"]
    fit_selector.main([*args, "--rounds", "1", "--max-gflop", "0.01"])
    data = json.loads(out.read_text())
    assert data["isa"] == _cpu.isa()
    assert len(data["records"]) == 3 * 3
    for record in data["records"]:
        assert record["times_ms"]
        assert "tapwise" not in record["times_ms"]
        assert fit_selector.chosen_algorithm(record) in record["times_ms"]
    fit_selector.main(["fit", str(out), "--worst", "2"])
    assert "held-out half" in capsys.readouterr().out
    assert autotune.thresholds() == autotune.thresholds(defaults=True)


def planted(width: int) -> dict:
    """A forward record on which implicit GEMM is twice as fast as direct."""
    return {
        "name": f"w{width}",
        "input_shape": [8, 64, width + 4, width + 4],
        "weight_shape": [64, 64, 5, 5],
        "stride": 1,
        "padding": 0,
        "groups": 1,
        "pass": "forward",
        "times_ms": {"direct": 2.0, "implicit_gemm": 1.0},
    }


def test_fit_finds_a_planted_threshold():
    # Direct loses below 11-wide outputs: the built-in 3 is wrong, and the fit must move
    # a threshold so that no record keeps a regret.
    records = [planted(width) for width in range(3, 11)]
    datasets = [(_cpu.isa(), records)]
    autotune.set_thresholds(**autotune.thresholds(defaults=True))
    before, _ = fit_selector.score(datasets)
    assert before == pytest.approx(2.0)
    fitted = fit_selector.fit_thresholds(datasets, min_gain=0.002)
    after, untimed = fit_selector.score(datasets)
    assert after == pytest.approx(1.0)
    assert untimed == 0
    assert fitted != autotune.thresholds(defaults=True)
    assert math.isclose(fit_selector.score([(_cpu.isa(), records[:0])])[0], 1.0)
