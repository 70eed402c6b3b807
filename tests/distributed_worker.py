"""What tests/test_distributed.py runs under ``mpiexec -n 2``: ``python distributed_worker.py
SCENARIO OUT``.  ``checks`` runs every correctness check and rank 0 writes their results
to OUT as JSON; the other scenarios fail on purpose (a rank raises, the ranks build
different models or load different data, a rank leaves early)."""

from __future__ import annotations

import json
import sys

import numpy as np

import fastconv
from fastconv import checkpoint, data, nn, optim
from fastconv import distributed as dist

BATCH = 8  # per rank; the single-process reference takes world_size x BATCH
STEPS = 5
SEED = 3


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300))


def cnn(batch_norm: bool, seed: int) -> nn.Module:
    nn.manual_seed(seed)

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, dtype=np.float64)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out, dtype=np.float64))
        return [*layers, nn.ReLU()]

    return nn.Sequential(
        *conv(1, 4),
        nn.MaxPool2d(2),
        *conv(4, 8),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16, dtype=np.float64),
        nn.ReLU(),
        nn.Linear(16, 10, dtype=np.float64),
    )


def dataset(samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 1, 8, 8))
    y = rng.integers(0, 10, samples)
    return x, y


def train(model: nn.Module, loader: data.DataLoader, step_of: nn.Module) -> None:
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for step, (xb, yb) in enumerate(loader):
        if step == STEPS:
            break
        criterion(step_of(xb), yb)
        step_of.backward(criterion.backward())
        optimizer.step()
        optimizer.zero_grad()


def equivalence(batch_norm: bool, sync: bool = True) -> dict:
    """2 ranks x BATCH against 1 process x 2 BATCH, same data order, STEPS steps."""
    world, rank = dist.world_size(), dist.rank()
    x, y = dataset(world * BATCH * STEPS)
    model = cnn(batch_norm, seed=SEED + rank)  # rank 0's weights must win the broadcast
    initial = cnn(batch_norm, seed=SEED).state_dict()
    if batch_norm and sync:
        model = dist.convert_sync_batchnorm(model)
    ddp = dist.DistributedDataParallel(model, bucket_mb=0.004)  # several buckets
    loader = dist.sharded_loader(x, y, batch_size=BATCH, shuffle=True, seed=SEED)
    train(model, loader, ddp)
    states = dist.all_gather_object(model.state_dict())
    sync = ddp.last_sync
    result = {"buckets": sync["buckets"], "early": sync["started_during_backward"]}
    result["layers"] = sync["layers"]
    result["layers_done_at_first_start"] = sync["layers_done_at_first_start"]
    if rank == 0:
        single = cnn(batch_norm, seed=SEED)
        whole = data.DataLoader(x, y, batch_size=world * BATCH, shuffle=True, seed=SEED)
        train(single, whole, single)
        expected = single.state_dict()
        result["error"] = max(relative_error(states[0][k], v) for k, v in expected.items())
        result["ranks_identical"] = all(
            np.array_equal(s[k], states[0][k]) for s in states for k in expected
        )
        result["moved"] = min(
            relative_error(expected[k], initial[k]) for k in expected if k.endswith("weight")
        )
    return result


def accumulation() -> dict:
    """no_sync: two half-batches accumulated, then averaged, equal one full backward."""
    rank = dist.rank()
    x, y = dataset(BATCH)
    x = x + rank  # each rank its own data
    criterion = nn.CrossEntropyLoss()
    full = dist.DistributedDataParallel(cnn(False, SEED))
    criterion(full(x), y)
    full.backward(criterion.backward())
    expected = {n: p.grad.copy() for n, p in full.module.named_parameters()}
    ddp = dist.DistributedDataParallel(cnn(False, SEED))
    half = BATCH // 2
    with ddp.no_sync():
        criterion(ddp(x[:half]), y[:half])
        ddp.backward(criterion.backward() / 2)
    local = {n: p.grad.copy() for n, p in ddp.module.named_parameters()}
    criterion(ddp(x[half:]), y[half:])
    ddp.backward(criterion.backward() / 2)
    got = {n: p.grad for n, p in ddp.module.named_parameters()}
    locals_ = dist.all_gather_object(local)
    return {
        "error": max(relative_error(got[n], g) for n, g in expected.items()),
        "no_sync_stayed_local": all(
            not np.array_equal(locals_[0][n], locals_[1][n]) for n in local
        ),
    }


class PartlyUsed(nn.Module):
    """``unused`` never takes part; ``rank0_only`` only on rank 0."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 2, dtype=np.float64)
        self.rank0_only = nn.Linear(4, 2, dtype=np.float64)
        self.unused = nn.Linear(4, 2, dtype=np.float64)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = self.body(x)
        return self.rank0_only(x) + out if dist.rank() == 0 else out

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if dist.rank() == 0:
            self.rank0_only.backward(grad)
        return self.body.backward(grad)


def unused_parameters() -> dict:
    nn.manual_seed(SEED)
    ddp = dist.DistributedDataParallel(PartlyUsed())
    x = np.ones((3, 4)) * (dist.rank() + 1)
    ddp(x)
    ddp.backward(np.ones((3, 2)))
    module = ddp.module
    own = np.full((2, 4), 3.0)  # rank 0's gradient of rank0_only.weight: sum over 3 rows of 1
    return {
        "unused_is_none": module.unused.weight.grad is None,
        "rank0_only_error": relative_error(module.rank0_only.weight.grad, own / 2),
        "body_error": relative_error(module.body.weight.grad, np.full((2, 4), 4.5)),
    }


def metrics_and_checkpoints(path: str) -> dict:
    world, rank = dist.world_size(), dist.rank()
    out = {
        "sum": dist.all_reduce(rank + 1),
        "mean": dist.all_reduce(np.array([rank, 2.0 * rank]), "mean").tolist(),
        "max": dist.all_reduce(float(rank), "max"),
    }
    x, y = dataset(11)  # an odd count: the shards differ in size
    model = cnn(False, SEED)
    from fastconv.training import evaluate

    shard_x, shard_y = dist.shard(x), dist.shard(y)
    loss, accuracy = evaluate(model, shard_x, shard_y)
    sums = dist.all_reduce(np.array([loss * len(shard_y), accuracy * len(shard_y)]))
    counted = dist.all_reduce(len(shard_y))
    full_loss, full_accuracy = evaluate(model, x, y)
    out["eval_loss_error"] = abs(sums[0] / counted - full_loss) / full_loss
    out["eval_accuracy_error"] = abs(sums[1] / counted - full_accuracy)
    out["shards_disjoint_and_complete"] = sorted(
        np.concatenate(dist.all_gather_object(np.arange(11)[rank::world])).tolist()
    ) == list(range(11))
    # a checkpoint written by rank 0 of this world, read back in every rank and alone
    ddp = dist.DistributedDataParallel(cnn(True, SEED + rank))
    optimizer = optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    xb, yb = dataset(4)
    criterion = nn.CrossEntropyLoss()
    criterion(ddp(xb), yb)
    ddp.backward(criterion.backward())
    optimizer.step()
    dist.save_checkpoint(path, ddp, optimizer, epoch=1)
    fresh = cnn(True, 99)
    fresh_optimizer = optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    dist.load_checkpoint(path, fresh, fresh_optimizer)
    same = all(np.array_equal(v, fresh.state_dict()[k]) for k, v in ddp.state_dict().items())
    out["checkpoint_loads_everywhere"] = all(dist.all_gather_object(same))
    momentum = [s["momentum_buffer"] for s in fresh_optimizer.state_dict()["state"].values()]
    out["checkpoint_has_momentum"] = len(momentum) == len(list(fresh.parameters()))
    return out


def checks(out_path: str) -> None:
    results = {
        "world_size": dist.world_size(),
        "plain": equivalence(batch_norm=False),
        "sync_bn": equivalence(batch_norm=True),
        "local_bn": equivalence(batch_norm=True, sync=False),
        "accumulation": accumulation(),
        "unused": unused_parameters(),
        "metrics": metrics_and_checkpoints(out_path + ".ckpt.npz"),
    }
    if dist.rank() == 0:
        single = cnn(True, SEED)  # the checkpoint in a process of its own
        checkpoint.load_checkpoint(out_path + ".ckpt.npz", single)
        results["metrics"]["checkpoint_loads_alone"] = True
        with open(out_path, "w") as fh:
            json.dump(results, fh)


def failing(scenario: str) -> None:
    rank = dist.rank()
    x, y = dataset(dist.world_size() * BATCH * STEPS)
    if scenario == "data_mismatch" and rank == 1:
        y = y.copy()
        y[7] = (y[7] + 1) % 10
    width = 8 if scenario == "model_mismatch" and rank == 1 else 4
    nn.manual_seed(SEED)
    model = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, dtype=np.float64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * 64, 10, dtype=np.float64),
    )
    ddp = dist.DistributedDataParallel(model)
    loader = dist.sharded_loader(x, y, batch_size=BATCH, shuffle=True, seed=SEED)
    criterion = nn.CrossEntropyLoss()
    for step, (xb, yb) in enumerate(loader):
        if step == 2 and rank == 1:
            if scenario == "raise":
                raise RuntimeError("rank 1 failed on purpose at step 2")
            if scenario == "leave":
                return  # ends without an error while rank 0 waits for its gradients
        criterion(ddp(xb), yb)
        ddp.backward(criterion.backward())


def train_with_other_data(out_path: str) -> None:
    """``fastconv train --distributed`` where rank 1 loaded a different label."""
    if dist.rank() == 1:
        load = data.load_dataset

        def load_other(*args, **kwargs):
            splits = load(*args, **kwargs)
            splits.train.y[0] = (splits.train.y[0] + 1) % 10
            return splits

        data.load_dataset = load_other
    from fastconv import cli

    sys.exit(cli.main(["train", "--distributed", "--epochs", "1", "--no-progress"]))


def main() -> None:
    scenario, out_path = sys.argv[1], sys.argv[2]
    fastconv.set_num_threads(1)
    timeout = 2.0 if scenario == "leave" else 60.0
    dist.init(timeout=timeout)
    if scenario == "checks":
        checks(out_path)
    elif scenario == "train_data_mismatch":
        train_with_other_data(out_path)
    else:
        failing(scenario)


if __name__ == "__main__":
    main()
