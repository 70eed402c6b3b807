"""The shape corpus: every conv layer of whole networks, and random draws.

The layer table (``catalogue.CONV_LAYERS``) is a quick sample of large early layers.
Whole networks also run late-stage layers (planes of 7x7 down to 1x1 with 256-2048
channels), strided, grouped and depthwise layers, and batch 1; a speed claim is judged
on all of them. ``network_layers`` lists each network's conv layers at an input
resolution, ``corpus`` puts them at several batch sizes and removes repeats, and
``random_layers`` draws layers from the distribution written down in its docstring.

Networks (torchvision's layouts where torchvision has the net; CIFAR variants use a
3x3 stride-1 stem and no max-pool, as the CIFAR literature does):
  lenet5 (32), alexnet (224), vgg11 / vgg16 (224, 32), resnet18 / resnet34 / resnet50
  (224, 32), mobilenet_v2 (224, 32), resnet20 / resnet56 (32, 16/32/64 channels),
  googlenet (224: the stem and the nine inception modules, 1x1/3x3/5x5 branches),
  efficientnet_b0 (224, 32: MBConv stacks with depthwise 3x3/5x5, stride 2, and the
  squeeze-excitation 1x1 convs on 1x1 planes).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from ..geometry import conv_output_size
from .catalogue import ConvLayer

__all__ = [
    "BATCHES",
    "NETWORKS",
    "CorpusLayer",
    "corpus",
    "network_layers",
    "random_layers",
]

BATCHES = (1, 8, 32)


@dataclass(frozen=True)
class CorpusLayer:
    """A conv layer of the corpus: the layer (batch included) and where it comes from."""

    layer: ConvLayer
    source: str  # e.g. "resnet18@32 layer3.0.conv1", or "random #12"
    count: int = 1  # how many layers of the corpus have exactly this shape

    @property
    def gflop(self) -> float:
        return self.layer.flops / 1e9


class _Net:
    """Collects a network's conv layers while tracking the plane size, as its forward does."""

    def __init__(self, name: str, size: int, channels: int = 3) -> None:
        self.name, self.size, self.channels = name, size, channels
        self.layers: list[tuple[str, ConvLayer]] = []

    def conv(self, label, k, r, stride=1, pad=None, groups=1, c=None, size=None, keep=False):
        """Add a conv from ``c`` (default: the current channels) at ``size`` (default: the
        current plane); unless ``keep``, the net's plane and channels become its output's."""
        c = self.channels if c is None else c
        h = self.size if size is None else size
        pad = r // 2 if pad is None else pad
        layer = ConvLayer(f"{self.name} {label}", 1, c, h, k, r, stride, pad, groups)
        self.layers.append((label, layer))
        if not keep:
            self.channels, self.size = k, layer.out_hw
        return layer.out_hw

    def pool(self, kernel=3, stride=2, pad=1, ceil=False) -> None:
        span = self.size + 2 * pad - kernel
        self.size = (-(-span // stride) if ceil else span // stride) + 1


def _lenet5(size: int) -> _Net:
    net = _Net(f"lenet5@{size}", size, 1)
    net.conv("conv1", 6, 5, pad=0)
    net.pool(2, 2, 0)
    net.conv("conv2", 16, 5, pad=0)
    return net


def _alexnet(size: int) -> _Net:
    net = _Net(f"alexnet@{size}", size)
    net.conv("features.0", 64, 11, 4, 2)
    net.pool(3, 2, 0)
    net.conv("features.3", 192, 5, 1, 2)
    net.pool(3, 2, 0)
    for i, k in ((6, 384), (8, 256), (10, 256)):
        net.conv(f"features.{i}", k, 3)
    return net


_VGG = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
}


def _vgg(depth: str, size: int) -> _Net:
    net = _Net(f"{depth}@{size}", size)
    for i, v in enumerate(_VGG[depth]):
        if v == "M":
            net.pool(2, 2, 0)
        else:
            net.conv(f"features.{i}", v, 3)
    return net


def _resnet(depth: int, size: int) -> _Net:
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
    net = _Net(f"resnet{depth}@{size}", size)
    if size >= 64:
        net.conv("conv1", 64, 7, 2, 3)
        net.pool()
    else:
        net.conv("conv1", 64, 3)
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), 1):
        for b in range(count):
            stride = 2 if stage > 1 and b == 0 else 1
            name = f"layer{stage}.{b}"
            c_in, h_in = net.channels, net.size
            if depth == 50:
                out = width * 4
                net.conv(f"{name}.conv1", width, 1)
                net.conv(f"{name}.conv2", width, 3, stride)
                net.conv(f"{name}.conv3", out, 1)
            else:
                out = width
                net.conv(f"{name}.conv1", width, 3, stride)
                net.conv(f"{name}.conv2", width, 3)
            if stride != 1 or c_in != out:
                net.conv(f"{name}.downsample.0", out, 1, stride, c=c_in, size=h_in, keep=True)
    return net


def _cifar_resnet(depth: int) -> _Net:
    count = (depth - 2) // 6
    net = _Net(f"resnet{depth}@32", 32)
    net.conv("conv1", 16, 3)
    for stage, width in enumerate((16, 32, 64), 1):
        for b in range(count):
            stride = 2 if stage > 1 and b == 0 else 1
            c_in, h_in = net.channels, net.size
            net.conv(f"layer{stage}.{b}.conv1", width, 3, stride)
            net.conv(f"layer{stage}.{b}.conv2", width, 3)
            if stride != 1:
                net.conv(f"layer{stage}.{b}.shortcut", width, 1, 2, c=c_in, size=h_in, keep=True)
    return net


def _mobilenet_v2(size: int) -> _Net:
    # (expansion, out channels, repeats, stride); CIFAR: stem and second stage stride 1
    settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
    settings += ((6, 160, 3, 2), (6, 320, 1, 1))
    cifar = size < 64
    net = _Net(f"mobilenet_v2@{size}", size)
    net.conv("features.0", 32, 3, 1 if cifar else 2)
    index = 1
    for stage, (t, c, n, s) in enumerate(settings):
        for i in range(n):
            stride = s if i == 0 else 1
            if cifar and stage == 1:
                stride = 1
            hidden = net.channels * t
            name = f"features.{index}.conv"
            if t != 1:
                net.conv(f"{name}.0", hidden, 1)
            net.conv(f"{name}.dw", hidden, 3, stride, groups=hidden)
            net.conv(f"{name}.project", c, 1)
            index += 1
    net.conv(f"features.{index}", 1280, 1)
    return net


def _efficientnet_b0(size: int) -> _Net:
    # (expansion, kernel, stride, out channels, repeats)
    stages = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3))
    stages += ((6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
    net = _Net(f"efficientnet_b0@{size}", size)
    net.conv("features.0", 32, 3, 2)
    for stage, (t, k, s, c, n) in enumerate(stages, 1):
        for i in range(n):
            stride = s if i == 0 else 1
            name = f"features.{stage}.{i}"
            c_in = net.channels
            hidden = c_in * t
            if t != 1:
                net.conv(f"{name}.expand", hidden, 1)
            net.conv(f"{name}.dw", hidden, k, stride, groups=hidden)
            squeeze = max(1, c_in // 4)
            net.conv(f"{name}.se.reduce", squeeze, 1, c=hidden, size=1, keep=True)
            net.conv(f"{name}.se.expand", hidden, 1, c=squeeze, size=1, keep=True)
            net.conv(f"{name}.project", c, 1)
    net.conv("features.8", 1280, 1)
    return net


# GoogLeNet's inception modules: (input channels, plane, 1x1, 3x3 reduce, 3x3,
# 5x5 reduce, 5x5, pool projection), as in the paper (5x5 branches kept as 5x5).
_INCEPTION = {
    "3a": (192, 28, 64, 96, 128, 16, 32, 32),
    "3b": (256, 28, 128, 128, 192, 32, 96, 64),
    "4a": (480, 14, 192, 96, 208, 16, 48, 64),
    "4b": (512, 14, 160, 112, 224, 24, 64, 64),
    "4c": (512, 14, 128, 128, 256, 24, 64, 64),
    "4d": (512, 14, 112, 144, 288, 32, 64, 64),
    "4e": (528, 14, 256, 160, 320, 32, 128, 128),
    "5a": (832, 7, 256, 160, 320, 32, 128, 128),
    "5b": (832, 7, 384, 192, 384, 48, 128, 128),
}


def _googlenet(size: int) -> _Net:
    net = _Net(f"googlenet@{size}", size)
    net.conv("conv1", 64, 7, 2, 3)
    net.pool(3, 2, 0, ceil=True)
    net.conv("conv2", 64, 1)
    net.conv("conv3", 192, 3)
    scale = size / 224
    for name, (c, h, b1, r3, b3, r5, b5, proj) in _INCEPTION.items():
        h = max(1, round(h * scale))
        net.conv(f"inception{name}.branch1", b1, 1, c=c, size=h, keep=True)
        net.conv(f"inception{name}.branch2.0", r3, 1, c=c, size=h, keep=True)
        net.conv(f"inception{name}.branch2.1", b3, 3, c=r3, size=h, keep=True)
        net.conv(f"inception{name}.branch3.0", r5, 1, c=c, size=h, keep=True)
        net.conv(f"inception{name}.branch3.1", b5, 5, c=r5, size=h, keep=True)
        net.conv(f"inception{name}.branch4.1", proj, 1, c=c, size=h, keep=True)
    return net


# Each network and the input resolutions it runs at.
NETWORKS = {
    "lenet5": ((32,), _lenet5),
    "alexnet": ((224,), _alexnet),
    "vgg11": ((224, 32), lambda size: _vgg("vgg11", size)),
    "vgg16": ((224, 32), lambda size: _vgg("vgg16", size)),
    "resnet18": ((224, 32), lambda size: _resnet(18, size)),
    "resnet34": ((224, 32), lambda size: _resnet(34, size)),
    "resnet50": ((224, 32), lambda size: _resnet(50, size)),
    "resnet20": ((32,), lambda size: _cifar_resnet(20)),
    "resnet56": ((32,), lambda size: _cifar_resnet(56)),
    "mobilenet_v2": ((224, 32), _mobilenet_v2),
    "googlenet": ((224,), _googlenet),
    "efficientnet_b0": ((224, 32), _efficientnet_b0),
}


def network_layers(name: str, size: int) -> list[ConvLayer]:
    """Every conv layer of network ``name`` on a ``size`` x ``size`` input, batch 1, in
    forward order (named "<net>@<size> <module>")."""
    sizes, build = NETWORKS[name]
    if size not in sizes:
        raise ValueError(f"{name} runs at {sizes}, not {size}")
    return [layer for _, layer in build(size).layers]


def _shape_key(layer: ConvLayer) -> tuple:
    return (layer.n, layer.c, layer.h, layer.k, layer.r, layer.stride, layer.pad, layer.groups)


def corpus(
    networks: tuple[str, ...] | None = None, batches: tuple[int, ...] = BATCHES
) -> list[CorpusLayer]:
    """The conv layers of ``networks`` (default all) at each resolution they run at and
    each batch size, one entry per distinct shape (``count`` says how many layers share
    it; ``source`` names the first)."""
    seen: dict[tuple, CorpusLayer] = {}
    for name in networks or tuple(NETWORKS):
        sizes, _ = NETWORKS[name]
        for size in sizes:
            for layer in network_layers(name, size):
                for batch in batches:
                    batched = replace(layer, n=batch, name=f"{layer.name} b{batch}")
                    key = _shape_key(batched)
                    if key in seen:
                        seen[key] = replace(seen[key], count=seen[key].count + 1)
                    else:
                        seen[key] = CorpusLayer(batched, layer.name)
    return list(seen.values())


def random_layers(count: int, seed: int = 0, max_gflop: float = 8.0) -> list[CorpusLayer]:
    """``count`` conv layers drawn from this distribution (seeded, so reproducible):

    - plane h = w: log-uniform on [1, 56], rounded;
    - batch: 1, 8 or 32, equally likely;
    - kernel: 1 (35%), 3 (45%), 5 (10%), 7 (10%); padding kernel // 2;
    - stride: 1 (75%) or 2 (25%);
    - channels: input C and output K each log-uniform on [3, 1024], rounded to a
      multiple of 8 above 16;
    - groups: dense (70%); depthwise (20%: K = C = groups); small (10%: 2, 4 or 8
      groups, with C and K rounded up to multiples of it);
    - redrawn when the output plane would be empty or the layer would need more than
      ``max_gflop`` GFLOP (the 2-core machine has to time it a few times).
    """
    rng = random.Random(seed)

    def log_uniform(lo: float, hi: float) -> float:
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    def channels() -> int:
        c = round(log_uniform(3, 1024))
        return c if c <= 16 else 8 * round(c / 8)

    drawn: list[CorpusLayer] = []
    while len(drawn) < count:
        h = max(1, round(log_uniform(1, 56)))
        n = rng.choice(BATCHES)
        r = rng.choices((1, 3, 5, 7), weights=(35, 45, 10, 10))[0]
        stride = 1 if rng.random() < 0.75 else 2
        c, k = channels(), channels()
        kind = rng.choices(("dense", "depthwise", "small"), weights=(70, 20, 10))[0]
        groups = 1
        if kind == "depthwise":
            k = groups = c
        elif kind == "small":
            groups = rng.choice((2, 4, 8))
            c, k = -(-c // groups) * groups, -(-k // groups) * groups
        pad = r // 2
        if conv_output_size(h, r, stride, pad) < 1:
            continue
        layer = ConvLayer(f"random{len(drawn)} {kind}", n, c, h, k, r, stride, pad, groups)
        if layer.flops / 1e9 > max_gflop:
            continue
        drawn.append(CorpusLayer(layer, f"random #{len(drawn)}"))
    return drawn
