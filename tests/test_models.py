"""Tests of fastconv.models: every zoo model against the same network written in torch
(``fastconv.bench.torch_models``, torchvision's code without torchvision): module names
and state_dict keys, eval outputs (float64 and float32), train-mode outputs, running statistics and
gradients (float64); summary() totals against torchvision's published figures; the
registry, the builders' options and the initialisation."""

from __future__ import annotations

import contextlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from fastconv import models, nn

# (name, builder kwargs, input shape): ImageNet layouts at the smallest sizes their
# max-pools accept (AlexNet 63x63, VGG 32x32; ResNet, GoogLeNet, MobileNetV2 at 64x64
# keep 2x2 planes to the end), CIFAR variants at 32x32, and digits' 1x8x8.
PARITY_CASES = [
    ("lenet5", {}, (2, 1, 28, 28)),
    ("alexnet", {}, (2, 3, 63, 63)),
    ("vgg11", {}, (2, 3, 32, 32)),
    ("vgg11_bn", {}, (2, 3, 32, 32)),
    ("vgg16", {}, (2, 3, 32, 32)),
    ("vgg16_bn", {}, (2, 3, 32, 32)),
    ("googlenet", {}, (2, 3, 64, 64)),
    ("googlenet", {"aux_logits": True, "num_classes": 10}, (2, 3, 64, 64)),
    ("resnet18", {}, (2, 3, 64, 64)),
    ("resnet34", {}, (2, 3, 64, 64)),
    ("resnet50", {}, (2, 3, 64, 64)),
    ("mobilenet_v2", {}, (2, 3, 64, 64)),
    ("resnet20", {}, (2, 3, 32, 32)),
    ("resnet56", {}, (2, 3, 32, 32)),
    ("resnet20", {"in_channels": 1}, (2, 1, 8, 8)),
    ("vgg11_bn", {"cifar": True, "num_classes": 10}, (2, 3, 32, 32)),
    ("resnet18", {"cifar": True, "num_classes": 10}, (2, 3, 32, 32)),
    ("mobilenet_v2", {"cifar": True, "num_classes": 10}, (2, 3, 32, 32)),
]


def _case_id(case):
    name, kwargs, _ = case
    return "-".join([name, *(f"{k}={v}" for k, v in kwargs.items())])


# ======================================================================================
# Helpers
# ======================================================================================


def rel_error(actual, expected, scale=None):
    """max|actual - expected| / max|expected| (or / ``scale``), in blocks: VGG's first
    linear layer holds 10^8 values, and whole-array temporaries would double the memory."""
    a, b = np.ravel(actual), np.ravel(expected)
    assert a.shape == b.shape
    step = 1 << 20
    diff = max(
        float(np.abs(a[i : i + step] - b[i : i + step]).max()) for i in range(0, a.size, step)
    )
    if scale is None:
        scale = max(float(np.abs(b[i : i + step]).max()) for i in range(0, b.size, step))
    return diff / scale if scale > 0 else diff


@pytest.fixture
def skip_init(monkeypatch):
    """Building skips the random initialisation (weights start at zero): the parity
    tests load torch's weights over it, and drawing VGG's 10^8 normals costs seconds."""

    def zeros(tensor, *args, **kwargs):
        return nn.init.zeros_(tensor)

    for fill in ("kaiming_uniform_", "uniform_", "kaiming_normal_", "normal_"):
        monkeypatch.setattr(nn.init, fill, zeros)


@contextlib.contextmanager
def torch_default_dtype(torch, dtype):
    """torch builds and initialises straight in ``dtype`` (no float32 copy to convert)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def num_classes_of(name, kwargs):
    default = inspect.signature(getattr(models, name)).parameters["num_classes"].default
    return kwargs.get("num_classes", default)


def torch_twin(name, kwargs):
    """The torch model (float64) of a case, with batch norms away from their defaults."""
    torch = pytest.importorskip("torch")
    from fastconv.bench import torch_models

    options = {k: v for k, v in kwargs.items() if k != "num_classes"}
    torch.manual_seed(0)
    with torch_default_dtype(torch, torch.float64):
        model = torch_models.build(name, num_classes_of(name, kwargs), **options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.5, 0.5, generator=generator)
    return torch, model


def outputs_of(result):
    """A model's outputs as a tuple (GoogLeNet's training outputs are a namedtuple)."""
    return tuple(result) if isinstance(result, tuple) else (result,)


def dropouts_to_eval(*modules):
    """Train mode without dropout's random masks, which fastconv and torch draw apart."""
    for model in modules:
        for sub in model.modules():
            if type(sub).__name__ == "Dropout":
                sub.eval()


def gradient_scales(torch_model):
    """Per parameter: the largest |gradient| among its module's parameters.  A conv bias
    before a train-mode batch norm, or a batch norm's bias whose output reaches only
    train-mode batch norms, has a gradient that is zero up to rounding: relative to
    itself it is noise, relative to the weight gradient of its layer it is checked."""
    largest = {}
    for name, param in torch_model.named_parameters():
        module = name.rpartition(".")[0]
        low, high = param.grad.aminmax()  # max |g| without a temporary |g|
        value = max(-float(low), float(high))
        largest[module] = max(largest.get(module, 0.0), value)
    return {name: largest[name.rpartition(".")[0]] for name, _ in torch_model.named_parameters()}


# ======================================================================================
# Parity with torch
# ======================================================================================


def _parity_param(case):
    # AlexNet's and VGG's ImageNet heads hold 10^7-10^8 weights: seconds of memory traffic
    slow = case[0] in ("alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn") and not case[1]
    return pytest.param(case, id=_case_id(case), marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("case", [_parity_param(c) for c in PARITY_CASES])
def test_model_matches_torch(case, skip_init):
    name, kwargs, shape = case
    torch, tmodel = torch_twin(name, kwargs)
    model = models.get_model(name, **kwargs)

    # the same modules under the same names, the same keys in the same order
    assert [n for n, _ in model.named_modules()] == [n for n, _ in tmodel.named_modules()]
    tstate = tmodel.state_dict()
    assert list(model.state_dict()) == list(tstate)
    model.double()
    model.load_state_dict({k: v.numpy() for k, v in tstate.items()})
    del tstate

    x = np.random.default_rng(0).standard_normal(shape)
    tmodel.eval()
    model.eval()
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x)).numpy()
    with nn.no_grad():
        logits = model(x)
    assert logits.shape == (shape[0], num_classes_of(name, kwargs))
    assert rel_error(logits, expected) <= 1e-5, "eval, float64"

    # train mode: batch statistics, running statistics updated, gradients; torch runs
    # first and its model goes before fastconv's backward (VGG's weights are 1.1 GB)
    buffers = {k: v.copy() for k, v in model.named_buffers()}
    tmodel.train()
    model.train()
    dropouts_to_eval(tmodel, model)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    toutputs = outputs_of(tmodel(xt))
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(out.shape) for out in toutputs]
    torch.autograd.backward(toutputs, [torch.from_numpy(g) for g in grads])
    toutputs = [out.detach().numpy() for out in toutputs]
    tgrads = {k: p.grad.numpy() for k, p in tmodel.named_parameters()}
    scales = gradient_scales(tmodel)
    tbuffers = {k: v.numpy() for k, v in tmodel.named_buffers()}
    tgrad_input = xt.grad.numpy()
    del tmodel, xt

    outputs = outputs_of(model(x))
    assert len(outputs) == len(toutputs)
    for out, tout in zip(outputs, toutputs):
        assert rel_error(out, tout) <= 1e-9, "train-mode output"
    grad_input = model.backward(tuple(grads) if len(grads) > 1 else grads[0])
    assert rel_error(grad_input, tgrad_input) <= 1e-9, "input gradient"
    for pname, param in model.named_parameters():
        assert rel_error(param.grad, tgrads[pname], scales[pname]) <= 1e-9, pname
    for bname, value in model.named_buffers():
        if value.dtype.kind == "f":
            assert rel_error(value, tbuffers[bname]) <= 1e-9, bname
        else:
            assert int(value) == int(tbuffers[bname]) == 1, bname
    del tgrads

    # float32, against the float64 result of the same weights and statistics
    for bname, value in buffers.items():
        prefix, _, leaf = bname.rpartition(".")
        model.get_submodule(prefix)._buffers[leaf] = value
    model.zero_grad()
    model.float().eval()
    with nn.no_grad():
        logits32 = model(x.astype(np.float32))
    assert logits32.dtype == np.float32
    assert rel_error(logits32, expected) <= 1e-4, "eval, float32"

    summary = model.summary(shape[1:], print_summary=False)
    assert summary.output_shape == (num_classes_of(name, kwargs),)
    assert summary.total_params == model.num_parameters()


# ======================================================================================
# summary(): totals against torchvision's published figures
# ======================================================================================

# parameters (1000 classes) and multiply-accumulates at 3x224x224, which torchvision's
# model tables list as "GFLOPS"
PUBLISHED = {
    "alexnet": (61_100_840, 0.71),
    "vgg11": (132_863_336, 7.61),
    "vgg16": (138_357_544, 15.47),
    "googlenet": (6_624_904, 1.50),
    "resnet18": (11_689_512, 1.81),
    "resnet34": (21_797_672, 3.66),
    "resnet50": (25_557_032, 4.09),
    "mobilenet_v2": (3_504_872, 0.30),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_summary_totals_match_torchvision(name, skip_init):
    params, gmacs = PUBLISHED[name]
    summary = models.get_model(name).summary((3, 224, 224), print_summary=False)
    assert summary.total_params == params
    assert summary.trainable_params == params
    assert round(summary.total_macs / 1e9, 2) == gmacs
    assert summary.total_flops == 2 * summary.total_macs
    assert summary.output_shape == (1000,)
    assert summary.param_bytes == 4 * params
    assert summary.activation_bytes == sum(layer.activation_bytes for layer in summary.layers)


def test_vgg16_summary_table(skip_init, capsys):
    summary = models.vgg16().summary((3, 224, 224))
    printed = capsys.readouterr().out
    layers = {layer.name: layer for layer in summary.layers}
    first = layers["features.0"]
    assert (first.kind, first.output_shape, first.params) == ("Conv2d", (64, 224, 224), 1792)
    assert first.macs == 64 * 224 * 224 * 3 * 3 * 3
    assert first.activation_bytes == 64 * 224 * 224 * 4
    assert layers["classifier.0"].macs == 512 * 7 * 7 * 4096
    assert layers["features.1"].macs == 0  # ReLU: not counted
    assert layers["features"].macs is None  # a container: its layers have the counts
    assert layers["features"].activation_bytes == 0  # hands on its last layer's array

    # every conv and ReLU output is a new array, as are the pools' and the linear
    # layers'; the flatten is a view and the dropouts (eval) hand on their input
    def stage(convs, channels, size):
        return 2 * convs * channels * size * size + channels * (size // 2) ** 2

    values = (
        stage(2, 64, 224) + stage(2, 128, 112) + stage(3, 256, 56) + stage(3, 512, 28)
        + stage(3, 512, 14) + 512 * 7 * 7 + 4 * 4096 + 1000
    )  # fmt: skip
    assert summary.activation_bytes == 4 * values
    assert "Total params: 138,357,544" in printed
    assert "FLOPs (one sample, forward): 30.94G (15.47G multiply-accumulates)" in printed
    assert "Params size: 527.8 MiB" in printed
    assert printed.count("\n") == len(summary.layers) + 10


# ======================================================================================
# Registry, builder options, initialisation
# ======================================================================================

ALL_MODELS = [
    "alexnet",
    "googlenet",
    "lenet5",
    "mobilenet_v2",
    "resnet18",
    "resnet20",
    "resnet34",
    "resnet50",
    "resnet56",
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
]
WITH_CIFAR_VARIANT = {
    "mobilenet_v2",
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
}


def test_registry():
    assert models.list_models() == ALL_MODELS
    assert {n for n in ALL_MODELS if models.has_cifar_variant(n)} == WITH_CIFAR_VARIANT
    model = models.get_model("ResNet20", num_classes=3, in_channels=1)
    assert isinstance(model, models.CifarResNet)
    assert model.fc.out_features == 3
    assert model.conv1.in_channels == 1
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet20"):
        models.get_model("resnet19")
    with pytest.raises(TypeError):
        models.get_model("resnet20", cifar=True)  # it is a CIFAR network already


@pytest.mark.parametrize("name", ALL_MODELS)
def test_in_channels_and_num_classes(name, skip_init):
    model = models.get_model(name, num_classes=7, in_channels=2)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 2
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == 7


def test_cifar_variants_keep_resolution():
    shapes = {}
    for name in ("resnet18", "mobilenet_v2", "vgg11_bn"):
        model = models.get_model(name, num_classes=10, cifar=True)
        summary = model.summary((3, 32, 32), print_summary=False)
        shapes[name] = {layer.name: layer.output_shape for layer in summary.layers}
    resnet = shapes["resnet18"]
    assert resnet["conv1"] == (64, 32, 32)  # 3x3 stride-1 stem, no max-pool
    assert resnet["maxpool"] == (64, 32, 32)
    assert resnet["layer4"] == (512, 4, 4)
    mobilenet = shapes["mobilenet_v2"]
    assert mobilenet["features.0"] == (32, 32, 32)
    assert mobilenet["features.3"] == (24, 32, 32)  # stride 1 in the 24-channel stage
    assert mobilenet["features.18"] == (1280, 4, 4)
    vgg = shapes["vgg11_bn"]
    assert vgg["features"] == (512, 1, 1)
    assert vgg["classifier"] == (10,)
    resnet = models.resnet18(num_classes=10, cifar=True)
    assert resnet.conv1.weight.shape == (64, 3, 3, 3)
    assert isinstance(resnet.maxpool, nn.Identity)
    assert list(models.vgg16(num_classes=10, cifar=True).state_dict())[-2:] == [
        "classifier.weight",
        "classifier.bias",
    ]
    assert models.vgg16(num_classes=10, cifar=True).num_parameters() == 14_719_818


def test_cifar_resnets_follow_he_et_al():
    for name, blocks, params in (("resnet20", 3, 269_722), ("resnet56", 9, 853_018)):
        model = models.get_model(name)
        assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [blocks] * 3
        assert model.num_parameters() == params
        assert not hasattr(model, "layer4")
        shortcut = model.layer2[0].downsample
        assert isinstance(shortcut, models.ZeroPadShortcut)  # option A: no weights
        assert shortcut.num_parameters() == 0
        assert model.layer1[0].downsample is None
        summary = model.summary((3, 32, 32), print_summary=False)
        rows = {layer.name: layer.output_shape for layer in summary.layers}
        assert [rows[f"layer{i}"] for i in (1, 2, 3)] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_zero_pad_shortcut_forward_and_adjoint():
    shortcut = models.ZeroPadShortcut(2, 6, stride=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 5, 5))
    y = shortcut(x)
    assert y.shape == (2, 6, 3, 3)
    np.testing.assert_array_equal(y[:, 2:4], x[:, :, ::2, ::2])
    assert not y[:, :2].any()
    assert not y[:, 4:].any()
    g = rng.standard_normal(y.shape)
    grad = shortcut.backward(g)
    # backward is the adjoint of forward: <forward(x), g> == <x, backward(g)>
    assert float((y * g).sum()) == pytest.approx(float((x * grad).sum()), rel=1e-12)
    with pytest.raises(ValueError, match="at least in_channels"):
        models.ZeroPadShortcut(4, 2)


def _std_ratio(weight, std):
    return float(np.std(weight)) / std


def test_initialisation_follows_torchvision():
    nn.manual_seed(0)
    resnet = models.resnet20()
    conv = resnet.layer2[0].conv1.weight.data  # kaiming normal, fan_out, relu gain
    assert _std_ratio(conv, np.sqrt(2.0 / (32 * 9))) == pytest.approx(1.0, abs=0.05)
    assert np.all(resnet.layer1[0].bn1.weight.data == 1)
    assert np.all(resnet.layer1[0].bn1.bias.data == 0)
    zeroed = models.resnet20(zero_init_residual=True)
    assert all(np.all(block.bn2.weight.data == 0) for block in zeroed.layer1)
    assert np.all(models.resnet50(zero_init_residual=True).layer1[0].bn3.weight.data == 0)

    mobilenet = models.mobilenet_v2(num_classes=10, cifar=True)
    assert _std_ratio(mobilenet.classifier[1].weight.data, 0.01) == pytest.approx(1.0, abs=0.05)
    assert np.all(mobilenet.classifier[1].bias.data == 0)

    googlenet = models.googlenet(num_classes=10)
    weight = googlenet.inception4c.branch2[1].conv.weight.data
    assert _std_ratio(weight, 0.01) == pytest.approx(1.0, abs=0.05)

    vgg = models.vgg11_bn(num_classes=10, cifar=True)
    assert _std_ratio(vgg.features[4].weight.data, np.sqrt(2.0 / (128 * 9))) == pytest.approx(
        1.0, abs=0.05
    )
    assert np.all(vgg.features[4].bias.data == 0)
    assert _std_ratio(vgg.classifier.weight.data, 0.01) == pytest.approx(1.0, abs=0.1)

    lenet = models.lenet5()  # the layers' own initialisation: U(-1/sqrt(fan_in), ...)
    bound = 1 / np.sqrt(6 * 25)
    assert np.abs(lenet.features[3].weight.data).max() <= bound
    assert np.abs(lenet.features[3].weight.data).max() > 0.9 * bound


def test_googlenet_aux_heads():
    nn.manual_seed(0)
    model = models.googlenet(num_classes=5, aux_logits=True).double()
    assert [n for n, _ in model.named_children()][-5:] == [
        "aux1",
        "aux2",
        "avgpool",
        "dropout",
        "fc",
    ]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64))
    dropouts_to_eval(model)
    outputs = model(x)
    assert isinstance(outputs, models.GoogLeNetOutputs)
    assert [o.shape for o in outputs] == [(2, 5)] * 3
    g = np.random.default_rng(1).standard_normal((2, 5))
    zeros = np.zeros_like(g)
    # the logits' gradient alone is the three gradients with zero for the aux heads
    model.zero_grad()
    grad_alone = model.backward(g)
    alone = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    model(x)
    model.zero_grad()
    grad_zeros = model.backward(models.GoogLeNetOutputs(g, zeros, zeros))
    np.testing.assert_allclose(grad_alone, grad_zeros, rtol=1e-12, atol=1e-15)
    assert not any(n.startswith("aux") for n in alone)
    for name, param in model.named_parameters():
        if name.startswith("aux"):
            assert not param.grad.any(), name
        else:
            np.testing.assert_allclose(param.grad, alone[name], rtol=1e-12, atol=1e-15)
    model.eval()
    with nn.no_grad():
        assert model(x).shape == (2, 5)  # eval mode: the logits alone
    # the published weights (with aux heads) load into a model without them
    plain = models.googlenet(num_classes=5)
    result = plain.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys == []
    assert len(result.unexpected_keys) == len(model.aux1.state_dict()) * 2
    assert all(k.startswith("aux") for k in result.unexpected_keys)


def test_readme_model_zoo_example_runs(capsys):
    readme = Path(__file__).resolve().parent.parent / "README.md"
    if not readme.exists():
        pytest.skip("no README beside the tests (an installed copy of the suite)")
    match = re.search(r"## Model zoo\n.*?```python\n(.*?)```", readme.read_text(), re.S)
    assert match, "the README lost its model zoo example"
    exec(compile(match.group(1), "README.md model zoo", "exec"), {})
    assert "Total params: 11,173,962" in capsys.readouterr().out
