"""examples/unet_digits.py: the U-Net's explicit backward against finite differences, and
one training step of the example, which writes its PNG grid."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from nn_helpers import check_grads

from fastconv import nn

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "unet_digits.py"


def load_example():
    spec = importlib.util.spec_from_file_location("unet_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unet_backward_matches_finite_differences():
    example = load_example()
    nn.manual_seed(0)
    model = example.UNet(width=4).double()
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 8, 8))
    check_grads(model, x)


def test_one_training_step_writes_the_png(tmp_path, capsys):
    pytest.importorskip("sklearn")
    example = load_example()
    out = tmp_path / "grid.png"
    result = example.train(epochs=1, out=out, max_steps=1)
    assert np.isfinite(result["initial"])
    assert np.isfinite(result["final"])
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (12 * 34 + 2, 3 * 34 + 2)  # 12 digits x (clean, noisy, output)
    assert "test reconstruction MSE" in capsys.readouterr().out
