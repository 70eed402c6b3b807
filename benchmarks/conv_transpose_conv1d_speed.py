"""fastconv's ConvTranspose2d and Conv1d layers against torch's, in one process, alternating.

    python benchmarks/conv_transpose_conv1d_speed.py [--threads 2] [--reps 7] [--quick]
    python benchmarks/conv_transpose_conv1d_speed.py --threads 1 --clock cpu

The layers of a DCGAN generator (batch 16, 100-d noise to 64x64 RGB), of a U-Net decoder's
up-convolutions (batch 1, 8x8x1024 up to 128x128x64), of wav2letter (batch 2, 161 mel
features, about 200 frames after its strided first layer) and of a TCN (batch 8, 128
channels, 1024 steps, kernel 3, dilations 1..64, causal padding). Per layer the forward
pass alone, and forward + backward (input and weight gradients, the bias's where the
layer has one) through the modules, as training runs them; fastconv and torch alternate
call by call on the same arrays and weights over ``--reps`` rounds (one warm-up round
first). The times are each side's best round: on a shared machine a round that the
scheduler interrupts is slower by a time slice, whatever ran, so the best round is the
layer's own cost; the median rounds' speedup is shown too. On a machine busy enough
that every round is interrupted, ``--threads 1 --clock cpu`` times the calling thread's
CPU time instead (both libraries run a one-thread call on the calling thread), which
the scheduler's interruptions do not count. Prints a markdown table and each group's
geometric mean of torch time / fastconv time (above 1: fastconv is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np

import fastconv
from fastconv import nn


@dataclass(frozen=True)
class Layer:
    group: str
    name: str
    module: str  # "ConvTranspose2d" or "Conv1d"
    args: tuple  # the module's positional arguments
    kwargs: dict
    input_shape: tuple


def _dcgan() -> list[Layer]:
    # Radford et al.'s generator: 100-d noise -> 4x4x512 -> ... -> 64x64x3, no bias (BN follows)
    specs = [(100, 512, 1, 0, 1), (512, 256, 2, 1, 4), (256, 128, 2, 1, 8), (128, 64, 2, 1, 16)]
    specs.append((64, 3, 2, 1, 32))
    return [
        Layer(
            "DCGAN generator",
            f"{c_in}->{c_out} {size}x{size}",
            "ConvTranspose2d",
            (c_in, c_out, 4, stride, pad),
            dict(bias=False),
            (16, c_in, size, size),
        )
        for c_in, c_out, stride, pad, size in specs
    ]


def _unet() -> list[Layer]:
    # Ronneberger et al.'s up-convolutions: 2x2, stride 2, halving the channels
    return [
        Layer(
            "U-Net decoder",
            f"{c}->{c // 2} {size}x{size}",
            "ConvTranspose2d",
            (c, c // 2, 2, 2),
            {},
            (1, c, size, size),
        )
        for c, size in ((1024, 8), (512, 16), (256, 32), (128, 64))
    ]


def _wav2letter() -> list[Layer]:
    # Collobert et al.: a strided 48-wide layer, 250-channel 7-wide layers, a 32-wide layer
    # to 2000 channels and 1x1 layers; 161 input features
    return [
        Layer("wav2letter", "161->250 k48 s2", "Conv1d", (161, 250, 48, 2, 23), {}, (2, 161, 400)),
        Layer("wav2letter", "250->250 k7", "Conv1d", (250, 250, 7), dict(padding=3), (2, 250, 200)),
        Layer(
            "wav2letter",
            "250->2000 k32",
            "Conv1d",
            (250, 2000, 32),
            dict(padding=16),
            (2, 250, 200),
        ),
        Layer("wav2letter", "2000->2000 k1", "Conv1d", (2000, 2000, 1), {}, (2, 2000, 201)),
        Layer("wav2letter", "2000->29 k1", "Conv1d", (2000, 29, 1), {}, (2, 2000, 201)),
    ]


def _tcn() -> list[Layer]:
    # Bai et al.'s temporal conv net: dilated causal convs (padding (k-1)*d, the tail dropped)
    return [
        Layer(
            "TCN",
            f"128->128 k3 d{d}",
            "Conv1d",
            (128, 128, 3),
            dict(padding=2 * d, dilation=d),
            (8, 128, 1024),
        )
        for d in (1, 2, 4, 8, 16, 32, 64)
    ]


def layers(quick: bool) -> list[Layer]:
    every = _dcgan() + _unet() + _wav2letter() + _tcn()
    if not quick:
        return every
    keep = {"512->256 4x4", "128->64 16x16", "256->128 32x32", "250->250 k7", "128->128 k3 d4"}
    return [layer for layer in every if layer.name in keep]


def _pair(layer: Layer, torch):
    """The fastconv module and torch's with the same float32 weights, and an input."""
    nn.manual_seed(0)
    ours = getattr(nn, layer.module)(*layer.args, **layer.kwargs)
    theirs = getattr(torch.nn, layer.module)(*layer.args, **layer.kwargs)
    theirs.load_state_dict(nn.to_torch_state_dict(ours.state_dict()))
    x = np.random.default_rng(0).standard_normal(layer.input_shape).astype(np.float32)
    return ours, theirs, x


def _alternate(ours, theirs, reps: int, clock=time.perf_counter) -> dict[str, float]:
    """Best and median seconds of each side over ``reps`` alternating rounds."""
    ours(), theirs()  # warm-up: first-call allocations and caches on both sides
    ours_times, theirs_times = [], []
    for _ in range(reps):
        start = clock()
        ours()
        ours_times.append(clock() - start)
        start = clock()
        theirs()
        theirs_times.append(clock() - start)
    return dict(
        ours=min(ours_times),
        theirs=min(theirs_times),
        median_speedup=statistics.median(theirs_times) / statistics.median(ours_times),
    )


def measure(layer: Layer, reps: int, torch, clock=time.perf_counter) -> dict:
    ours, theirs, x = _pair(layer, torch)
    xt = torch.from_numpy(x)
    g = np.random.default_rng(1).standard_normal(ours(x).shape).astype(np.float32)
    gt = torch.from_numpy(g)
    ours.clear_saved()

    def ours_forward():
        with nn.no_grad():
            ours(x)

    def theirs_forward():
        with torch.no_grad():
            theirs(xt)

    def ours_train():
        ours.zero_grad()
        ours(x)
        ours.backward(g)

    xt_grad = xt.clone().requires_grad_(True)

    def theirs_train():
        theirs.zero_grad()
        xt_grad.grad = None
        theirs(xt_grad).backward(gt)

    forward = _alternate(ours_forward, theirs_forward, reps, clock)
    train = _alternate(ours_train, theirs_train, reps, clock)
    return dict(forward=forward, train=train)


def _geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="five layers, for a smoke run")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: the calling thread's CPU time (with --threads 1 only)",
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu counts the calling thread only: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    import torch

    fastconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(
        f"fastconv {fastconv.__version__} ({fastconv._cpu.isa()}), torch {torch.__version__}, "
        f"{args.threads} thread(s), float32, {args.clock} clock, best (median) of "
        f"{args.reps} alternating rounds\n"
    )
    print(
        "| layer | input | fwd fastconv ms | fwd torch ms | fwd speedup (median) "
        "| fwd+bwd fastconv ms | fwd+bwd torch ms | fwd+bwd speedup (median) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    speedups: dict[str, list[float]] = {}
    for layer in layers(args.quick):
        result = measure(layer, args.reps, torch, clock)
        cells = []
        for pass_ in ("forward", "train"):
            times = result[pass_]
            speedup = times["theirs"] / times["ours"]
            speedups.setdefault(layer.group, []).append(speedup)
            cells.append(
                f"{times['ours'] * 1e3:.2f} | {times['theirs'] * 1e3:.2f} "
                f"| {speedup:.2f}x ({times['median_speedup']:.2f}x)"
            )
        shape = "x".join(map(str, layer.input_shape))
        print(f"| {layer.group}: {layer.name} | {shape} | {cells[0]} | {cells[1]} |", flush=True)
    print()
    for group, values in speedups.items():
        print(f"{group}: geomean speedup {_geomean(values):.2f}x (fwd and fwd+bwd rows)")


if __name__ == "__main__":
    main()
