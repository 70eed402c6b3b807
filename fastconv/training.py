"""``fastconv train``: train a small CNN with fastconv's layers, losses and optimizers.

Default: scikit-learn's 8x8 handwritten digits (no download), a stratified seeded
train/val/test split, per-channel normalisation fitted on train, and the CNN

    conv3x3(32)-bn-relu-conv3x3(32)-bn-relu-maxpool2-conv3x3(64)-bn-relu-maxpool2-
    dropout-linear(128)-relu-dropout-linear(10)

(padding keeps sizes), trained with Adam and a cosine learning-rate schedule.  Prints a
progress bar per epoch (tqdm if installed), validation accuracy and time per epoch, and
the final test accuracy;
optionally writes metrics as JSON (``--json``), the weights as ``.npz`` (``--out``;
keys and shapes as PyTorch's ``state_dict``) and a training-curve PNG (``--plot``,
needs matplotlib).

Programmatic use: ``train(TrainConfig(...))`` returns the metrics dict;
``build_model(...)`` returns the CNN.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import data as fdata
from . import nn, optim
from ._progress import Progress
from .functional import get_num_threads, set_num_threads

__all__ = ["TrainConfig", "add_arguments", "build_model", "evaluate", "run", "train"]

OPTIMIZERS = ("adam", "sgd", "adagrad", "rmsprop")
DEFAULT_LR = {"adam": 2e-3, "sgd": 0.05, "adagrad": 0.02, "rmsprop": 1e-3}


@dataclasses.dataclass
class TrainConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    width: int = 32
    batch_norm: bool = True
    dropout: float = 0.25
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    threads: int | None = None
    json: str | None = None
    out: str | None = None
    plot: str | None = None
    progress: bool = True
    verbose: bool = True


def build_model(
    in_channels: int = 1,
    image_size: tuple[int, int] = (8, 8),
    num_classes: int = 10,
    width: int = 32,
    hidden: int = 128,
    batch_norm: bool = True,
    dropout: float = 0.25,
) -> nn.Sequential:
    """The demo CNN: conv-relu-conv-relu-pool-conv-relu-pool-linear-relu-linear.

    3x3 convolutions with padding 1 keep the spatial size, each 2x2 max-pool halves it.
    With ``batch_norm`` every conv is followed by a ``BatchNorm2d`` (and has no bias);
    ``dropout`` > 0 adds ``Dropout`` before each linear layer.
    """
    h, w = image_size
    flat = 2 * width * (h // 4) * (w // 4)

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        return [*layers, nn.ReLU()]

    def drop() -> list[nn.Module]:
        return [nn.Dropout(dropout)] if dropout > 0 else []

    model = nn.Sequential(
        *conv(in_channels, width),
        *conv(width, width),
        nn.MaxPool2d(2),
        *conv(width, 2 * width),
        nn.MaxPool2d(2),
        nn.Flatten(),
        *drop(),
        nn.Linear(flat, hidden),
        nn.ReLU(),
        *drop(),
        nn.Linear(hidden, num_classes),
    )
    model[0].needs_input_grad = False  # the images need no gradient (PyTorch skips it too)
    return model


def make_optimizer(
    name: str, params: Any, lr: float | None, weight_decay: float = 0.0, momentum: float = 0.9
) -> optim.Optimizer:
    name = name.lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adagrad":
        return optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    return optim.RMSprop(params, lr=lr, weight_decay=weight_decay)


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) in eval mode, without saving for backward."""
    if len(y) == 0:
        return float("nan"), float("nan")
    criterion = nn.CrossEntropyLoss(reduction="sum")
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    try:
        with nn.no_grad():
            for xb, yb in fdata.DataLoader(x, y, batch_size=batch_size):
                logits = model(xb)
                total_loss += criterion(logits, yb)
                correct += int((logits.argmax(axis=1) == yb).sum())
    finally:
        model.train(was_training)
    return total_loss / len(y), correct / len(y)


def _log(config: TrainConfig, message: str) -> None:
    if config.verbose:
        print(message, flush=True)


def train(config: TrainConfig) -> dict[str, Any]:
    """Train and evaluate; returns the metrics (what ``--json`` writes)."""
    if config.epochs < 1:
        raise ValueError("epochs must be at least 1")
    if config.threads is not None:
        set_num_threads(config.threads)
    start = time.perf_counter()
    splits = fdata.load_dataset(
        config.dataset,
        config.data_dir,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
    )
    normalizer = fdata.Normalizer().fit(splits.train.x)
    x_train = normalizer.transform(splits.train.x)
    x_val = normalizer.transform(splits.val.x)
    x_test = normalizer.transform(splits.test.x)
    load_time = time.perf_counter() - start

    nn.manual_seed(config.seed)
    channels, height, width = x_train.shape[1:]
    model = build_model(
        channels,
        (height, width),
        splits.num_classes,
        config.width,
        batch_norm=config.batch_norm,
        dropout=config.dropout,
    )
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(
        config.optimizer, model.parameters(), config.lr, config.weight_decay, config.momentum
    )
    scheduler = (
        optim.CosineAnnealingLR(optimizer, T_max=config.epochs)
        if config.schedule == "cosine"
        else None
    )
    loader = fdata.DataLoader(
        x_train, splits.train.y, batch_size=config.batch_size, shuffle=True, seed=config.seed
    )
    lr = optimizer.param_groups[0]["lr"]
    _log(
        config,
        f"fastconv train: {config.dataset} train/val/test = {len(splits.train.y)}/"
        f"{len(splits.val.y)}/{len(splits.test.y)}, {model.num_parameters():,} "
        f"parameters, {config.optimizer} lr={lr:g}, batch {config.batch_size}, "
        f"{config.epochs} epochs, {get_num_threads()} threads",
    )

    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        progress = Progress(
            len(loader),
            enabled=config.progress,
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
        )
        model.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        try:
            for xb, yb in loader:
                logits = model(xb)
                loss = criterion(logits, yb)
                model.backward(criterion.backward())
                optimizer.step()
                optimizer.zero_grad()
                loss_sum += loss * len(yb)
                correct += int((logits.argmax(axis=1) == yb).sum())
                seen += len(yb)
                progress.step(loss=f"{loss:.4f}")
        finally:
            progress.close()
        epoch_time = time.perf_counter() - t0
        if scheduler is not None:
            scheduler.step()
        val_loss, val_acc = evaluate(model, x_val, splits.val.y)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "time_s": epoch_time,
        }
        history.append(record)
        _log(
            config,
            f"epoch {epoch:>3}/{config.epochs}  loss {record['train_loss']:.4f}  "
            f"train acc {record['train_accuracy']:.4f}  val loss {val_loss:.4f}  "
            f"val acc {val_acc:.4f}  {epoch_time:.2f} s",
        )

    test_loss, test_acc = evaluate(model, x_test, splits.test.y)
    total_time = time.perf_counter() - start
    _log(
        config,
        f"test accuracy {test_acc:.4f} (loss {test_loss:.4f}); training "
        f"{sum(r['time_s'] for r in history):.1f} s, total {total_time:.1f} s",
    )
    metrics: dict[str, Any] = {
        "dataset": config.dataset,
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "final_val_accuracy": history[-1]["val_accuracy"],
        "val_accuracy": [r["val_accuracy"] for r in history],
        "train_loss": [r["train_loss"] for r in history],
        "epoch_time_s": [r["time_s"] for r in history],
        "mean_epoch_time_s": float(np.mean([r["time_s"] for r in history])),
        "train_time_s": float(sum(r["time_s"] for r in history)),
        "total_time_s": total_time,
        "load_time_s": load_time,
        "history": history,
        "num_parameters": model.num_parameters(),
        "samples": {
            "train": len(splits.train.y),
            "val": len(splits.val.y),
            "test": len(splits.test.y),
        },
        "threads": get_num_threads(),
        "normalization": {
            "mean": normalizer.mean.ravel().tolist(),
            "std": normalizer.std.ravel().tolist(),
        },
        "config": {
            k: v for k, v in dataclasses.asdict(config).items() if k not in ("progress", "verbose")
        }
        | {"lr": lr},
    }
    if config.out:
        nn.save_weights(model, config.out)
        _log(config, f"weights saved to {config.out}")
    if config.plot:
        if _plot(history, config.plot, test_acc):
            _log(config, f"training curves saved to {config.plot}")
        else:
            _log(
                config,
                "--plot ignored: matplotlib is not installed (pip install 'fastconv[examples]')",
            )
    if config.json:
        Path(config.json).write_text(
            json.dumps(_json_safe(metrics), indent=2, allow_nan=False) + "\n"
        )
        _log(config, f"metrics written to {config.json}")
    metrics["model"] = model
    return metrics


def _json_safe(value: Any) -> Any:
    """NaN (an empty validation split) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _plot(history: list[dict[str, float]], path: str, test_acc: float) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], marker="o", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], marker="o", label="train")
    ax_acc.plot(epochs, [r["val_accuracy"] for r in history], marker="o", label="validation")
    ax_acc.axhline(test_acc, color="gray", linestyle="--", label=f"test {test_acc:.3f}")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastconv train``."""
    d = TrainConfig()
    parser.add_argument(
        "--dataset",
        choices=("digits", "mnist", "cifar10"),
        default=d.dataset,
        help="digits ships with scikit-learn; mnist/cifar10 read --data-dir",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory with MNIST idx files or CIFAR-10 python batches (never downloaded)",
    )
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        + ")",
    )
    parser.add_argument("--momentum", type=float, default=d.momentum, help="for sgd")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument(
        "--schedule",
        choices=("cosine", "none"),
        default=d.schedule,
        help="learning-rate schedule over the epochs",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seeds the split, the initialisation and the shuffling",
    )
    parser.add_argument(
        "--width", type=int, default=d.width, help="channels of the first conv layers"
    )
    parser.add_argument("--dropout", type=float, default=d.dropout)
    parser.add_argument(
        "--no-batch-norm", action="store_true", help="plain conv-relu layers (no BatchNorm2d)"
    )
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=d.test_fraction,
        help="digits only (mnist and cifar10 have a test set)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU kernel threads")
    parser.add_argument("--json", metavar="PATH", default=None, help="write metrics as JSON")
    parser.add_argument("--out", metavar="NPZ", default=None, help="save the weights (.npz)")
    parser.add_argument(
        "--plot", metavar="PNG", default=None, help="save training curves (needs matplotlib)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="print nothing")


def run(args: argparse.Namespace) -> int:
    config = TrainConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        seed=args.seed,
        width=args.width,
        batch_norm=not args.no_batch_norm,
        dropout=args.dropout,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        threads=args.threads,
        json=args.json,
        out=args.out,
        plot=args.plot,
        progress=not (args.no_progress or args.quiet),
        verbose=not args.quiet,
    )
    try:
        train(config)
    except (FileNotFoundError, ImportError, ValueError) as exc:
        print(f"fastconv train: error: {exc}", file=sys.stderr)
        return 2
    return 0
