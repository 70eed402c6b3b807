"""``fastconv bench --op models``: every zoo network against its torch twin. The command
end to end at smoke size, the plan, the cases' coverage of the zoo, the summaries'
targets and the time shares of fastconv's step.

    python -m fastconv bench --op models
"""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import cli, models, nn, optim
from fastconv.bench.catalogue import CIFAR_VARIANTS, OPS, ZOO_CASES
from fastconv.bench.models import model_summaries
from fastconv.bench.report import load_targets
from fastconv.bench.runner import build_plan
from fastconv.bench.zoo import SHARE_ORDER, layer_kind, time_shares


def test_every_zoo_network_is_a_case_at_each_resolution_it_has():
    assert set(CIFAR_VARIANTS) == {n for n in models.list_models() if models.has_cifar_variant(n)}
    networks = {case.network for case in ZOO_CASES}
    assert networks == set(models.list_models())
    for name in CIFAR_VARIANTS:
        assert {case.image for case in ZOO_CASES if case.network == name} == {32, 224}
    cifar = {c.name: c for c in ZOO_CASES if c.image < 64}
    assert cifar["resnet18@32"].cifar
    assert cifar["resnet18@32"].classes == 10
    assert not cifar["resnet20@32"].cifar  # a CIFAR network with no variant to ask for
    assert cifar["lenet5@28"].in_channels == 1


def test_plan_of_the_models_op():
    assert "models" not in OPS  # 'all' leaves whole models out
    assert len(build_plan(["models"]).items) == len(ZOO_CASES) * 3
    smoke = build_plan(["models"], mode="smoke", directions=["infer_b1"], layers=["resnet*"])
    labels = [label for label, _ in smoke.items]
    assert labels == [f"models {n}@32 infer_b1" for n in ("resnet18", "resnet34", "resnet50")] + [
        "models resnet20@32 infer_b1",
        "models resnet56@32 infer_b1",
    ]
    with pytest.raises(ValueError, match="no case matches"):
        build_plan(["models"], layers=["resnet99@*"])


def _zoo_result(case, direction, speedup):
    return {
        "op": "models",
        "case": case,
        "direction": direction,
        "impls": {"fastconv": {"speedup": {"torch": speedup}}, "torch": {"speedup": {}}},
    }


def test_model_summaries_judge_the_zoo_against_its_targets():
    targets = load_targets()
    met = [_zoo_result("resnet18@32", "train_b32", 1.3), _zoo_result("vgg11@32", "train_b32", 1.2)]
    (line,) = model_summaries(met, targets)
    assert (line["op"], line["impl"], line["cases"]) == ("models", "fastconv", 2)
    assert line["target"] == "geomean >= 1.2, no model < 1.0"
    assert line["meets"]
    below = [*met, _zoo_result("lenet5@28", "train_b32", 0.95)]
    assert not model_summaries(below, targets)[0]["meets"]
    slow = [_zoo_result("resnet18@32", "infer_b32", 1.2)]
    assert not model_summaries(slow, targets)[0]["meets"]  # geomean 1.2 < 1.3


def test_time_shares_cover_the_step_by_layer_kind():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    assert [layer_kind(m) for m in model] == [
        "conv",
        "norm",
        "elementwise",
        "pool",
        "elementwise",
        "linear",
    ]
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8), np.float32)
    y = np.arange(4)

    def step():
        criterion(model(x), y)
        model.backward(criterion.backward())
        optimizer.step()
        optimizer.zero_grad()

    shares = time_shares(step, model, optimizer)
    assert list(shares) == list(SHARE_ORDER)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in shares.values())
    assert all(shares[kind] > 0 for kind in ("conv", "optimizer", "norm"))
    # the timers are gone again: the methods are the classes' own
    for layer in model:
        assert not {"forward", "backward", "_normalise", "_backward", "_activate"} & set(
            vars(layer)
        )
    assert "step" not in vars(optimizer)


def test_models_command_smoke(capsys):
    pytest.importorskip("torch")
    status = cli.main(
        [
            "bench",
            "--smoke",
            "--op",
            "models",
            "--layers",
            "resnet20@32,lenet5@28",
            "--direction",
            "infer_b1,train_b32",
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert status == 0  # fastconv and torch passed their checks against float64 torch
    assert "models train_b32: fastconv vs torch geomean" in text
    assert "[target: geomean >= 1.2, no model < 1.0:" in text
    assert "optimizer" in text  # the time shares of the step
    assert "img/s" in text
