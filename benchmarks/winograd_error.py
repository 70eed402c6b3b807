"""Error of Winograd F(m, 3) variants on the dense 3x3 layers of the layer set.

Builds each variant's transforms from its interpolation points (Toom-Cook, exact
rational arithmetic), runs it in float32 with NumPy (transforms and the
transformed-domain GEMMs all rounded to float32, as the kernels do) and reports
max|y - ref| / max|ref| against the float64 convolution, next to float32 direct
convolution (fastconv's implicit GEMM) and fastconv's shipped Winograd kernel.
Weights are drawn with PyTorch's default scale (std 1/sqrt(9 C)), inputs
standard normal, at batch 1 (--batch) over a few draws (--draws).

    python benchmarks/winograd_error.py [--draws 3] [--batch 1]

The README's precision table comes from this script.
"""

from __future__ import annotations

import argparse
from fractions import Fraction

import numpy as np

import fastconv

# (name, C, H=W, K): the dense 3x3 stride-1 pad-1 layers of the benchmark layer set.
LAYERS = [
    ("resnet_3x3_56", 64, 56, 64),
    ("resnet_3x3_28", 128, 28, 128),
    ("resnet_3x3_14", 256, 14, 256),
    ("resnet_3x3_7", 512, 7, 512),
    ("vgg_3x3_112", 64, 112, 128),
    ("alexnet_3x3_13", 384, 13, 384),
]


def toom_cook(points: list[Fraction], m: int, r: int = 3):
    """A^T (m x n), G (n x r), B^T (n x n) of F(m, r) on `points` plus infinity.

    Each point's 1/N_j sits in G, as in Lavin & Gray's F(4x4, 3x3); moving a power
    of two between a row of G and the same row of B^T changes no rounding.
    """
    n = m + r - 1
    assert len(points) == n - 1
    at = [[p**i for p in points] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for j, p in enumerate(points):
        norm = Fraction(1)
        for q in points[:j] + points[j + 1 :]:
            norm *= p - q
        g.append([p**k / norm for k in range(r)])
    g.append([Fraction(int(k == r - 1)) for k in range(r)])

    def poly_mul(a, b):
        out = [Fraction(0)] * (len(a) + len(b) - 1)
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                out[i + j] += x * y
        return out

    full = [Fraction(1)]
    for p in points:
        full = poly_mul(full, [-p, Fraction(1)])
    bt = []
    for j in range(len(points)):
        part = [Fraction(1)]
        for q in points[:j] + points[j + 1 :]:
            part = poly_mul(part, [-q, Fraction(1)])
        bt.append(part + [Fraction(0)] * (n - len(part)))
    bt.append(full)
    as_array = lambda rows: np.array([[float(x) for x in row] for row in rows])  # noqa: E731
    return as_array(at), as_array(g), as_array(bt)


def check_identity(at, g, bt, m):
    """The transforms compute the 1-D correlation y[i] = sum_k g[k] d[i + k] exactly."""
    rng = np.random.default_rng(0)
    d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
    y = at @ ((g @ w) * (bt @ d))
    expected = np.array([w @ d[i : i + 3] for i in range(m)])
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def winograd_f32(x, w, at, g, bt, m):
    """float32 Winograd convolution, 3x3, stride 1, padding 1 (x: NCHW, w: KC33)."""
    n, c, h, wd = x.shape
    k = w.shape[0]
    a = m + 2
    th, tw = -(-h // m), -(-wd // m)
    padded = np.zeros((n, c, th * m + 2, tw * m + 2), np.float32)
    padded[:, :, 1 : h + 1, 1 : wd + 1] = x
    f32 = np.float32
    g32, bt32, at32 = g.astype(f32), bt.astype(f32), at.astype(f32)
    u = np.einsum("ai,kcij,bj->abck", g32, w, g32, dtype=f32)  # a x a x C x K
    rows = np.lib.stride_tricks.sliding_window_view(padded, (a, a), axis=(2, 3))[:, :, ::m, ::m]
    v = np.einsum("ai,nctsij,bj->abntsc", bt32, rows, bt32, dtype=f32)
    v = v.reshape(a, a, n * th * tw, c)
    mm = np.matmul(v, u)  # a x a x tiles x K
    y = np.einsum("ia,abtk,jb->tkij", at32, mm, at32, dtype=f32)
    y = y.reshape(n, th, tw, k, m, m).transpose(0, 3, 1, 4, 2, 5).reshape(n, k, th * m, tw * m)
    return y[:, :, :h, :wd]


VARIANTS = {
    "F(4,3) points 0,+-1,+-2": ([0, 1, -1, 2, -2], 4),
    "F(4,3) points 0,+-1,+-1/2": ([0, 1, -1, Fraction(1, 2), Fraction(-1, 2)], 4),
    "F(4,3) points 0,+-1,1/2,-2 (shipped)": ([0, 1, -1, Fraction(1, 2), -2], 4),
    "F(4,3) points 0,+-1,1/2,-3/2": ([0, 1, -1, Fraction(1, 2), Fraction(-3, 2)], 4),
    "F(3,3) points 0,+-1,-2": ([0, 1, -1, -2], 3),
    "F(2,3) points 0,+-1": ([0, 1, -1], 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    transforms = {}
    for name, (points, m) in VARIANTS.items():
        at, g, bt = toom_cook([Fraction(p) for p in points], m)
        check_identity(at, g, bt, m)
        transforms[name] = (at, g, bt, m)
    columns = ["direct", "fastconv winograd", *transforms]
    worst = dict.fromkeys(columns, 0.0)
    print("| layer | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for layer, c, hw, k in LAYERS:
        errors = dict.fromkeys(columns, 0.0)
        for draw in range(args.draws):
            rng = np.random.default_rng(draw)
            x = rng.standard_normal((args.batch, c, hw, hw)).astype(np.float32)
            w = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
            ref = fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
            scale = np.abs(ref).max()
            results = {
                "direct": fastconv.conv2d(x, w, padding=1, algorithm="implicit_gemm"),
                "fastconv winograd": fastconv.conv2d(x, w, padding=1, algorithm="winograd"),
            }
            for name, (at, g, bt, m) in transforms.items():
                results[name] = winograd_f32(x, w, at, g, bt, m)
            for name, y in results.items():
                errors[name] = max(errors[name], float(np.abs(y - ref).max() / scale))
        for name in columns:
            worst[name] = max(worst[name], errors[name])
        print(f"| {layer} | " + " | ".join(f"{errors[n]:.2g}" for n in columns) + " |")
    print("| worst | " + " | ".join(f"{worst[n]:.2g}" for n in columns) + " |")


if __name__ == "__main__":
    main()
