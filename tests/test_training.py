"""Tests of ``fastconv train`` (fastconv.training): end to end on digits through the CLI,
JSON / weights / plot outputs, predictions identical in PyTorch, MNIST and CIFAR-10
wiring on tiny local files, and clear errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from test_data import cifar_batches, write_cifar, write_mnist

from fastconv import cli, data, nn, training


def run_cli(argv):
    args = cli.build_parser().parse_args(["train", *argv])
    return args.run(args)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One short digits run shared by several tests (the expensive part)."""
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("run")
    argv = [
        "--epochs",
        "3",
        "--seed",
        "1",
        "--json",
        str(out / "m.json"),
        "--out",
        str(out / "w.npz"),
        "--no-progress",
    ]
    has_plot = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        has_plot = False
    if has_plot:
        argv += ["--plot", str(out / "curve.png")]
    assert run_cli(argv) == 0
    return out, json.loads((out / "m.json").read_text()), has_plot


def test_train_digits_end_to_end(digits_run):
    out, metrics, has_plot = digits_run
    assert metrics["dataset"] == "digits"
    assert metrics["test_accuracy"] > 0.8  # chance is 0.1
    assert len(metrics["val_accuracy"]) == 3
    assert len(metrics["epoch_time_s"]) == 3
    assert all(0 <= a <= 1 for a in metrics["val_accuracy"])
    assert all(t > 0 for t in metrics["epoch_time_s"])
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert metrics["samples"]["test"] == pytest.approx(0.2 * 1797, abs=10)
    assert metrics["config"]["optimizer"] == "adam"
    assert metrics["config"]["seed"] == 1
    assert metrics["num_parameters"] > 0
    with np.load(out / "w.npz") as weights:
        assert "0.weight" in weights.files
        assert "1.running_mean" in weights.files
    if has_plot:
        assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _test_set(metrics):
    splits = data.load_dataset("digits", seed=metrics["config"]["seed"])
    norm = data.Normalizer()
    norm.mean = np.array(metrics["normalization"]["mean"], np.float32).reshape(1, -1, 1, 1)
    norm.std = np.array(metrics["normalization"]["std"], np.float32).reshape(1, -1, 1, 1)
    return norm.transform(splits.test.x), splits.test.y


def test_saved_weights_reproduce_test_accuracy(digits_run):
    out, metrics, _ = digits_run
    model = training.build_model()
    nn.load_weights(out / "w.npz", model)
    x, y = _test_set(metrics)
    model.eval()
    with nn.no_grad():
        accuracy = float((model(x).argmax(1) == y).mean())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-12)


def test_trained_model_predicts_identically_in_torch(digits_run):
    torch = pytest.importorskip("torch")
    out, metrics, _ = digits_run
    tnn = torch.nn
    # the demo CNN written directly in torch.nn
    tmodel = tnn.Sequential(
        tnn.Conv2d(1, 32, 3, padding=1, bias=False),
        tnn.BatchNorm2d(32),
        tnn.ReLU(),
        tnn.Conv2d(32, 32, 3, padding=1, bias=False),
        tnn.BatchNorm2d(32),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Conv2d(32, 64, 3, padding=1, bias=False),
        tnn.BatchNorm2d(64),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Flatten(),
        tnn.Dropout(0.25),
        tnn.Linear(256, 128),
        tnn.ReLU(),
        tnn.Dropout(0.25),
        tnn.Linear(128, 10),
    )
    weights = nn.load_weights(out / "w.npz")
    tmodel.load_state_dict(nn.to_torch_state_dict(weights))
    tmodel.eval()
    model = training.build_model()
    model.load_state_dict(weights)
    model.eval()
    x, y = _test_set(metrics)
    with nn.no_grad():
        logits = model(x)
    with torch.no_grad():
        tlogits = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(logits.argmax(1), tlogits.argmax(1))
    np.testing.assert_allclose(logits, tlogits, rtol=1e-4, atol=1e-4 * np.abs(tlogits).max())
    assert float((tlogits.argmax(1) == y).mean()) == pytest.approx(metrics["test_accuracy"])


def test_train_mnist_and_cifar10_from_local_files(tmp_path, capsys):
    write_mnist(tmp_path / "mnist", n_train=40, n_test=8)
    assert (
        run_cli(
            [
                "--dataset",
                "mnist",
                "--data-dir",
                str(tmp_path / "mnist"),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--width",
                "4",
                "--optimizer",
                "sgd",
                "--json",
                str(tmp_path / "mnist.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "mnist.json").read_text())
    assert metrics["samples"] == {"train": 36, "val": 4, "test": 8}
    write_cifar(tmp_path / "cifar", cifar_batches(n=6))
    assert (
        run_cli(
            [
                "--dataset",
                "cifar10",
                "--data-dir",
                str(tmp_path / "cifar"),
                "--epochs",
                "1",
                "--width",
                "4",
                "--optimizer",
                "rmsprop",
                "--weight-decay",
                "1e-4",
                "--val-fraction",
                "0",
                "--json",
                str(tmp_path / "cifar.json"),
                "--quiet",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "cifar.json").read_text())  # strict JSON: no NaN
    assert metrics["val_accuracy"] == [None]
    assert metrics["samples"]["val"] == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 1  # --quiet prints nothing


def test_missing_data_gives_a_clear_error(tmp_path, capsys):
    assert (
        run_cli(["--dataset", "mnist", "--data-dir", str(tmp_path / "absent"), "--no-progress"])
        == 2
    )
    err = capsys.readouterr().err
    assert "error" in err
    assert str(tmp_path / "absent") in err
    assert run_cli(["--dataset", "cifar10", "--quiet"]) == 2
    assert "--data-dir is required" in capsys.readouterr().err


@pytest.mark.parametrize("tqdm_installed", [True, False])
def test_progress_output(tmp_path, monkeypatch, capsys, tqdm_installed):
    write_mnist(tmp_path, n_train=30, n_test=5, size=8)
    if tqdm_installed:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    config = training.TrainConfig(
        dataset="mnist",
        data_dir=str(tmp_path),
        epochs=1,
        width=4,
        optimizer="adagrad",
        batch_size=8,
    )
    metrics = training.train(config)
    captured = capsys.readouterr()
    assert "epoch   1/1" in captured.out
    assert "test accuracy" in captured.out
    if tqdm_installed:
        assert "epoch 1/1" in captured.err  # the bar
    assert isinstance(metrics["model"], nn.Sequential)


def test_build_model_shapes():
    for channels, size in ((1, (8, 8)), (1, (28, 28)), (3, (32, 32))):
        model = training.build_model(channels, size, 10, width=4)
        summary = model.summary((channels, *size), print_summary=False)
        assert summary.output_shape == (10,)
    plain = training.build_model(batch_norm=False, dropout=0.0)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in plain.modules())
    with pytest.raises(ValueError, match="unknown optimizer"):
        training.make_optimizer("lbfgs", plain.parameters(), None)
