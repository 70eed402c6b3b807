"""Float32 gradient error of a CIFAR ResNet-18 in train mode on tiny batches.

One forward and backward at initialisation on random 32x32 inputs, batches of 2, 4
and 16: fastconv float32 under "highest" and "high" and torch float32, each against
fastconv float64 (which agrees with torch float64 to 1e-14). Prints, per batch, the
median and the worst over every gradient of max|x - truth| / max|truth|, the table
in the README's numerics section.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import fastconv
from fastconv import models, nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

BATCHES = (2, 4, 16)


def fastconv_gradients(state, x, y, dtype, precision) -> dict[str, np.ndarray]:
    net = models.resnet18(num_classes=10, cifar=True).to(dtype)
    net.load_state_dict(
        {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in state.items()}
    )
    net.train()
    loss = nn.CrossEntropyLoss()
    with fastconv.float32_conv_precision(precision):
        loss(net(x.astype(dtype)), y)
        grad_input = net.backward(loss.backward())
    grads = {name: p.grad.astype(np.float64) for name, p in net.named_parameters()}
    grads["input"] = grad_input.astype(np.float64)
    return grads


def torch_gradients(state, x, y) -> dict[str, np.ndarray]:
    import torch

    from fastconv.bench.torch_models import build

    net = build("resnet18", 10, cifar=True)
    net.load_state_dict(
        {
            k: torch.from_numpy(v.astype(np.float32) if v.dtype.kind == "f" else v)
            for k, v in state.items()
        }
    )
    net.train()
    xt = torch.from_numpy(x.astype(np.float32)).requires_grad_(True)
    torch.nn.functional.cross_entropy(net(xt), torch.from_numpy(y)).backward()
    grads = {name: p.grad.double().numpy() for name, p in net.named_parameters()}
    grads["input"] = xt.grad.double().numpy()
    return grads


def summary(got, truth) -> str:
    errors = [np.abs(got[k] - truth[k]).max() / max(np.abs(truth[k]).max(), 1e-300) for k in truth]
    return f"{np.median(errors):.1e} / {max(errors):.1e}"


def main() -> None:
    nn.manual_seed(0)
    state = {
        k: np.asarray(v)
        for k, v in models.resnet18(num_classes=10, cifar=True).state_dict().items()
    }
    print('| batch | torch 2.13 float32 | fastconv `"highest"` | fastconv `"high"` |')
    print("|---|---|---|---|")
    for batch in BATCHES:
        rng = np.random.default_rng(batch)
        x, y = rng.standard_normal((batch, 3, 32, 32)), rng.integers(0, 10, batch)
        truth = fastconv_gradients(state, x, y, np.float64, "highest")
        cells = [summary(torch_gradients(state, x, y), truth)]
        cells += [
            summary(fastconv_gradients(state, x, y, np.float32, mode), truth)
            for mode in ("highest", "high")
        ]
        print(f"| {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
