"""``fastconv bench --op torch``: whole torch models, native against converted by
fastconv.torch (with and without autotune). The command end to end at smoke size, the
plan it builds, the summaries it judges, and the models it builds (torchvision's
parameter counts).

    python -m fastconv bench --op torch
"""

from __future__ import annotations

import pytest

from fastconv import cli
from fastconv.bench.catalogue import MODEL_CASES, OPS
from fastconv.bench.models import direction_batch, model_summaries
from fastconv.bench.report import load_targets, summarize
from fastconv.bench.runner import build_plan

torch = pytest.importorskip("torch")


def test_torch_command_smoke(capsys, monkeypatch):
    import fastconv.torch

    monkeypatch.setattr(fastconv.torch._modules, "AUTOTUNE_ROUNDS", 1)
    status = cli.main(
        [
            "bench",
            "--smoke",
            "--op",
            "torch",
            "--layers",
            "vgg11@32",  # the lightest model: 15 layers, 0.15 GFLOP an image
            "--direction",
            "infer_b1,train_b32",
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert status == 0  # every implementation passed its check
    assert "torch infer_b1: fastconv vs torch geomean" in text
    assert "torch train_b32: autotune vs torch geomean" in text
    assert "[target: geomean >= 1.1:" in text  # the training step's target
    assert "layers on fastconv" in text  # what autotuning kept


def test_plan_of_the_model_op():
    assert "torch" not in OPS  # 'all' leaves whole models out
    full = build_plan(["torch"])
    assert len(full.items) == len(MODEL_CASES) * 3
    smoke = build_plan(["torch"], mode="smoke", directions=["train_b32"])
    assert [label for label, _ in smoke.items] == [
        f"torch {case.name} train_b32" for case in MODEL_CASES if case.image == 32
    ]
    assert direction_batch("infer_b32") == ("infer", 32)
    with pytest.raises(ValueError, match="no case matches"):
        build_plan(["torch"], layers=["resnet99@*"])


def _result(case, direction, autotune, fastconv=1.0):
    return {
        "op": "torch",
        "case": case,
        "direction": direction,
        "impls": {
            "fastconv": {"speedup": {"torch": fastconv}},
            "autotune": {"speedup": {"torch": autotune}},
            "torch": {"speedup": {}},
        },
    }


def test_model_summaries_judge_autotune_against_the_targets():
    targets = load_targets()
    met = [
        _result("resnet18@224", "infer_b32", 1.5),
        _result("vgg11@32", "infer_b32", 1.2),
        _result("mobilenet_v2@32", "infer_b32", 1.25),
    ]
    (fastconv_line, autotune_line) = model_summaries(met, targets)
    assert fastconv_line["impl"] == "fastconv"
    assert "target" not in fastconv_line  # only autotune is judged
    assert autotune_line["geomean"] == pytest.approx((1.5 * 1.2 * 1.25) ** (1 / 3))
    assert autotune_line["meets"]
    slow_resnet = [_result("resnet18@224", "infer_b32", 1.35), *met[1:]]
    assert not model_summaries(slow_resnet, targets)[1]["meets"]  # resnet18@224 < 1.4
    one_below = [*met, _result("vgg11@224", "infer_b32", 0.9)]
    assert not model_summaries(one_below, targets)[1]["meets"]  # a model below 1.0
    # summarize routes the model op here and nowhere else
    assert [s.get("impl") for s in summarize(met)] == ["fastconv", "autotune"]


@pytest.mark.parametrize(
    ("network", "image", "parameters"),
    [
        ("resnet18", 224, 11_689_512),  # torchvision's published counts
        ("mobilenet_v2", 224, 3_504_872),
        ("resnet18", 32, 11_173_962),
        ("vgg11", 32, 9_225_610),
    ],
)
def test_models_have_torchvisions_layouts(network, image, parameters):
    from fastconv.bench.torch_models import build_network

    model = build_network(network, image)
    assert sum(p.numel() for p in model.parameters()) == parameters
    with torch.inference_mode():
        out = model.eval()(torch.zeros(1, 3, image, image))
    assert out.shape == (1, 1000 if image == 224 else 10)
