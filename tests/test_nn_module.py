"""The fastconv.nn Module API: parameters, buffers and submodules, Sequential indexing,
state_dict round trips (with torch.nn too) and loading errors, train/eval propagation,
gradient accumulation and freezing, no_grad, saved state of reused modules, dtype casts,
custom modules and their repr, summaries, hooks, gradient clipping and weight files,
conversion from torch, copies, and skipping the input gradient; and a small ResNet that
matches a hand-written torch ResNet step for step under SGD and learns separable data.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from nn_helpers import check_grads, make_input

import fastconv.functional as F
from fastconv import nn, optim

# ======================================================================================
# Module API
# ======================================================================================


def small_model(dtype=np.float32):
    nn.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(8, 3),
    )
    return model.to(dtype)


def test_parameters_and_named_parameters():
    model = small_model()
    names = [n for n, _ in model.named_parameters()]
    assert names == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "5.weight",
        "5.bias",
        "8.weight",
        "8.bias",
    ]
    assert len(list(model.parameters())) == 8
    assert model.num_parameters() == 4 * 9 + 4 + 8 + 64 * 8 + 8 + 8 * 3 + 3
    assert [n for n, _ in model.named_buffers()] == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert [n for n, _ in model.named_modules()][:3] == ["", "0", "1"]
    assert model.get_submodule("1") is model[1]


def test_sequential_indexing():
    model = small_model()
    assert len(model) == 9
    assert isinstance(model[0], nn.Conv2d)
    assert isinstance(model[-1], nn.Linear)
    head = model[:4]
    assert isinstance(head, nn.Sequential)
    assert len(head) == 4
    assert head[0] is model[0]
    assert list(head.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    with pytest.raises(IndexError):
        model[9]
    seq = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), act=nn.ReLU()))
    assert list(seq.state_dict()) == ["conv.weight", "conv.bias"]
    seq.append(nn.Flatten())
    assert len(seq) == 3
    assert [type(m).__name__ for m in seq] == ["Conv2d", "ReLU", "Flatten"]
    del seq[1]
    assert [type(m).__name__ for m in seq] == ["Conv2d", "Flatten"]
    modules = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    assert len(list(modules.parameters())) == 4
    assert len(modules) == 2


def test_state_dict_round_trip_with_torch():
    torch = pytest.importorskip("torch")
    model = small_model()
    tmodel = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 8),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(8, 3),
    )
    tmodel(torch.randn(4, 1, 8, 8))  # non-trivial running stats
    result = model.load_state_dict(tmodel.state_dict())
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    for key, value in tmodel.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value.numpy())
        assert model.state_dict()[key].dtype == (np.int64 if "num_batches" in key else np.float32)
    # and back
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    tmodel.load_state_dict(nn.to_torch_state_dict(model.state_dict()))
    model.eval()
    tmodel.eval()
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        model(x), tmodel(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5
    )


def test_load_state_dict_errors():
    model = small_model()
    state = model.state_dict()
    bad = dict(state)
    del bad["0.weight"]
    bad["extra"] = np.zeros(1)
    with pytest.raises(RuntimeError, match='Missing key.*"0.weight"') as info:
        model.load_state_dict(bad)
    assert 'Unexpected key(s) in state_dict: "extra"' in str(info.value)
    result = model.load_state_dict(bad, strict=False)
    assert result.missing_keys == ["0.weight"]
    assert result.unexpected_keys == ["extra"]
    wrong = dict(state)
    wrong["5.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(RuntimeError, match="size mismatch for 5.weight"):
        model.load_state_dict(wrong)


def test_state_dict_is_a_copy_and_casts_on_load():
    model = small_model()
    state = model.state_dict()
    state["0.weight"][...] = 0
    assert model[0].weight.data.any()
    model.load_state_dict(
        {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in state.items()}
    )
    assert model[0].weight.data.dtype == np.float32
    assert not model[0].weight.data.any()


def test_train_eval_propagate():
    model = small_model()
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_zero_grad_and_accumulation():
    model = small_model(np.float64)
    x = make_input((2, 1, 8, 8), "smooth", np.float64)
    g = np.ones((2, 3))
    model[7].eval()  # deterministic
    model(x)
    model.backward(g)
    first = model[0].weight.grad.copy()
    model(x)
    model.backward(g)
    np.testing.assert_allclose(model[0].weight.grad, 2 * first)  # gradients accumulate
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.zero_grad(set_to_none=False)
    assert all(p.grad is None for p in model.parameters())


def test_freezing_skips_weight_gradients(monkeypatch):
    model = small_model(np.float64)
    model[0].requires_grad_(False)
    model[5].weight.requires_grad = False
    calls = []
    original = F.conv2d_weight
    monkeypatch.setattr(F, "conv2d_weight", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = make_input((4, 1, 8, 8), "smooth", np.float64)
    crit = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    for _ in range(2):
        crit(model(x), np.array([0, 1, 2, 0]))
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()
    assert calls == []  # the frozen conv computed no weight gradient
    for name, p in model.named_parameters():
        if name in ("0.weight", "0.bias", "5.weight"):
            assert p.grad is None
            np.testing.assert_array_equal(p.data, before[name], err_msg=name)
        else:
            assert not np.array_equal(p.data, before[name]), name
    assert model.num_parameters(trainable_only=True) == model.num_parameters() - 40 - 64 * 8
    model.requires_grad_(True)
    assert all(p.requires_grad for p in model.parameters())


def test_no_grad_saves_nothing():
    model = small_model()
    x = make_input((2, 1, 8, 8), "smooth", np.float32)
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        model(x)
    assert nn.is_grad_enabled()
    with pytest.raises(RuntimeError, match="without a matching forward"):
        model.backward(np.ones((2, 3), np.float32))


def test_reused_module_backpropagates_in_reverse_order():
    """One Tanh called twice in a forward (like torchvision's shared ReLU)."""
    act = nn.Tanh()
    lin = nn.Linear(3, 3).double()

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act = lin, act

        def forward(self, x):
            return self.act(self.lin(self.act(x)))

        def backward(self, g):
            return self.act.backward(self.lin.backward(self.act.backward(g)))

    model = Twice()
    x = make_input((4, 3), "smooth", np.float64)
    check_grads(model, x)


def test_new_forward_drops_unused_saved_state():
    model = small_model()
    x = make_input((2, 1, 8, 8), "smooth", np.float32)
    for _ in range(5):
        model(x)
    assert all(len(m._saved) <= 1 for m in model.modules())
    model.backward(np.ones((2, 3), np.float32))
    assert all(len(m._saved) == 0 for m in model.modules())


def test_to_double_and_float():
    model = small_model().double()
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model[1].running_mean.dtype == np.float64
    assert model[1].num_batches_tracked.dtype == np.int64
    model.float()
    assert all(p.dtype == np.float32 for p in model.parameters())


def test_custom_module_registration_and_repr():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
            self.head = nn.Linear(2, 2)
            self.scale = nn.Parameter(np.ones(1, np.float32))
            self.register_buffer("steps", np.zeros(1, np.int64))
            self.register_buffer("cache", np.zeros(1), persistent=False)
            self.note = "plain attribute"

    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "scale",
        "features.0.weight",
        "features.0.bias",
        "head.weight",
        "head.bias",
    ]
    assert list(net.state_dict()) == [
        "scale",
        "steps",
        "features.0.weight",
        "features.0.bias",
        "head.weight",
        "head.bias",
    ]
    assert net.note == "plain attribute"
    assert repr(net) == (
        "Net(\n"
        "  (features): Sequential(\n"
        "    (0): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1))\n"
        "    (1): ReLU()\n"
        "  )\n"
        "  (head): Linear(in_features=2, out_features=2, bias=True)\n"
        ")"
    )
    with pytest.raises(TypeError):
        net.head = 3  # a registered module can only be replaced by a Module or None
    with pytest.raises(NotImplementedError):
        net(np.zeros(1))


def test_summary_lecture_example(capsys):
    """32x32x3 input, ten 5x5 filters, stride 1, pad 2 -> 32x32x10 and 760 parameters."""
    model = nn.Sequential(nn.Conv2d(3, 10, 5, stride=1, padding=2))
    summary = model.summary((3, 32, 32))
    printed = capsys.readouterr().out
    assert summary.rows == [("0", "Conv2d", (10, 32, 32), 760)]
    assert summary.total_params == 760
    assert summary.trainable_params == 760
    assert summary.output_shape == (10, 32, 32)
    assert "0 (Conv2d)" in printed
    assert "10x32x32" in printed
    assert "760" in printed
    assert "Total params: 760" in printed
    # a single layer summarises itself
    single = nn.Conv2d(3, 10, 5, stride=1, padding=2).summary((3, 32, 32), print_summary=False)
    assert single.rows == [("", "Conv2d", (10, 32, 32), 760)]


def test_summary_nested_model_keeps_state(capsys):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.BasicBlock.make(4, 8, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    model[0].requires_grad_(False)
    state = model.state_dict()
    summary = model.summary((1, 8, 8))
    out = capsys.readouterr().out
    assert model.training
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[key])  # no running-stat update
    rows = {name: (shape, count) for name, _, shape, count in summary.rows}
    assert rows["3"] == ((8, 4, 4), None)  # a container
    assert rows["3.conv1"] == ((8, 4, 4), 4 * 8 * 9)
    assert rows["3.downsample.0"] == ((8, 4, 4), 32)
    assert rows["6"] == ((10,), 90)
    assert summary.total_params == model.num_parameters()
    assert summary.non_trainable_params == 40
    assert "Non-trainable params: 40" in out
    assert sum(c for _, _, _, c in summary.rows if c) == summary.total_params


def test_maxpool_return_indices_and_module_hooks():
    pool = nn.MaxPool2d(2, return_indices=True)
    x = make_input((1, 1, 4, 4), "distinct", np.float32)
    out, idx = pool(x)
    assert idx.dtype == np.int64
    assert out.shape == (1, 1, 2, 2)
    grad = pool.backward(np.ones_like(out))
    assert grad.sum() == 4
    assert (grad.reshape(-1)[idx.reshape(-1)] == 1).all()
    seen = []
    handle = pool.register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    pool(x)
    handle.remove()
    pool(x)
    assert seen == ["MaxPool2d"]


def test_parameter_basics():
    p = nn.Parameter(np.ones((2, 3), np.float32))
    assert p.shape == (2, 3)
    assert p.dtype == np.float32
    assert p.numel() == 6
    assert p.ndim == 2
    assert np.asarray(p) is p.data
    assert "requires_grad=False" in repr(p.requires_grad_(False))
    with pytest.raises(TypeError):
        nn.Parameter(np.ones(2, np.int32))


def test_clip_grad_norm_and_weight_files(tmp_path):
    model = small_model()
    x = make_input((2, 1, 8, 8), "smooth", np.float32)
    model(x)
    model.backward(np.full((2, 3), 10.0, np.float32))
    total = nn.clip_grad_norm_(model.parameters(), 1.0)
    assert total > 1.0
    norm = np.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in model.parameters()))
    assert norm == pytest.approx(1.0, rel=1e-4)
    path = tmp_path / "w.npz"
    nn.save_weights(model, path)
    other = small_model()
    for p in other.parameters():
        p.data[...] = 0
    nn.load_weights(path, other)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value)


def test_from_torch_round_trip():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = (
        torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(4),
            torch.nn.LeakyReLU(0.1),
            torch.nn.AvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(16, 5),
            torch.nn.Sigmoid(),
        )
        .double()
        .eval()
    )
    model = nn.from_torch(tmodel)
    assert repr(model) == repr(tmodel)
    assert not model.training
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    np.testing.assert_allclose(model(x), tmodel(torch.tensor(x)).detach().numpy(), rtol=1e-12)


# ======================================================================================
# A small ResNet: parity with a hand-written torch ResNet, and it trains
# ======================================================================================


def small_resnet(dtype=np.float32):
    nn.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.BasicBlock.make(8, 8),
        nn.BasicBlock.make(8, 16, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).to(dtype)


def torch_resnet():
    torch = pytest.importorskip("torch")
    from torch import nn as tnn

    class Block(tnn.Module):  # torchvision.models.resnet.BasicBlock
        def __init__(self, inplanes, planes, stride=1):
            super().__init__()
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = tnn.Sequential(
                    tnn.Conv2d(inplanes, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes)
                )

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    return tnn.Sequential(
        tnn.Conv2d(1, 8, 3, padding=1, bias=False),
        tnn.BatchNorm2d(8),
        tnn.ReLU(),
        Block(8, 8),
        Block(8, 16, 2),
        tnn.AdaptiveAvgPool2d(1),
        tnn.Flatten(),
        tnn.Linear(16, 10),
    ).double(), torch


def test_resnet_trains_like_torch():
    tmodel, torch = torch_resnet()
    model = small_resnet(np.float64)
    assert list(model.state_dict()) == list(tmodel.state_dict())
    model.load_state_dict(tmodel.state_dict())
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((4, 1, 6, 6))
        y = rng.integers(0, 10, 4)
        loss = crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()
        tloss = tcrit(tmodel(torch.tensor(x)), torch.tensor(y))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(float(tloss.detach()), rel=1e-10)
    for key, value in tmodel.state_dict().items():
        np.testing.assert_allclose(
            model.state_dict()[key], value.numpy(), rtol=1e-8, atol=1e-10, err_msg=key
        )


def test_resnet_learns_separable_data():
    model = small_resnet()
    rng = np.random.default_rng(0)
    templates = rng.standard_normal((10, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    x = templates[y] + 0.3 * rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        losses.append(crit(model(x), y))
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    with nn.no_grad():
        assert (model(x).argmax(1) == y).mean() > 0.8


def test_deepcopy_and_pickle_make_independent_models():
    import copy
    import pickle

    model = small_model()
    clone = copy.deepcopy(model)
    clone[0].weight.data[...] = 0
    assert model[0].weight.data.any()
    restored = pickle.loads(pickle.dumps(model))
    x = make_input((2, 1, 8, 8), "smooth", np.float32)
    model.eval()
    restored.eval()
    with nn.no_grad():
        np.testing.assert_array_equal(restored(x), model(x))


def test_needs_input_grad_false_skips_the_input_gradient(monkeypatch):
    model = small_model(np.float64)
    model[7].eval()  # dropout off: deterministic
    x = make_input((4, 1, 8, 8), "smooth", np.float64)
    g = np.random.default_rng(0).standard_normal((4, 3))
    model(x)
    model.backward(g)
    expected = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    model[0].needs_input_grad = False
    calls = []
    original = F.conv2d_input
    monkeypatch.setattr(F, "conv2d_input", lambda *a, **k: calls.append(1) or original(*a, **k))
    model(x)
    assert model.backward(g) is None
    assert calls == []
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, expected[name], rtol=1e-12, err_msg=name)
    # a frozen feature extractor before a head that needs no input gradient
    model[0].needs_input_grad = True
    model[:5].requires_grad_(False)
    model[5].needs_input_grad = False
    model.zero_grad()
    model(x)
    assert model.backward(g) is None
    assert calls == []
    assert all(len(m._saved) == 0 for m in model.modules())
    assert model[5].weight.grad is not None
    assert model[1].weight.grad is None
    # stopping before trainable layers would silently skip their update: refused
    model[:5].requires_grad_(True)
    model(x)
    with pytest.raises(RuntimeError, match="trainable parameters"):
        model.backward(g)
