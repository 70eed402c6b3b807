"""Block tiles of the GEMM-shaped kernels, and the one table that picks among them.

Every GEMM-shaped kernel (SGEMM, implicit-GEMM conv forward, conv2d_input and
conv2d_weight) computes a ``BM x BN`` tile of C per thread block, stepping through the
reduction ``BK`` at a time with one ``BK x BM`` slice of A and one ``BK x BN`` slice of B
in shared memory (two of each: the next slice is stored while the current one is
multiplied). Each of the ``(BM/TM) * (BN/TN)`` threads owns a ``TM x TN`` block of C
held in registers (scalars of the generated source, see ``_gen``) and, per reduction
index, loads TM values of A and TN values of B from shared memory and does TM*TN FMAs:
the register blocking that turns a shared-memory-bound kernel into an FMA-bound one.

Thread (ty, tx) owns rows ``4*ty + i + (i//4)*(4*BM/TM - 4)`` (runs of four, BM/2 apart
for TM = 8) and likewise columns: each run is one 128-bit shared-memory load; a warp
reads A as a broadcast and B as consecutive 16-byte words (no bank conflicts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Padding (in elements) of each shared-memory row: breaks the bank conflicts of the
#: transposing stores into the A tile.
SMEM_PAD = 4


@dataclass(frozen=True)
class TileConfig:
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    @property
    def name(self) -> str:
        return f"{self.bm}x{self.bn}x{self.bk}-r{self.tm}x{self.tn}"

    def __post_init__(self):
        nt = (self.bm // self.tm) * (self.bn // self.tn)
        if self.bm % self.tm or self.bn % self.tn:
            raise ValueError(f"tile {self}: TM/TN must divide BM/BN")
        # The loaders assume every thread keeps one column / one reduction index for
        # all its loads, and that each tile is loaded in whole passes.
        if nt % self.bn or nt % self.bk or (self.bm * self.bk) % nt or (self.bn * self.bk) % nt:
            raise ValueError(f"tile {self}: thread count {nt} does not fit the tile")


#: The registry: every tile any kernel can run with (tests and benchmarks read it).
TILES = {
    t.name: t
    for t in (
        TileConfig(128, 128, 8, 8, 8),  # big problems: 64 outputs per thread, 256 threads
        TileConfig(64, 128, 8, 8, 8),  # M of 64..127 (64-channel layers), 128 threads
        TileConfig(64, 64, 8, 4, 4),  # small M or N, or too few blocks: 16 per thread
    )
}

LARGE = TILES["128x128x8-r8x8"]
MEDIUM = TILES["64x128x8-r8x8"]
SMALL = TILES["64x64x8-r4x4"]
#: Which tiles each kernel family is selected with (largest first).
GEMM_TILES = (LARGE, MEDIUM, SMALL)  # every GEMM-shaped kernel

#: Tuning thresholds, in one place (none measured yet on a GPU: see the benchmark).
THRESHOLDS = {
    # a tile is used only if it gives at least this many blocks per SM (else a smaller one)
    "min_blocks_per_sm": 1.0,
    # below this many output channels per group, conv uses the direct kernels
    "direct_conv_min_channels": 16,
    # conv2d_weight split-K: aim for this many blocks per SM ...
    "splitk_blocks_per_sm": 4,
    # ... but give every split at least this many BK steps of the reduction
    "splitk_min_steps": 16,
}


#: Registers per thread of the GEMM-shaped kernels where the tile's design budget
#: (``register_budget``) would make ptxas spill: their occupancy is lower instead.
#: Keys: (kernel, tile name, dtype name); measured with ``python
#: benchmarks/cuda_sass.py`` (sm_80 and sm_90).
RELAXED_BUDGETS = {
    ("gemm", "64x128x8-r8x8", "float32"): 168,  # 12 warps per SM
    ("gemm", "64x64x8-r4x4", "float32"): 80,  # 24 warps
    ("conv2d_fwd", "64x128x8-r8x8", "float32"): 168,
    ("conv2d_fwd", "64x64x8-r4x4", "float32"): 80,
    ("conv2d_dgrad", "128x128x8-r8x8", "float32"): 255,  # 8 warps
    ("conv2d_dgrad", "64x128x8-r8x8", "float32"): 255,
    ("conv2d_dgrad", "64x64x8-r4x4", "float32"): 128,  # 16 warps
    ("conv2d_wgrad", "128x128x8-r8x8", "float32"): 255,
    ("conv2d_wgrad", "64x128x8-r8x8", "float32"): 168,
    ("conv2d_wgrad", "64x64x8-r4x4", "float32"): 80,
}


def register_budget(cfg: TileConfig, dtype, kernel: str = "gemm", index: str = "int32") -> int:
    """Registers per thread a GEMM-shaped kernel may use: by design 128 for the
    64-accumulator tiles and float64 (two resident 256-thread blocks, 16 warps per SM),
    64 for the 16-accumulator float32 tile (32 warps per SM); ``RELAXED_BUDGETS`` where
    that spills, and 255 (no bound) for the convolutions' 64-bit index variants, which
    only tensors of 2**31 elements or more run (the GEMM has no such variant: its
    index arithmetic is 64-bit, ``index`` "int32" for it)."""
    if index == "int64":
        return 255
    relaxed = RELAXED_BUDGETS.get((kernel, cfg.name, np.dtype(dtype).name))
    if relaxed is not None:
        return relaxed
    words = cfg.tm * cfg.tn * np.dtype(dtype).itemsize // 4
    return 128 if words > 16 else 64


def pick_tile(m: int, n: int, sms: int, fill: bool = True, itemsize: int = 4) -> TileConfig:
    """The largest tile that the C matrix (m x n) fills and, with ``fill``, that still
    gives ``min_blocks_per_sm`` blocks per SM; the small tile otherwise.

    float64 always takes the small tile: 64 double accumulators per thread exceed the
    255-register limit (ptxas spills).
    """
    if _forced.get("tile") is not None:
        return _forced["tile"]
    candidates = GEMM_TILES
    if itemsize > 4:
        return candidates[-1]
    for tile in candidates[:-1]:
        blocks = -(-m // tile.bm) * -(-n // tile.bn)
        if (
            m >= tile.bm
            and n >= tile.bn
            and (not fill or blocks >= THRESHOLDS["min_blocks_per_sm"] * sms)
        ):
            return tile
    return candidates[-1]


# --------------------------------------------------------------------------- overrides

_forced: dict = {}


class force:
    """Context manager pinning the tuning choices (tests, benchmarks)::

        with force(tile=TILES["64x64x8-r4x4"], splits=3, algorithm="implicit_gemm"):
            ...

    ``tile`` replaces every tile choice, ``splits`` the conv2d_weight split-K factor,
    ``algorithm`` the conv algorithm ("implicit_gemm" or "direct").
    Not thread-safe: meant for single-threaded test and benchmark code.
    """

    def __init__(self, **choices):
        unknown = set(choices) - {"tile", "splits", "algorithm"}
        if unknown:
            raise TypeError(f"unknown tuning choices {sorted(unknown)}")
        self.choices = {k: v for k, v in choices.items() if v is not None}

    def __enter__(self):
        self.saved = dict(_forced)
        _forced.update(self.choices)
        return self

    def __exit__(self, *exc):
        _forced.clear()
        _forced.update(self.saved)
        return False


def forced(name: str):
    return _forced.get(name)
