"""A small U-Net that denoises scikit-learn's 8x8 digits, written with fastconv.nn.

Encoder: two conv blocks (Conv2d, GroupNorm, SiLU) with max pooling, 8x8 -> 4x4 -> 2x2;
decoder: ConvTranspose2d up-convolutions back to 4x4 and 8x8, each concatenated with the
encoder's features of that size (the skip connections), and a 1x1 conv with a sigmoid.
It learns to map digits with Gaussian noise to the clean digits (with no noise the skips
could copy the input through). The model's backward is explicit: the gradient of each
concatenation splits between the up-convolution and the skip, and the skip's part joins
the encoder's gradient.

Run: ``python examples/unet_digits.py [--epochs 30] [--out unet_digits.png]``; it prints
the test reconstruction loss before and after training, and writes a PNG grid: rows of
clean digits, their noisy inputs and the reconstructions. Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import struct
import time
import zlib
from pathlib import Path

import numpy as np

from fastconv import data, nn, optim


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU())


class UNet(nn.Module):
    """Two levels down, two up; ``width`` channels at full resolution, doubling per level."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.enc1 = conv_block(1, width)
        self.pool1 = nn.MaxPool2d(2)
        self.enc2 = conv_block(width, 2 * width)
        self.pool2 = nn.MaxPool2d(2)
        self.bottleneck = conv_block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = conv_block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = conv_block(2 * width, width)
        self.head = nn.Conv2d(width, 1, 1)
        self.out = nn.Sigmoid()

    def forward(self, x: np.ndarray) -> np.ndarray:
        e1 = self.enc1(x)  # width x 8 x 8
        e2 = self.enc2(self.pool1(e1))  # 2 width x 4 x 4
        b = self.bottleneck(self.pool2(e2))  # 4 width x 2 x 2
        d2 = self.dec2(np.concatenate([self.up2(b), e2], axis=1))
        d1 = self.dec1(np.concatenate([self.up1(d2), e1], axis=1))
        return self.out(self.head(d1))

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        w = self.width
        g = self.dec1.backward(self.head.backward(self.out.backward(grad_output)))
        grad_up1, grad_e1 = np.ascontiguousarray(g[:, :w]), g[:, w:]
        g = self.dec2.backward(self.up1.backward(grad_up1))
        grad_up2, grad_e2 = np.ascontiguousarray(g[:, : 2 * w]), g[:, 2 * w :]
        g = self.pool2.backward(self.bottleneck.backward(self.up2.backward(grad_up2)))
        g = self.pool1.backward(self.enc2.backward(g + grad_e2))
        return self.enc1.backward(g + grad_e1)


def noisy(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, sigma, x.shape).astype(x.dtype)


def write_png(path: Path, image: np.ndarray) -> None:
    """An 8-bit grayscale PNG of ``image`` (values in [0, 1]), with no imaging library."""
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    height, width = pixels.shape
    rows = b"".join(b"\x00" + pixels[i].tobytes() for i in range(height))  # filter 0 per row

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def image_grid(rows: list[np.ndarray], scale: int = 4, gap: int = 2) -> np.ndarray:
    """Each entry of ``rows`` (K, 1, 8, 8) becomes a row of K enlarged digits."""
    tiles = [np.kron(r[:, 0], np.ones((scale, scale))) for r in rows]  # K, 8s, 8s
    count, size = tiles[0].shape[0], tiles[0].shape[1]
    grid = np.ones((len(rows) * (size + gap) + gap, count * (size + gap) + gap))
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            top, left = gap + i * (size + gap), gap + j * (size + gap)
            grid[top : top + size, left : left + size] = tile
    return grid


def evaluate(model: UNet, x: np.ndarray, x_noisy: np.ndarray) -> float:
    model.eval()
    with nn.no_grad():
        loss = float(np.mean((model(x_noisy) - x) ** 2))
    model.train()
    return loss


def train(
    epochs: int = 30,
    out: Path = Path("unet_digits.png"),
    sigma: float = 0.25,
    max_steps: int | None = None,
    seed: int = 0,
) -> dict:
    """Trains the U-Net and writes the PNG; returns the test losses and the model."""
    splits = data.load_dataset("digits", seed=seed)
    rng = np.random.default_rng(seed)
    x_train, x_test = splits.train.x, splits.test.x  # pixels in [0, 1]
    x_test_noisy = noisy(x_test, sigma, rng)
    nn.manual_seed(seed)
    model = UNet()
    criterion = nn.MSELoss()
    optimizer = optim.Adam(model.parameters(), lr=3e-3)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loader = data.DataLoader(x_train, splits.train.y, batch_size=32, shuffle=True, seed=seed)
    initial = evaluate(model, x_test, x_test_noisy)
    print(f"test reconstruction MSE before training: {initial:.4f}")
    steps = 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        for xb, _ in loader:
            loss = criterion(model(noisy(xb, sigma, rng)), xb)
            model.backward(criterion.backward())
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        scheduler.step()
        test_loss = evaluate(model, x_test, x_test_noisy)
        print(
            f"epoch {epoch:3d}  train MSE {loss:.4f}  test MSE {test_loss:.4f}  "
            f"({time.perf_counter() - start:.1f} s)"
        )
        if max_steps is not None and steps >= max_steps:
            break
    final = evaluate(model, x_test, x_test_noisy)
    print(f"test reconstruction MSE: {initial:.4f} -> {final:.4f} ({initial / final:.1f}x lower)")
    model.eval()
    with nn.no_grad():
        shown = slice(0, 12)
        reconstructed = model(x_test_noisy[shown])
    write_png(out, image_grid([x_test[shown], x_test_noisy[shown], reconstructed]))
    print(f"clean / noisy / reconstructed digits: {out}")
    return dict(initial=initial, final=final, model=model)


def main() -> None:
    parser = argparse.ArgumentParser(description="Denoise digits with a small U-Net.")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("unet_digits.png"))
    parser.add_argument("--sigma", type=float, default=0.25, help="noise added to the inputs")
    args = parser.parse_args()
    train(args.epochs, args.out, args.sigma)


if __name__ == "__main__":
    main()
