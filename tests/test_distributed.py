"""fastconv.distributed: data-parallel training over MPI.

The MPI cases run ``tests/distributed_worker.py`` (and ``fastconv train --distributed``)
under ``mpiexec -n 2`` with one thread per rank, over loopback; they skip where mpi4py or
mpiexec is missing.  The rest runs in one process, with mpi4py hidden where it matters.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_python

import fastconv
from fastconv import data, nn, training
from fastconv.distributed import SyncBatchNorm, convert_sync_batchnorm

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
EQUAL = 1e-10  # relative: float64, 5 SGD steps with momentum
FAILURE_BOUND_S = 30.0  # every failure case ends well within this (its timeouts: 2 s)


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # the launcher of mpi4py's own MPI
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _has_mpi() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return _mpiexec() is not None


needs_mpi = pytest.mark.skipif(not _has_mpi(), reason="needs mpi4py and mpiexec (distributed)")


def mpirun(*argv: str, ranks: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks python argv...`` (or an MPMD line when argv holds ':')."""
    package_parent = str(Path(fastconv.__file__).resolve().parent.parent)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p),
    )
    command = [_mpiexec(), "-n", str(ranks), sys.executable, *argv]
    return subprocess.run(
        command, env=env, cwd=str(HERE), capture_output=True, text=True, timeout=timeout
    )


def cli_argv(*options: str) -> list[str]:
    return ["-m", "fastconv.cli", "train", "--no-progress", *options]


# =========================================================================== one process


def test_importing_fastconv_never_imports_mpi4py():
    result = run_python(
        "import sys, fastconv, fastconv.training, fastconv.distributed, fastconv.cli\n"
        "fastconv.cli.build_parser()\n"
        "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'\n"
        "print('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_without_mpi4py_a_single_process_trains_unchanged():
    code = """
import sys
sys.modules["mpi4py"] = None  # as if mpi4py were not installed
import numpy as np
from fastconv import data, distributed as dist, nn, optim

dist.init()
assert (dist.is_initialized(), dist.rank(), dist.world_size()) == (True, 0, 1)

def make():
    nn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 64, 10))

x = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
y = np.arange(32) % 10
results = []
for wrap in (False, True):
    model = make()
    net = dist.DistributedDataParallel(dist.convert_sync_batchnorm(model)) if wrap else model
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loader = dist.sharded_loader(x, y, batch_size=8, shuffle=True, seed=1) if wrap else \
        data.DataLoader(x, y, batch_size=8, shuffle=True, seed=1)
    crit = nn.CrossEntropyLoss()
    for xb, yb in loader:
        crit(net(xb), yb)
        net.backward(crit.backward())
        opt.step(); opt.zero_grad()
    results.append(net.state_dict())
assert list(results[0]) == list(results[1])
assert all(np.array_equal(results[0][k], results[1][k]) for k in results[0])
assert dist.all_reduce(3) == 3 and dist.all_gather_object("a") == ["a"]
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@needs_mpi
def test_with_mpi4py_a_process_started_alone_is_a_world_of_one():
    result = run_python(
        "from fastconv import distributed as dist\n"
        "dist.init()\n"
        "print(dist.world_size(), dist.rank(), dist.local_world_size(), dist.all_reduce(2.5))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "0", "1", "2.5"]


def test_an_mpi_launch_without_mpi4py_is_refused():
    code = (
        "import sys\nsys.modules['mpi4py'] = None\n"
        "from fastconv import distributed as dist\ndist.init()"
    )
    result = run_python(code, env=dict(os.environ, PMI_SIZE="2"))
    assert result.returncode != 0
    assert "MPI launcher started 2 processes" in result.stderr
    assert "pip install 'fastconv[distributed]'" in result.stderr


def _shards(n, replicas, batch, seed, shuffle=True):
    loaders = [
        data.DataLoader(
            np.arange(n),
            batch_size=batch,
            shuffle=shuffle,
            seed=seed,
            num_replicas=replicas,
            rank=r,
        )
        for r in range(replicas)
    ]
    return loaders, [[list(b) for b in loader] for loader in loaders]


@pytest.mark.parametrize("n", [40, 37])
def test_sharded_loader_splits_each_global_batch_across_the_ranks(n):
    loaders, epochs = _shards(n, 2, 4, seed=5)
    whole = [list(b) for b in data.DataLoader(np.arange(n), batch_size=8, shuffle=True, seed=5)]
    per_rank = (n + 1) // 2  # padded by wrapping around to a multiple of the ranks
    assert len(loaders[0]) == len(loaders[1]) == (per_rank + 3) // 4
    flat = [[i for batch in epoch for i in batch] for epoch in epochs]
    assert len(flat[0]) == len(flat[1]) == per_rank
    assert set(flat[0]) | set(flat[1]) == set(range(n))
    assert len(set(flat[0]) & set(flat[1])) == 2 * per_rank - n  # only the padding repeats
    if n % 2 == 0:  # no padding: batch k of the ranks together is the unsharded batch k
        for k, batch in enumerate(whole):
            assert sorted(epochs[0][k] + epochs[1][k]) == sorted(batch)
    again = [[list(b) for b in loader] for loader in loaders]
    assert again[0] != epochs[0]  # reshuffled every epoch ...
    _, fresh = _shards(n, 2, 4, seed=5)
    assert fresh == epochs  # ... from the shared seed


def test_sharded_loader_without_shuffle_and_bad_arguments():
    _, epochs = _shards(10, 3, 2, seed=None, shuffle=False)
    assert epochs == [[[0, 3], [6, 9]], [[1, 4], [7, 0]], [[2, 5], [8, 1]]]
    for replicas, rank in ((0, 0), (2, 2), (2, -1)):
        with pytest.raises(ValueError, match="num_replicas"):
            data.DataLoader(np.arange(4), num_replicas=replicas, rank=rank)


def test_convert_sync_batchnorm_keeps_parameters_buffers_and_keys():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.ReLU())
    model[1].running_mean[...] = 0.5
    weight = model[1].weight
    keys = list(model.state_dict())
    x = np.random.default_rng(1).standard_normal((2, 1, 6, 6)).astype(np.float32)
    plain = model(x)
    model.eval()
    converted = convert_sync_batchnorm(model)
    assert converted is model
    assert type(model[1]) is SyncBatchNorm
    assert model[1].weight is weight
    assert model[1].momentum is None
    assert not model[1].training
    assert list(model.state_dict()) == keys
    model.train()
    # a world of one: plain BatchNorm2d, forward and backward
    np.testing.assert_array_equal(model(x), plain)
    assert model.backward(np.ones_like(plain)).shape == x.shape
    assert isinstance(SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(3)), SyncBatchNorm)


# =========================================================================== under mpiexec


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed") / "checks.json"
    result = mpirun(str(WORKER), "checks", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text())


@needs_mpi
@pytest.mark.parametrize("case", ["plain", "sync_bn"])
def test_two_ranks_match_one_process_with_twice_the_batch(checks, case):
    """float64 CNN, SGD with momentum and weight decay, 5 steps: no BatchNorm, and
    BatchNorm converted to SyncBatchNorm."""
    assert checks["world_size"] == 2
    result = checks[case]
    assert result["moved"] > 1e-3  # the weights did train
    assert result["error"] <= EQUAL
    assert result["ranks_identical"]


@needs_mpi
def test_without_sync_batch_norm_the_ranks_differ(checks):
    """The control: per-rank BatchNorm statistics are not the global batch's."""
    assert checks["local_bn"]["error"] > 1e-4


@needs_mpi
def test_buckets_start_while_the_backward_pass_runs(checks):
    for case in ("plain", "sync_bn"):
        assert checks[case]["buckets"] >= 3
        assert checks[case]["early"] == checks[case]["buckets"]
        # the first bucket (the last layers') left while most layers had yet to finish
        assert checks[case]["layers_done_at_first_start"] <= checks[case]["layers"] // 2


@needs_mpi
def test_no_sync_accumulates_locally_then_averages(checks):
    assert checks["accumulation"]["no_sync_stayed_local"]
    assert checks["accumulation"]["error"] <= EQUAL


@needs_mpi
def test_parameters_without_gradients(checks):
    unused = checks["unused"]
    assert unused["unused_is_none"]  # no rank had one: stays None
    assert unused["rank0_only_error"] == 0  # one rank had one: averaged with zeros
    assert unused["body_error"] == 0


@needs_mpi
def test_metric_reduction_sharded_evaluation_and_checkpoints(checks):
    metrics = checks["metrics"]
    assert metrics["sum"] == 3
    assert metrics["mean"] == [0.5, 1.0]
    assert metrics["max"] == 1.0
    assert metrics["shards_disjoint_and_complete"]
    assert metrics["eval_loss_error"] <= 1e-12
    assert metrics["eval_accuracy_error"] <= 1e-12
    assert metrics["checkpoint_loads_everywhere"]
    assert metrics["checkpoint_has_momentum"]
    assert metrics["checkpoint_loads_alone"]


def _once(text: str, output: str) -> None:
    assert output.count(text) == 1, output


@needs_mpi
def test_a_rank_that_raises_ends_every_rank():
    start = time.monotonic()
    result = mpirun(str(WORKER), "raise", "-", timeout=60)
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert elapsed < FAILURE_BOUND_S
    _once("RuntimeError: rank 1 failed on purpose at step 2", output)
    assert "[rank 1 of 2]" in output


@needs_mpi
def test_a_rank_that_leaves_early_times_the_others_out():
    start = time.monotonic()
    result = mpirun(str(WORKER), "leave", "-", timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert time.monotonic() - start < FAILURE_BOUND_S
    _once("DistributedTimeoutError: rank 0: waited 2 s for the other ranks", output)


@needs_mpi
@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        (
            "model_mismatch",
            "the ranks built different models: rank 1 has parameter '0.weight' of shape "
            "(8, 1, 3, 3) where rank 0's is (4, 1, 3, 3)",
        ),
        ("data_mismatch", "the ranks disagree on the data loader: array 1 differs"),
        ("train_data_mismatch", "the ranks disagree on the data: y_train differs"),
    ],
)
def test_ranks_that_disagree_stop_at_start_up(scenario, message):
    start = time.monotonic()
    result = mpirun(str(WORKER), scenario, "-", timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - start < FAILURE_BOUND_S
    _once(message, result.stdout + result.stderr)


@needs_mpi
def test_train_options_that_differ_or_fail_are_reported_once():
    # an MPMD line: rank 0 and rank 1 get different seeds
    argv = [*cli_argv("--distributed", "--seed", "0"), ":", "-n", "1", sys.executable]
    result = mpirun(*argv, *cli_argv("--distributed", "--seed", "1"), ranks=1, timeout=60)
    assert result.returncode == 2
    _once(
        "the ranks disagree on the options: seed differs between rank 0 and rank(s) 1",
        (result.stdout + result.stderr),
    )
    result = mpirun(*cli_argv("--distributed", "--upscale", "0"), timeout=60)
    assert result.returncode == 2
    _once("fastconv train: error: upscale must be a positive integer", result.stderr)


@needs_mpi
def test_fastconv_train_distributed_matches_one_process_and_resumes_alone(tmp_path):
    pytest.importorskip("sklearn")
    common = ["--epochs", "1", "--optimizer", "sgd", "--dropout", "0", "--schedule", "none"]
    files = {name: str(tmp_path / name) for name in ("m.json", "w.npz", "run.npz")}
    result = mpirun(
        *cli_argv(
            "--distributed",
            *common,
            "--batch-size",
            "16",
            "--json",
            files["m.json"],
            "--out",
            files["w.npz"],
            "--checkpoint",
            files["run.npz"],
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("epoch   1/1") == 1  # rank 0 alone logs
    assert "batch 16 x 2 ranks (MPI; global batch 32)" in result.stdout
    metrics = json.loads(Path(files["m.json"]).read_text())
    assert metrics["world_size"] == 2
    assert metrics["samples"]["train"] == 1258
    config = dict(
        epochs=1,
        optimizer="sgd",
        dropout=0.0,
        schedule="none",
        threads=1,
        progress=False,
        verbose=False,
    )
    single = training.train(training.TrainConfig(batch_size=32, **config))
    distributed = nn.load_weights(files["w.npz"])
    for key, value in single["model"].state_dict().items():
        scale = max(float(np.abs(value).max()), 1e-30)
        assert float(np.abs(distributed[key] - value).max()) / scale <= 1e-4, key  # float32
    assert metrics["val_accuracy"] == pytest.approx(single["val_accuracy"], abs=1e-9)
    # the 2-rank checkpoint resumes in one process at the same global batch
    resumed = training.train(
        training.TrainConfig(batch_size=32, resume=files["run.npz"], **{**config, "epochs": 2})
    )
    assert resumed["resumed_after_epoch"] == 1
    with pytest.raises(ValueError, match=r"batch_size 32 there, 16 here"):
        training.train(
            training.TrainConfig(batch_size=16, resume=files["run.npz"], **{**config, "epochs": 2})
        )


# =========================================================================== docs and model


def _scaling_script():
    import importlib.util

    path = HERE.parent / "benchmarks" / "distributed_scaling.py"
    if not path.exists():
        pytest.skip("no benchmarks/ beside the tests (an installed copy of the suite)")
    spec = importlib.util.spec_from_file_location("distributed_scaling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_alpha_beta_fit_and_projection():
    scaling = _scaling_script()
    alpha, beta, gamma = 3e-6, 2e-10, 1e-10
    sizes = [4 * 4**k for k in range(13)]
    times = [2 * alpha + n * beta for n in sizes]
    assert scaling.fit_alpha_beta(sizes, times) == pytest.approx((alpha, beta), rel=1e-2)
    n = 8e6
    # 64 workers, 25 Gb/s, 20 us: 12 latency rounds, 2 * 63/64 of the message on the link
    # and 63/64 of it summed
    expected = 12 * (alpha + 20e-6) + 2 * 63 / 64 * n * 8 / 25e9 + 63 / 64 * n * gamma
    assert scaling.allreduce_time(n, 64, 25, alpha, gamma) == pytest.approx(expected)
    assert scaling.allreduce_time(n, 1, 25, alpha, gamma) == 0
    rows = [scaling.project(1.0, 1e8, p, 25, alpha, gamma) for p in (2, 8, 64)]
    assert all(0 < r["efficiency"] < r["efficiency_overlapped"] <= 1 for r in rows)
    assert rows[0]["efficiency"] > rows[1]["efficiency"] > rows[2]["efficiency"]
    assert rows[2]["step_s"] == pytest.approx(1.0 + rows[2]["allreduce_s"])
    faster = scaling.project(1.0, 1e8, 64, 100, alpha, gamma)
    assert faster["efficiency"] > rows[2]["efficiency"]


@needs_mpi
def test_the_readme_example_runs_on_two_ranks(tmp_path):
    readme = HERE.parent / "README.md"
    if not readme.exists():
        pytest.skip("no README beside the tests (an installed copy of the suite)")
    match = re.search(
        r"## Training on several machines.*?```python\n(.*?)```", readme.read_text(), re.S
    )
    assert match, "the README lost its distributed example"
    script = tmp_path / "example.py"
    script.write_text(match.group(1))
    package_parent = str(Path(fastconv.__file__).resolve().parent.parent)
    result = subprocess.run(
        [_mpiexec(), "-n", "2", sys.executable, str(script)],
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=package_parent),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("epoch 1: train accuracy") == 1  # rank 0 alone prints
    assert (tmp_path / "run.npz").exists()
