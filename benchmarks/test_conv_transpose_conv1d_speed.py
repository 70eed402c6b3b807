"""Smoke test of benchmarks/conv_transpose_conv1d_speed.py: its layer list and one round of
one small layer of each module kind, timed against torch (both clocks)."""

from __future__ import annotations

import time

import conv_transpose_conv1d_speed as speed
import pytest


def test_layer_list_covers_the_four_networks():
    groups = {layer.group for layer in speed.layers(quick=False)}
    assert groups == {"DCGAN generator", "U-Net decoder", "wav2letter", "TCN"}
    assert {layer.module for layer in speed.layers(quick=True)} == {"ConvTranspose2d", "Conv1d"}


@pytest.mark.parametrize("clock", [time.perf_counter, time.thread_time])
def test_one_round_of_small_layers(torch_peer, clock):
    small = [
        speed.Layer("g", "up", "ConvTranspose2d", (4, 2, 4, 2, 1), {}, (2, 4, 3, 3)),
        speed.Layer("g", "seq", "Conv1d", (3, 4, 3), dict(padding=2, dilation=2), (2, 3, 9)),
    ]
    for layer in small:
        result = speed.measure(layer, 1, torch_peer, clock)
        for times in result.values():
            assert times["ours"] > 0
            assert times["theirs"] > 0
            assert times["median_speedup"] > 0
