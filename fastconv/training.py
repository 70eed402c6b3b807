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

``--model NAME`` trains a network of :mod:`fastconv.models` instead (``resnet20``,
``vgg11_bn``, ...; ``demo`` is the CNN above), built for the dataset's channels and
classes; models with a CIFAR variant take it for images of at most 32x32 (``--variant``
chooses), and ``--upscale K`` repeats every pixel KxK for models whose pooling needs
larger images than 8x8 digits.  ``--checkpoint PATH`` writes the weights, optimizer
state, epoch, history and random generators' states after every epoch;
``--resume PATH`` continues that run (same options; ``--epochs`` may grow), and the
result is the one an uninterrupted run gives.  Accuracies are top-1.

``--distributed`` (under ``mpiexec -n N``) trains data-parallel with
:mod:`fastconv.distributed`: every rank a disjoint shard of the training set at
``--batch-size`` per rank, BatchNorm over the global batch (``SyncBatchNorm``), gradients
averaged, evaluation split over the ranks; rank 0 logs and writes the files.  A
checkpoint resumes on any number of ranks with the same global batch.

Programmatic use: ``train(TrainConfig(...))`` returns the metrics dict;
``build_model(...)`` returns the demo CNN, ``build_network(...)`` the model a config
asks for.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import data as fdata
from . import models, nn, optim
from ._progress import Progress
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .functional import get_num_threads, set_num_threads

__all__ = [
    "TrainConfig",
    "add_arguments",
    "build_model",
    "build_network",
    "evaluate",
    "run",
    "train",
]

OPTIMIZERS = ("adam", "sgd", "adagrad", "rmsprop")
DEFAULT_LR = {"adam": 2e-3, "sgd": 0.05, "adagrad": 0.02, "rmsprop": 1e-3}
DEMO_MODEL = "demo"
# the zoo's networks have far more weights than digits has images: without weight decay
# ResNet-20 ends between 96.9 % and 98.3 % on digits over seeds 0-2, with 5e-4 (the CIFAR
# ResNets' usual value) between 98.3 % and 99.2 % over seeds 0-4
ZOO_WEIGHT_DECAY = 5e-4
VARIANTS = ("auto", "cifar", "imagenet")
# what a resumed run must share with the run that wrote the checkpoint (the epochs may
# grow; learning rate, momentum and weight decay come back with the optimizer state)
RESUME_KEYS = (
    "dataset",
    "model",
    "variant",
    "upscale",
    "seed",
    "batch_size",
    "optimizer",
    "schedule",
    "width",
    "batch_norm",
    "dropout",
    "val_fraction",
    "test_fraction",
)


@dataclasses.dataclass
class TrainConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 0 for the demo CNN, ZOO_WEIGHT_DECAY otherwise
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
    model: str = DEMO_MODEL
    variant: str = "auto"
    upscale: int = 1
    checkpoint: str | None = None
    resume: str | None = None
    distributed: bool = False  # data-parallel over the MPI world (run under mpiexec)
    sync_batch_norm: bool = True  # distributed: BatchNorm statistics over the global batch
    bucket_mb: float = 25.0  # distributed: gradient megabytes per allreduce
    dist_timeout: float = 300.0  # distributed: seconds to wait for the other ranks


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


def build_network(
    config: TrainConfig, in_channels: int, image_size: tuple[int, int], num_classes: int
) -> nn.Module:
    """The model ``config.model`` names: the demo CNN, or a zoo model for these images.

    A zoo model with a CIFAR variant gets it for images of at most 32x32 under
    ``variant="auto"``; the first convolution computes no input gradient.
    """
    if config.model == DEMO_MODEL:
        return build_model(
            in_channels,
            image_size,
            num_classes,
            config.width,
            batch_norm=config.batch_norm,
            dropout=config.dropout,
        )
    if config.variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {config.variant!r}")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels}
    if models.has_cifar_variant(config.model):
        small = max(image_size) <= 32
        kwargs["cifar"] = config.variant == "cifar" or (config.variant == "auto" and small)
    elif config.variant == "cifar":
        raise ValueError(f"--model {config.model} has no CIFAR variant")
    model = models.get_model(config.model, **kwargs)
    # every zoo model runs its first registered conv first; images need no gradient
    next(m for m in model.modules() if isinstance(m, nn.Conv2d)).needs_input_grad = False
    return model


def _check_input_size(config: TrainConfig, model: nn.Module, sample_shape: tuple) -> Any:
    """The model's summary for one image; a clear error if its layers cannot take it."""
    try:
        return model.summary(sample_shape, print_summary=False)
    except ValueError as exc:
        shape = "x".join(str(s) for s in sample_shape)
        raise ValueError(
            f"--model {config.model} cannot take {shape} images ({exc}); enlarge them "
            "with --upscale (e.g. --upscale 4 makes 8x8 digits 32x32)"
        ) from exc


def _upscale(x: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling: every pixel becomes a factor x factor block."""
    if factor == 1:
        return x
    return np.ascontiguousarray(np.repeat(np.repeat(x, factor, axis=2), factor, axis=3))


def _check_resumable(
    saved: dict[str, Any], config: TrainConfig, path: str, world_size: int = 1
) -> None:
    differ = [
        f"{key} {saved.get(key)!r} there, {getattr(config, key)!r} here"
        for key in RESUME_KEYS
        if saved.get(key) != getattr(config, key) and key != "batch_size"
    ]
    # on another number of ranks the batch per rank changes, the global batch must not
    batch = world_size * config.batch_size
    saved_batch = saved.get("global_batch_size", saved.get("batch_size"))
    if saved_batch != batch:
        ranks = f" ({world_size} x {config.batch_size})" if world_size > 1 else ""
        differ.append(f"batch_size {saved_batch!r} there, {batch!r}{ranks} here")
    if differ:
        raise ValueError(
            f"--resume {path}: the checkpoint's run used other options ({'; '.join(differ)})"
        )


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


def _start_distributed(config: TrainConfig) -> Any:
    """Join the MPI world and check every rank was given the same options; returns
    :mod:`fastconv.distributed` (imported here: plain runs never import mpi4py)."""
    from . import distributed as dist

    dist.init(timeout=config.dist_timeout)
    dist.check_same("the options", **dataclasses.asdict(config))
    if config.threads is None:  # the ranks on one machine share its cores
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        set_num_threads(max(1, (cores or 1) // dist.local_world_size()))
    return dist


def _seed_layers(generator: np.random.Generator, seed: int, *key: int) -> None:
    """Reseed the dropout generator in place (it is the one the layers draw from)."""
    generator.bit_generator.state = np.random.default_rng([seed, *key]).bit_generator.state


@contextlib.contextmanager
def _as_path(path: str) -> Iterator[str]:
    yield path


def _evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, dist: Any) -> tuple[float, float]:
    """:func:`evaluate`; in a distributed run each rank takes a disjoint share and the
    sums are reduced, so every rank gets the whole set's figures."""
    if dist is None or dist.world_size() == 1:
        return evaluate(model, x, y)
    share = len(dist.shard(y))
    loss, accuracy = evaluate(model, dist.shard(x), dist.shard(y))
    mine = [loss * share, accuracy * share, share] if share else [0.0, 0.0, 0]
    loss_sum, correct, count = dist.all_reduce(np.array(mine, np.float64))
    if count == 0:
        return float("nan"), float("nan")
    return float(loss_sum / count), float(correct / count)


def train(config: TrainConfig) -> dict[str, Any]:
    """Train and evaluate; returns the metrics (what ``--json`` writes)."""
    dist = _start_distributed(config) if config.distributed else None
    world, rank = (dist.world_size(), dist.rank()) if dist else (1, 0)
    if rank != 0:  # rank 0 speaks and writes files for the run
        config = dataclasses.replace(
            config, verbose=False, progress=False, json=None, out=None, plot=None
        )
    if config.epochs < 1:
        raise ValueError("epochs must be at least 1")
    if config.upscale < 1:
        raise ValueError(f"upscale must be a positive integer, got {config.upscale}")
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
    x_train, x_val, x_test = (
        _upscale(normalizer.transform(part.x), config.upscale)
        for part in (splits.train, splits.val, splits.test)
    )
    load_time = time.perf_counter() - start
    if dist:
        dist.check_same(
            "the data",
            **{
                f"{name}_{part}": getattr(getattr(splits, part), name)
                for name in "xy"
                for part in ("train", "val", "test")
            },
        )

    nn.manual_seed(config.seed)
    channels, height, width = x_train.shape[1:]
    model = build_network(config, channels, (height, width), splits.num_classes)
    flops = _check_input_size(config, model, (channels, height, width)).total_flops
    net = model  # what trains: the model, or its data-parallel wrapper
    if dist:
        if config.sync_batch_norm:
            model = dist.convert_sync_batchnorm(model)
        net = dist.DistributedDataParallel(
            model, bucket_mb=config.bucket_mb, broadcast_buffers=not config.sync_batch_norm
        )
    criterion = nn.CrossEntropyLoss()
    weight_decay = config.weight_decay
    if weight_decay is None:
        weight_decay = 0.0 if config.model == DEMO_MODEL else ZOO_WEIGHT_DECAY
    optimizer = make_optimizer(
        config.optimizer, model.parameters(), config.lr, weight_decay, config.momentum
    )
    loader = fdata.DataLoader(
        x_train,
        splits.train.y,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        num_replicas=world,
        rank=rank,
    )
    # dropout masks and the shuffling: what a resumed run must continue, not restart
    generators = {"layers": nn.init.default_generator(), "shuffle": loader.generator}
    if world > 1:  # every rank its own dropout masks; the shuffling stays shared
        _seed_layers(generators["layers"], config.seed, rank)
    history: list[dict[str, float]] = []
    first_epoch = 1
    if config.resume:
        with dist.shared_file(config.resume) if dist else _as_path(config.resume) as path:
            saved = read_checkpoint(path)
            _check_resumable(saved.extra.get("config", {}), config, config.resume, world)
            load_checkpoint(path, model, optimizer, generators=generators)
        history = list(saved.extra.get("history", []))
        first_epoch = saved.epoch + 1
        if world > 1:
            by_rank = saved.extra.get("layer_generators") or []
            if len(by_rank) == world:
                generators["layers"].bit_generator.state = by_rank[rank]
            else:  # written by another world size: fresh masks, the rest continues exactly
                _seed_layers(generators["layers"], config.seed, rank, first_epoch)
    scheduler = (
        optim.CosineAnnealingLR(optimizer, T_max=config.epochs)
        if config.schedule == "cosine"
        else None
    )
    if scheduler is not None:
        for _ in range(first_epoch - 1):  # this run's schedule, at the epoch it resumes
            scheduler.step()
    lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
    name = "demo CNN" if config.model == DEMO_MODEL else config.model
    decay = f" weight decay {weight_decay:g}" if weight_decay else ""
    parts = [
        f"fastconv train: {name} on {config.dataset} train/val/test = {len(splits.train.y)}/"
        f"{len(splits.val.y)}/{len(splits.test.y)} ({channels}x{height}x{width})",
        f"{model.num_parameters():,} parameters",
        f"{flops / 1e6:,.1f} MFLOPs per image",
        f"{config.optimizer} lr={lr:g}{decay}",
        f"batch {config.batch_size}"
        + (f" x {world} ranks (MPI; global batch {world * config.batch_size})" if dist else ""),
        f"{config.epochs} epochs",
        f"{get_num_threads()} threads",
    ]
    if config.resume:
        parts.append(f"resumed after epoch {first_epoch - 1}")
    _log(config, ", ".join(parts))
    run_config = {
        k: v for k, v in dataclasses.asdict(config).items() if k not in ("progress", "verbose")
    }
    run_config["global_batch_size"] = world * config.batch_size

    for epoch in range(first_epoch, config.epochs + 1):
        progress = Progress(
            len(loader),
            enabled=config.progress,
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
        )
        net.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        try:
            for xb, yb in loader:
                logits = net(xb)
                loss = criterion(logits, yb)
                net.backward(criterion.backward())
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
        if dist:  # sums over the ranks; rank 0's running statistics for everyone
            loss_sum, correct, seen = dist.all_reduce(np.array([loss_sum, correct, seen]))
            net.sync_buffers()
        val_loss, val_acc = _evaluate(model, x_val, splits.val.y, dist)
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
        if config.checkpoint:
            extra: dict[str, Any] = {"config": run_config, "history": history}
            if dist:
                extra["layer_generators"] = dist.all_gather_object(
                    generators["layers"].bit_generator.state
                )
            (dist.save_checkpoint if dist else save_checkpoint)(
                config.checkpoint,
                model,
                optimizer,
                epoch=epoch,
                generators=generators,
                extra=extra,
            )

    test_loss, test_acc = _evaluate(model, x_test, splits.test.y, dist)
    total_time = time.perf_counter() - start
    train_time = sum(r["time_s"] for r in history)
    _log(
        config,
        f"test accuracy (top-1) {test_acc:.4f} (loss {test_loss:.4f}); training "
        f"{train_time:.1f} s, total {total_time:.1f} s",
    )
    if config.checkpoint:
        _log(config, f"checkpoint after epoch {config.epochs} saved to {config.checkpoint}")
    metrics: dict[str, Any] = {
        "dataset": config.dataset,
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "final_val_accuracy": history[-1]["val_accuracy"] if history else float("nan"),
        "val_accuracy": [r["val_accuracy"] for r in history],
        "train_loss": [r["train_loss"] for r in history],
        "epoch_time_s": [r["time_s"] for r in history],
        "mean_epoch_time_s": float(np.mean([r["time_s"] for r in history])) if history else 0.0,
        "train_time_s": float(train_time),
        "total_time_s": total_time,
        "load_time_s": load_time,
        "history": history,
        "num_parameters": model.num_parameters(),
        "flops_per_image": flops,
        "input_shape": [int(channels), int(height), int(width)],
        "resumed_after_epoch": first_epoch - 1 if config.resume else None,
        "samples": {
            "train": len(splits.train.y),
            "val": len(splits.val.y),
            "test": len(splits.test.y),
        },
        "threads": get_num_threads(),
        "world_size": world,
        "normalization": {
            "mean": normalizer.mean.ravel().tolist(),
            "std": normalizer.std.ravel().tolist(),
        },
        "config": run_config | {"lr": lr, "weight_decay": weight_decay},
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
    parser.add_argument(
        "--model",
        choices=(DEMO_MODEL, *models.list_models()),
        default=d.model,
        metavar="NAME",
        help=f"{DEMO_MODEL} (the quick CNN, default) or a fastconv.models network: "
        + ", ".join(models.list_models()),
    )
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default=d.variant,
        help="for models with a CIFAR variant (3x3 stem, no max-pool): auto takes it for "
        "images of at most 32x32",
    )
    parser.add_argument(
        "--upscale",
        type=int,
        default=d.upscale,
        metavar="K",
        help="repeat every pixel KxK (for models whose pooling needs larger images)",
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
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help=f"default: 0 for the demo CNN, {ZOO_WEIGHT_DECAY:g} for the zoo's models",
    )
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
        "--width", type=int, default=d.width, help="demo CNN: channels of the first conv layers"
    )
    parser.add_argument("--dropout", type=float, default=d.dropout, help="demo CNN")
    parser.add_argument(
        "--no-batch-norm",
        action="store_true",
        help="demo CNN: plain conv-relu layers (no BatchNorm2d)",
    )
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=d.test_fraction,
        help="digits only (mnist and cifar10 have a test set)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU kernel threads (--distributed: default the cores over the ranks per machine)",
    )
    parser.add_argument("--json", metavar="PATH", default=None, help="write metrics as JSON")
    parser.add_argument("--out", metavar="NPZ", default=None, help="save the weights (.npz)")
    parser.add_argument(
        "--checkpoint",
        metavar="NPZ",
        default=None,
        help="after every epoch, save weights, optimizer state, epoch and generator states",
    )
    parser.add_argument(
        "--resume",
        metavar="NPZ",
        default=None,
        help="continue the run that wrote this checkpoint (same options; --epochs may grow)",
    )
    parser.add_argument(
        "--plot", metavar="PNG", default=None, help="save training curves (needs matplotlib)"
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training over the MPI world: run as mpiexec -n N fastconv train "
        "--distributed ... (pip install 'fastconv[distributed]'); --batch-size is per rank",
    )
    parser.add_argument(
        "--no-sync-batch-norm",
        action="store_true",
        help="--distributed: each rank normalises with its own batch's statistics (default: "
        "SyncBatchNorm over the global batch)",
    )
    parser.add_argument(
        "--bucket-mb",
        type=float,
        default=d.bucket_mb,
        help="--distributed: gradient megabytes per allreduce",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=d.dist_timeout,
        metavar="S",
        help="--distributed: seconds to wait for the other ranks before ending every rank",
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
        model=args.model,
        variant=args.variant,
        upscale=args.upscale,
        checkpoint=args.checkpoint,
        resume=args.resume,
        distributed=args.distributed,
        sync_batch_norm=not args.no_sync_batch_norm,
        bucket_mb=args.bucket_mb,
        dist_timeout=args.dist_timeout,
    )
    try:
        train(config)
    except (FileNotFoundError, ImportError, ValueError) as exc:
        message = f"fastconv train: error: {exc}"
        if config.distributed and "fastconv.distributed" in sys.modules:
            from . import distributed as dist

            if dist.world_size() > 1:
                dist.abort(message, 2)  # printed once, every rank ended
        print(message, file=sys.stderr)
        return 2
    return 0
