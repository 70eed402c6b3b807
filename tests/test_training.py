"""Tests of ``fastconv train`` (fastconv.training): end to end on digits through the CLI,
JSON / weights / plot outputs, predictions identical in PyTorch, MNIST and CIFAR-10
wiring on tiny local files, and clear errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from test_data import cifar_batches, write_cifar, write_mnist

from fastconv import cli, data, models, nn, training


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
    assert metrics["config"]["weight_decay"] == 0.0  # the demo CNN's default
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


# ======================================================================================
# --model, --upscale, --variant, checkpoints
# ======================================================================================


def test_train_zoo_model_on_tiny_data(tmp_path):
    write_mnist(tmp_path / "mnist", n_train=40, n_test=8, size=8)
    argv = ["--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"), "--epochs", "1"]
    argv += ["--batch-size", "18", "--model", "resnet20", "--optimizer", "sgd", "--quiet"]
    argv += ["--json", str(tmp_path / "m.json"), "--out", str(tmp_path / "w.npz")]
    assert run_cli(argv) == 0  # 36 training images: two steps
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["config"]["model"] == "resnet20"
    assert metrics["config"]["weight_decay"] == training.ZOO_WEIGHT_DECAY  # the zoo's default
    assert metrics["input_shape"] == [1, 8, 8]
    reference = models.resnet20(num_classes=10, in_channels=1)
    assert metrics["num_parameters"] == reference.num_parameters()
    assert (
        metrics["flops_per_image"] == reference.summary((1, 8, 8), print_summary=False).total_flops
    )
    assert np.isfinite(metrics["train_loss"][0])
    assert 0 <= metrics["test_accuracy"] <= 1
    weights = nn.load_weights(tmp_path / "w.npz", reference)
    nn.manual_seed(0)
    fresh = models.resnet20(num_classes=10, in_channels=1).state_dict()
    assert list(weights) == list(fresh)
    # the steps moved the weights and the running statistics away from a fresh model's
    assert not np.array_equal(
        weights["layer1.0.bn1.running_mean"], fresh["layer1.0.bn1.running_mean"]
    )
    assert int(weights["bn1.num_batches_tracked"]) == 2


def test_build_network_variants_and_errors(tmp_path, capsys):
    config = training.TrainConfig(model="resnet18")
    small = training.build_network(config, 3, (32, 32), 10)
    assert small.conv1.kernel_size == (3, 3)  # the CIFAR variant for 32x32 images
    assert isinstance(small.maxpool, nn.Identity)
    assert small.conv1.needs_input_grad is False
    config.variant = "imagenet"
    assert training.build_network(config, 3, (32, 32), 10).conv1.kernel_size == (7, 7)
    config.variant = "auto"
    assert training.build_network(config, 3, (64, 64), 10).conv1.kernel_size == (7, 7)
    config = training.TrainConfig(model="resnet20", variant="cifar")
    with pytest.raises(ValueError, match="no CIFAR variant"):
        training.build_network(config, 1, (8, 8), 10)
    demo = training.build_network(training.TrainConfig(), 1, (8, 8), 10)
    assert isinstance(demo, nn.Sequential)
    # LeNet-5's pooling needs more than 8x8 pixels; --upscale 4 makes them 32x32
    write_mnist(tmp_path, n_train=30, n_test=5, size=8)
    argv = ["--dataset", "mnist", "--data-dir", str(tmp_path), "--model", "lenet5"]
    argv += ["--epochs", "1", "--no-progress"]
    assert run_cli(argv) == 2
    assert "--upscale" in capsys.readouterr().err
    assert run_cli([*argv, "--upscale", "4", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["input_shape"] == [1, 32, 32]


def _final_weights(tmp_path, name, argv):
    out = tmp_path / f"{name}.npz"
    assert run_cli([*argv, "--out", str(out), "--json", str(tmp_path / f"{name}.json")]) == 0
    return nn.load_weights(out), json.loads((tmp_path / f"{name}.json").read_text())


def test_resume_continues_the_run_exactly(tmp_path, capsys):
    """Two epochs in one run, or one epoch, a checkpoint and a resumed second epoch:
    the same weights, bit for bit -- Adam's state, the cosine schedule, the shuffling
    and the dropout masks all continue where they stopped."""
    write_mnist(tmp_path / "data", n_train=40, n_test=8, size=8)
    common = ["--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--width", "4"]
    common += ["--batch-size", "8", "--dropout", "0.3", "--no-progress", "--seed", "3"]
    straight, straight_metrics = _final_weights(tmp_path, "straight", [*common, "--epochs", "2"])
    checkpoint = tmp_path / "run.ckpt"
    first = [*common, "--epochs", "1", "--checkpoint", str(checkpoint)]
    _, first_metrics = _final_weights(tmp_path, "first", first)
    assert checkpoint.is_file()
    resumed_argv = [*common, "--epochs", "2", "--resume", str(checkpoint)]
    resumed, metrics = _final_weights(tmp_path, "resumed", resumed_argv)
    assert "resumed after epoch 1" in capsys.readouterr().out
    assert list(resumed) == list(straight)
    for key, value in straight.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)
    assert metrics["resumed_after_epoch"] == 1
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert metrics["history"][0] == first_metrics["history"][0]
    assert metrics["val_accuracy"] == straight_metrics["val_accuracy"]
    assert metrics["test_accuracy"] == straight_metrics["test_accuracy"]
    # a resumed run must use the options of the run it continues
    assert run_cli([*common, "--epochs", "2", "--width", "8", "--resume", str(checkpoint)]) == 2
    assert "width 4 there, 8 here" in capsys.readouterr().err


def test_checkpoint_round_trip_and_errors(tmp_path):
    from fastconv import optim
    from fastconv.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint

    def make():
        nn.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
        return model, optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))

    model, opt = make()
    x = np.random.default_rng(0).standard_normal((4, 1, 4, 4)).astype(np.float32)
    for _ in range(2):
        model.backward(np.ones_like(model(x)))
        opt.step()
        opt.zero_grad()
    rng = np.random.default_rng(5)
    rng.random(3)
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model, opt, epoch=7, generators={"g": rng}, extra={"note": [1, 2]})
    assert read_checkpoint(path) == (7, {"note": [1, 2]})
    expected_draw = rng.random(4)

    other, other_opt = make()
    other_rng = np.random.default_rng(99)
    state = load_checkpoint(path, other, other_opt, generators={"g": other_rng})
    assert state.epoch == 7
    np.testing.assert_array_equal(other_rng.random(4), expected_draw)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value, err_msg=key)
    assert other_opt.param_groups[0]["betas"] == (0.8, 0.9)
    for p, q in zip(model.parameters(), other.parameters()):
        assert other_opt.state[q]["step"] == opt.state[p]["step"] == 2
        np.testing.assert_array_equal(other_opt.state[q]["exp_avg_sq"], opt.state[p]["exp_avg_sq"])
        assert other_opt.state[q]["exp_avg"].dtype == np.float32
    with pytest.raises(ValueError, match="holds the state of Adam, not SGD"):
        load_checkpoint(path, other, optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="no state for the generator 'h'"):
        load_checkpoint(path, other, generators={"h": other_rng})
    nn.save_weights(model, tmp_path / "w.npz")
    with pytest.raises(ValueError, match="not a readable checkpoint: no .meta. entry"):
        read_checkpoint(tmp_path / "w.npz")
    (tmp_path / "bad.ckpt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "bad.ckpt")
    assert not list(tmp_path.glob("*.partial"))
