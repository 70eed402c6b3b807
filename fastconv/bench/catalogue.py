"""What ``fastconv bench`` measures: the conv layer table and the GEMM, pooling and
training-step case lists, each at full size with a ``reduced`` variant for quick runs,
and the torch models that ``--op torch`` runs natively and converted by fastconv.torch.

This is the one copy of the conv layer table: the pytest benchmarks, the GPU benchmark
and the peak-memory script import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..geometry import conv_output_size

__all__ = [
    "CONV_BY_NAME",
    "CONV_DIRECTIONS",
    "CONV_LAYERS",
    "CORPUS_OPS",
    "GEMM_BY_NAME",
    "GEMM_CASES",
    "MODEL_BY_NAME",
    "MODEL_CASES",
    "MODEL_DIRECTIONS",
    "MODEL_OPS",
    "OPS",
    "POOL_BY_NAME",
    "POOL_CASES",
    "POOL_DIRECTIONS",
    "THREE_BY_THREE_S1",
    "TRAIN_BY_NAME",
    "TRAIN_CASES",
    "ZOO_BY_NAME",
    "ZOO_CASES",
    "ConvLayer",
    "GemmCase",
    "ModelCase",
    "PoolCase",
    "TrainCase",
    "ZooCase",
]

# The op groups, in the order the reports list them.
OPS = ("gemm", "conv", "pool", "train", "overhead")
# Ops that run conv layers of the shape corpus ('all' leaves them out: they take long).
CORPUS_OPS = ("corpus", "random")
# Ops that run whole torch models ('all' leaves them out too).
MODEL_OPS = ("torch", "models")

# =========================================================================== convolution


@dataclass(frozen=True)
class ConvLayer:
    """One row of the conv layer table (square inputs and kernels, dilation 1)."""

    name: str
    n: int
    c: int
    h: int
    k: int
    r: int
    stride: int = 1
    pad: int = 0
    groups: int = 1

    @property
    def out_hw(self) -> int:
        return conv_output_size(self.h, self.r, self.stride, self.pad)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.h)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.c // self.groups, self.r, self.r)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.k, self.out_hw, self.out_hw)

    @property
    def flops(self) -> int:
        """Direct-convolution FLOPs (2 per multiply-add); the same for fwd, dx and dw."""
        return 2 * self.n * self.k * self.out_hw**2 * (self.c // self.groups) * self.r**2

    def reduction_length(self, direction: str) -> int:
        """How many products each output element of ``direction`` sums (error bounds)."""
        if direction == "fwd":
            return (self.c // self.groups) * self.r**2
        if direction == "dx":
            return (self.k // self.groups) * self.r**2
        return self.n * self.out_hw**2

    def describe(self) -> str:
        g = f" g{self.groups}" if self.groups > 1 else ""
        return (
            f"N{self.n} C{self.c} {self.h}x{self.h} K{self.k} {self.r}x{self.r} "
            f"s{self.stride} p{self.pad}{g}"
        )

    def reduced(self, batch: int | None = None, max_hw: int | None = None) -> ConvLayer:
        """The same layer on at most ``batch`` images of at most ``max_hw`` pixels a side."""
        n = self.n if batch is None else min(self.n, batch)
        h = self.h if max_hw is None else max(self.r, min(self.h, max_hw))
        return replace(self, n=n, h=h)


# Layers of well-known CNNs: ResNet, VGG, GoogLeNet, AlexNet, MobileNet, a CIFAR net, LeNet.
CONV_LAYERS: tuple[ConvLayer, ...] = (
    ConvLayer("resnet_stem_7x7s2", 8, 3, 224, 64, 7, 2, 3),
    ConvLayer("resnet_3x3_56", 8, 64, 56, 64, 3, 1, 1),
    ConvLayer("resnet_1x1_56_up", 8, 64, 56, 256, 1, 1, 0),
    ConvLayer("resnet_1x1_56_down", 8, 256, 56, 64, 1, 1, 0),
    ConvLayer("resnet_1x1s2_56", 8, 256, 56, 128, 1, 2, 0),
    ConvLayer("resnet_3x3_28", 8, 128, 28, 128, 3, 1, 1),
    ConvLayer("resnet_3x3_14", 8, 256, 14, 256, 3, 1, 1),
    ConvLayer("resnet_3x3_7", 8, 512, 7, 512, 3, 1, 1),
    ConvLayer("vgg_3x3_112", 2, 64, 112, 128, 3, 1, 1),
    ConvLayer("googlenet_5x5_28", 8, 192, 28, 32, 5, 1, 2),
    ConvLayer("alexnet_3x3_13", 8, 384, 13, 384, 3, 1, 1),
    ConvLayer("mobilenet_dw3x3_56", 8, 144, 56, 144, 3, 1, 1, 144),
    ConvLayer("cifar_first_3x3", 64, 3, 32, 32, 3, 1, 1),
    ConvLayer("lenet_5x5", 64, 1, 28, 6, 5, 1, 0),
)
CONV_BY_NAME = {layer.name: layer for layer in CONV_LAYERS}
# The dense 3x3 stride-1 layers, where Winograd applies: judged on their own geomean
# as well (targets.json).
THREE_BY_THREE_S1 = (
    "resnet_3x3_56",
    "resnet_3x3_28",
    "resnet_3x3_14",
    "resnet_3x3_7",
    "vgg_3x3_112",
    "alexnet_3x3_13",
)
CONV_DIRECTIONS = ("fwd", "dx", "dw")

# =========================================================================== GEMM


@dataclass(frozen=True)
class GemmCase:
    """C (m x n) = A (m x k) @ B (k x n), float32, row-major."""

    name: str
    m: int
    n: int
    k: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k

    def reduced(self, max_dim: int) -> GemmCase:
        return replace(self, m=min(self.m, max_dim), n=min(self.n, max_dim), k=min(self.k, max_dim))


# Square sizes, and the per-image GEMMs of im2col on ResNet layers of the conv table.
GEMM_CASES: tuple[GemmCase, ...] = (
    GemmCase("square_512", 512, 512, 512),
    GemmCase("square_1024", 1024, 1024, 1024),
    GemmCase("square_2048", 2048, 2048, 2048),
    GemmCase("conv_64x3136x576", 64, 3136, 576),
    GemmCase("conv_256x3136x64", 256, 3136, 64),
    GemmCase("conv_512x49x4608", 512, 49, 4608),
    GemmCase("conv_128x784x1152", 128, 784, 1152),
)
GEMM_BY_NAME = {case.name: case for case in GEMM_CASES}

# =========================================================================== pooling


@dataclass(frozen=True)
class PoolCase:
    """A pooling op on an NCHW float32 input (``op`` is the fastconv/torch name)."""

    name: str
    op: str  # max_pool2d | avg_pool2d
    shape: tuple[int, int, int, int]
    kernel: int
    stride: int
    pad: int = 0

    def reduced(self, batch: int | None = None, max_hw: int | None = None) -> PoolCase:
        n, c, h, w = self.shape
        n = n if batch is None else min(n, batch)
        h, w = (h, w) if max_hw is None else (min(h, max_hw), min(w, max_hw))
        return replace(self, shape=(n, c, h, w))


POOL_CASES: tuple[PoolCase, ...] = (
    PoolCase("max_pool2d_3x3s2p1", "max_pool2d", (32, 64, 112, 112), 3, 2, 1),
    PoolCase("avg_pool2d_2x2s2", "avg_pool2d", (32, 64, 112, 112), 2, 2, 0),
)
POOL_BY_NAME = {case.name: case for case in POOL_CASES}
POOL_DIRECTIONS = ("fwd", "dx")

# =========================================================================== training


@dataclass(frozen=True)
class TrainCase:
    """One SGD training step of ``fastconv.training.build_model``'s demo CNN."""

    name: str
    batch: int
    in_channels: int
    image: int

    def reduced(self, batch: int) -> TrainCase:
        return replace(self, batch=min(self.batch, batch))


TRAIN_CASES: tuple[TrainCase, ...] = (
    TrainCase("demo_cnn_digits_8x8_b32", 32, 1, 8),  # what `fastconv train` runs
    TrainCase("demo_cnn_32x32x3_b64", 64, 3, 32),  # the same CNN on CIFAR-sized images
)
TRAIN_BY_NAME = {case.name: case for case in TRAIN_CASES}

# =========================================================================== torch models


@dataclass(frozen=True)
class ModelCase:
    """A network of ``torch_models.NETWORKS`` at ``image`` x ``image`` pixels, run as a
    plain torch model, converted by ``fastconv.torch.convert`` and converted with
    ``autotune=True``."""

    network: str
    image: int

    @property
    def name(self) -> str:
        return f"{self.network}@{self.image}"


MODEL_CASES: tuple[ModelCase, ...] = tuple(
    ModelCase(network, image)
    for network in ("resnet18", "vgg11", "mobilenet_v2")
    for image in (224, 32)
)
MODEL_BY_NAME = {case.name: case for case in MODEL_CASES}
# What each model runs: inference (torch.inference_mode) at batch 1 and 32, and one SGD
# training step at batch 32; the batch is the number after 'b'.
MODEL_DIRECTIONS = ("infer_b1", "infer_b32", "train_b32")

# =========================================================================== the model zoo

# The zoo's builders that take cifar=True (checked against fastconv.models by a test).
CIFAR_VARIANTS = (
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
)


@dataclass(frozen=True)
class ZooCase:
    """A network of ``fastconv.models`` at ``image`` x ``image`` pixels against its torch
    twin: the ImageNet layout (1000 classes) from 64 pixels up; below, the CIFAR
    variant where the zoo has one (10 classes)."""

    network: str
    image: int

    @property
    def name(self) -> str:
        return f"{self.network}@{self.image}"

    @property
    def classes(self) -> int:
        return 1000 if self.image >= 64 else 10

    @property
    def cifar(self) -> bool:
        return self.image < 64 and self.network in CIFAR_VARIANTS

    @property
    def in_channels(self) -> int:
        return 1 if self.network == "lenet5" else 3


# Every zoo network where it is used: the ImageNet networks at 224, their CIFAR variants
# and the CIFAR ResNets at 32, LeNet-5 on MNIST's 28.
ZOO_CASES: tuple[ZooCase, ...] = (
    *(ZooCase(network, 224) for network in ("alexnet", "googlenet", *CIFAR_VARIANTS)),
    *(ZooCase(network, 32) for network in (*CIFAR_VARIANTS, "resnet20", "resnet56")),
    ZooCase("lenet5", 28),
)
ZOO_BY_NAME = {case.name: case for case in ZOO_CASES}
