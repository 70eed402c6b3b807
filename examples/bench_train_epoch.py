"""One training epoch of the demo CNN: fastconv against PyTorch eager, in the same process.

Both frameworks train the same model (``fastconv.training.build_model``, and the same
layers in ``torch.nn`` with the same initial weights) on the same digits batches with
Adam.  Runs alternate A B A B and the best time of each is kept, as the benchmark
suite does.  Usage::

    python examples/bench_train_epoch.py [--repeats 5] [--threads 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time
import warnings

import fastconv
from fastconv import data, nn, optim, training


def fastconv_epoch(model, opt, crit, batches):
    model.train()
    for xb, yb in batches:
        crit(model(xb), yb)
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()


def torch_epoch(torch, model, opt, crit, batches):
    model.train()
    for xb, yb in batches:
        opt.zero_grad()
        crit(model(xb), yb).backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()

    import torch

    if args.threads:
        fastconv.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    splits = data.load_dataset("digits", seed=0)
    x = data.Normalizer().fit_transform(splits.train.x)
    loader = data.DataLoader(x, splits.train.y, batch_size=args.batch_size, shuffle=True, seed=0)
    batches = list(loader)
    tbatches = [(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in batches]

    nn.manual_seed(0)
    model = training.build_model(width=args.width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmodel = nn.to_torch(model)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()

    best = {"fastconv": float("inf"), "torch": float("inf")}
    fastconv_epoch(model, opt, crit, batches[:3])  # warm-up
    torch_epoch(torch, tmodel, topt, tcrit, tbatches[:3])
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fastconv_epoch(model, opt, crit, batches)
        best["fastconv"] = min(best["fastconv"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch_epoch(torch, tmodel, topt, tcrit, tbatches)
        best["torch"] = min(best["torch"], time.perf_counter() - t0)
    n = len(splits.train.y)
    print(
        f"demo CNN ({model.num_parameters():,} parameters), digits epoch of {n} samples, "
        f"batch {args.batch_size}, fastconv threads {fastconv.get_num_threads()}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats}"
    )
    for name, seconds in best.items():
        print(f"  {name:>8}: {seconds * 1e3:8.1f} ms/epoch  ({n / seconds:8.0f} samples/s)")
    print(
        f"  fastconv / torch time ratio: {best['fastconv'] / best['torch']:.2f} "
        f"(< 1 means fastconv is faster)"
    )


if __name__ == "__main__":
    main()
