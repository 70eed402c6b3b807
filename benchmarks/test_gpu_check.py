"""``benchmarks/gpu_check.py --simulate``: the GPU check end to end under the CUDA
simulator (small shapes, no torch CUDA), so the one command meant for a GPU loan
cannot rot between loans."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def test_gpu_check_simulated_end_to_end(tmp_path):
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "gpu_check.py"), "--simulate", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in result["steps"]}
    assert {"build", "tests", "kernel cache", "device", "host overhead", "ops"} <= set(steps)
    assert all(s["ok"] for s in steps.values()), steps
    ops = {(r["case"], r["op"]) for r in result["ops"] if r["status"] == "ok"}
    # every kernel family: implicit GEMM and direct convolutions, GEMM, both poolings
    assert {("sim_3x3", "weight"), ("sim_dw", "input"), ("sgemm_33x20x17", "nn")} <= ops
    assert {("max_3x3s2", "forward"), ("avg_2x2s2", "forward")} <= ops
    assert "| sim_3x3 | forward |" in (tmp_path / "gpu_check.md").read_text()
