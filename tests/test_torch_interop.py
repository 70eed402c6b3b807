"""fastconv.torch: the autograd ops against torch's own (gradcheck in float64 over the
argument space, forward values, which gradients run), routing and fallbacks, threads,
converted ResNet-, VGG- and MobileNetV2-style models against the native ones (outputs,
gradients, SGD steps, save/load), autotuning, and DDP on two processes."""

from __future__ import annotations

import collections
import io
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as ft  # noqa: E402
from fastconv.torch import _functional  # noqa: E402

F64 = torch.float64
# fastconv's float32 error bound through a model (README: numerics), relative to the
# largest magnitude of each compared tensor.
FLOAT32_TOLERANCE = 1e-4
FLOAT64_TOLERANCE = 1e-11

SPIED = (
    "conv2d",
    "conv2d_input",
    "conv2d_weight",
    "conv2d_bias_grad",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "linear",
    "gemm",
)


@pytest.fixture
def calls(monkeypatch):
    """Counts, by name, the fastconv functions that fastconv.torch calls; each call also
    records fastconv's thread count at that moment."""
    counts = collections.Counter()
    counts.threads = []

    for name in SPIED:
        real = getattr(fastconv, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            counts.threads.append(fastconv.get_num_threads())
            return _real(*args, **kwargs)

        monkeypatch.setattr(fastconv, name, spy)
    return counts


def relative_error(got, expected, floor: float = 0.0) -> float:
    """max |got - expected| / max(max |expected|, floor)."""
    got, expected = got.detach().double(), expected.detach().double()
    assert got.shape == expected.shape
    if not expected.numel():
        return 0.0
    scale = max(expected.abs().max().item(), floor)
    return (got - expected).abs().max().item() / (scale or 1.0)


def leaf(*shape, dtype=F64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=generator).requires_grad_()


# =========================================================================== the ops

CONV_CASES = {
    "default": {},
    "stride2_pad1": {"stride": 2, "padding": 1},
    "stride_pair_pad_pair": {"stride": (2, 1), "padding": (0, 2)},
    "same": {"padding": "same"},
    "same_dilated": {"padding": "same", "dilation": (2, 3)},
    "valid_dilation_pair": {"padding": "valid", "dilation": (1, 2)},
    "groups2": {"groups": 2, "padding": 1},
    "depthwise_stride2": {"groups": 4, "stride": 2, "padding": 1, "out_channels": 8},
    "no_bias_far_reach": {"bias": False, "stride": 3, "padding": 2, "dilation": 2},
    "unbatched": {"batch": None, "padding": 1},
}


def conv_inputs(case):
    case = dict(case)
    out_channels, groups = case.pop("out_channels", 6), case.get("groups", 1)
    batch = case.pop("batch", 2)
    with_bias = case.pop("bias", True)
    x = leaf(*((batch,) if batch else ()), 4, 7, 8)
    w = leaf(out_channels, 4 // groups, 3, 2, seed=1)  # an even kernel width: 'same' is asymmetric
    b = leaf(out_channels, seed=2) if with_bias else None
    return x, w, b, case


# torch's own conv warns that it copies the input for asymmetric 'same' padding
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("name", CONV_CASES)
def test_conv2d_gradcheck_and_values(name, calls):
    x, w, b, kwargs = conv_inputs(CONV_CASES[name])
    args = (x, w) if b is None else (x, w, b)

    def fn(*a):
        return ft.conv2d(*a, **kwargs)

    torch.testing.assert_close(fn(*args), F.conv2d(*args, **kwargs), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(fn, args)
    assert calls["conv2d"]
    assert calls["conv2d_input"]
    assert calls["conv2d_weight"]
    assert bool(calls["conv2d_bias_grad"]) == (b is not None)


MAX_POOL_CASES = {
    "k2": {"kernel_size": 2},
    "k3s2p1": {"kernel_size": 3, "stride": 2, "padding": 1},
    "pairs_dilated": {
        "kernel_size": (3, 2),
        "stride": (1, 2),
        "padding": (1, 0),
        "dilation": (1, 2),
    },
    "ceil": {"kernel_size": 3, "stride": 2, "ceil_mode": True},
    "dilated_ceil_padded": {
        "kernel_size": 2,
        "stride": 1,
        "padding": 1,
        "dilation": 2,
        "ceil_mode": True,
    },
}


@pytest.mark.parametrize("name", MAX_POOL_CASES)
def test_max_pool2d_gradcheck_values_and_indices(name, calls):
    kwargs = MAX_POOL_CASES[name]
    x = leaf(2, 3, 7, 8)
    out, indices = ft.max_pool2d(x, **kwargs, return_indices=True)
    expected, expected_indices = F.max_pool2d(x, **kwargs, return_indices=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(indices, expected_indices)
    assert not indices.requires_grad
    assert torch.autograd.gradcheck(lambda t: ft.max_pool2d(t, **kwargs), (x,))
    assert calls["max_pool2d"]
    assert calls["max_pool2d_backward"]


AVG_POOL_CASES = {
    "k2": {"kernel_size": 2},
    "k3s2p1": {"kernel_size": 3, "stride": 2, "padding": 1},
    "exclude_pad": {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
    "ceil_exclude_pad": {
        "kernel_size": 3,
        "stride": 2,
        "padding": 1,
        "ceil_mode": True,
        "count_include_pad": False,
    },
    "pairs_ceil": {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 1), "ceil_mode": True},
    "divisor_override": {"kernel_size": 2, "divisor_override": 3},
}


@pytest.mark.parametrize("name", AVG_POOL_CASES)
def test_avg_pool2d_gradcheck_and_values(name, calls):
    kwargs = AVG_POOL_CASES[name]
    x = leaf(2, 3, 7, 8)
    torch.testing.assert_close(
        ft.avg_pool2d(x, **kwargs), F.avg_pool2d(x, **kwargs), rtol=0, atol=1e-12
    )
    assert torch.autograd.gradcheck(lambda t: ft.avg_pool2d(t, **kwargs), (x,))
    assert calls["avg_pool2d"]
    assert calls["avg_pool2d_backward"]


@pytest.mark.parametrize(
    ("output_size", "on_fastconv"),
    [(1, True), ((3, 4), True), ((None, 2), True), ((6, 8), True), (4, False), ((5, None), False)],
)
def test_adaptive_avg_pool2d(output_size, on_fastconv, calls):
    """Windows that tile the input evenly run fastconv's avg_pool2d; uneven ones torch's op."""
    x = leaf(2, 3, 6, 8)
    got = ft.adaptive_avg_pool2d(x, output_size)
    torch.testing.assert_close(got, F.adaptive_avg_pool2d(x, output_size), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: ft.adaptive_avg_pool2d(t, output_size), (x,))
    assert bool(calls["avg_pool2d"]) == on_fastconv


@pytest.mark.parametrize("leading", [(), (3,), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck_and_values(leading, bias, calls):
    x, w = leaf(*leading, 5), leaf(4, 5, seed=1)
    args = (x, w, leaf(4, seed=2)) if bias else (x, w)
    torch.testing.assert_close(ft.linear(*args), F.linear(*args), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(ft.linear, args)
    assert calls["linear"]
    assert calls["gemm"] >= 2
    assert bool(calls["conv2d_bias_grad"]) == bias


@pytest.mark.parametrize(
    "wanted", [(True, False, False), (False, True, False), (False, False, True), (True, True, True)]
)
def test_conv2d_computes_only_the_gradients_asked_for(wanted, calls):
    x, w, b = (t.detach().requires_grad_(flag) for t, flag in zip(conv_inputs({})[:3], wanted))
    ft.conv2d(x, w, b, padding=1).sum().backward()
    assert [t.grad is not None for t in (x, w, b)] == list(wanted)
    assert (calls["conv2d_input"], calls["conv2d_weight"], calls["conv2d_bias_grad"]) == wanted


def test_linear_computes_only_the_gradients_asked_for(calls):
    x, w = leaf(3, 5), leaf(4, 5, seed=1).detach()
    ft.linear(x, w).sum().backward()
    assert calls["gemm"] == 1  # the input gradient only
    assert w.grad is None


def test_no_grad_and_inference_mode_record_nothing(calls):
    x, w, b, _ = conv_inputs({})
    with torch.no_grad():
        out = ft.conv2d(x, w, b)
    assert out.grad_fn is None
    assert not out.requires_grad
    with torch.inference_mode():
        pooled = ft.max_pool2d(ft.conv2d(x, w, b), 2)
        assert pooled.is_inference()
        assert pooled.grad_fn is None
    assert calls["conv2d"] == 2
    assert calls["max_pool2d"] == 1
    assert not calls["conv2d_input"]
    assert not calls["max_pool2d_backward"]


@pytest.mark.parametrize(
    "op",
    [
        lambda x: ft.conv2d(x, torch.ones(2, 3, 3, 3, dtype=F64)),
        lambda x: ft.max_pool2d(x, 2),
        lambda x: ft.avg_pool2d(x, 2),
        lambda x: ft.linear(x, torch.ones(2, 6, dtype=F64)),
    ],
)
def test_double_backward_raises_clearly(op):
    x = leaf(1, 3, 6, 6)
    (grad,) = torch.autograd.grad(op(x).pow(2).sum(), x)  # first order works
    assert grad.shape == x.shape
    with pytest.raises(RuntimeError, match="no double backward.*create_graph=True"):
        torch.autograd.grad(op(x).pow(2).sum(), x, create_graph=True)


# =========================================================================== layouts


def test_strided_and_channels_last_inputs(calls):
    """Views (a transpose, a slice) and channels_last tensors give torch's values,
    torch's output memory format and torch's gradients."""
    base = leaf(2, 8, 9, 4)
    w = leaf(5, 4, 3, 3, seed=1)
    views = {
        "transposed": lambda: base.transpose(1, 3),  # (2, 4, 9, 8), non-contiguous
        "sliced": lambda: base[:, ::2, 1:].permute(0, 3, 1, 2),
        "channels_last": lambda: base.permute(0, 3, 1, 2).contiguous(
            memory_format=torch.channels_last
        ),
    }
    for name, make in views.items():
        grads, outs = [], []
        for conv, pool in ((ft.conv2d, ft.max_pool2d), (F.conv2d, F.max_pool2d)):
            base.grad = w.grad = None
            out = pool(conv(make(), w, padding=1), 2)
            out.sum().backward()
            outs.append(out)
            grads.append((base.grad.clone(), w.grad.clone()))
        got, expected = outs
        assert got.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(
            memory_format=torch.channels_last
        ), name
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12, msg=name)
        for g, e in zip(*grads):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-12, msg=name)
    assert calls["conv2d"] == len(views)


def test_broadcast_gradients_are_read_correctly():
    """``sum().backward()`` hands backward an expanded (zero-stride) gradient."""
    x, w = leaf(3, 5), leaf(4, 5, seed=1)
    ft.linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(3, 5).detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(w.grad, x.sum(0).expand(4, 5).detach(), rtol=0, atol=1e-12)


# =========================================================================== routing


def test_unsupported_dtypes_run_torchs_op(calls):
    x = torch.randn(1, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    for dtype in (torch.bfloat16, torch.float16):
        got = ft.conv2d(x.to(dtype), w.to(dtype), padding=1)
        assert got.dtype == dtype
        assert torch.equal(got, F.conv2d(x.to(dtype), w.to(dtype), padding=1))
        assert torch.equal(ft.max_pool2d(x.to(dtype), 2), F.max_pool2d(x.to(dtype), 2))
    assert not calls["conv2d"]
    assert not calls["max_pool2d"]
    with pytest.raises(RuntimeError):  # torch's own error for mixed dtypes
        ft.conv2d(x, w.double())


def test_route():
    x = torch.ones(1, 2, 3, 3)
    assert ft.route(x, x, None) == "cpu"
    assert ft.route(x.double()) == "cpu"
    assert ft.route(x, x.double()) == "torch"
    for other in (x.half(), x.bfloat16(), x.to(torch.complex64), x.to("meta"), x.to_sparse()):
        assert ft.route(other) == "torch"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ft.route(x) == "torch"
    assert ft.route(nn.Parameter(x)) == "cpu"

    class Traced(torch.Tensor):  # a subclass with __torch_function__ (tracers, fake tensors)
        pass

    assert ft.route(x.as_subclass(Traced)) == "torch"


def cuda_stand_in(dtype=torch.float32, index=0):
    """Just what routing reads of a CUDA tensor (no GPU here)."""
    return SimpleNamespace(
        dtype=dtype, device=torch.device("cuda", index), layout=torch.strided, requires_grad=False
    )


def test_cuda_tensors_route_to_the_cuda_backend():
    a, b = cuda_stand_in(), cuda_stand_in()
    assert ft.route(a, b, None) == "cuda"
    assert ft.route(a, cuda_stand_in(index=1)) == "torch"  # two devices: torch's error
    assert ft.route(a, cuda_stand_in(torch.float64)) == "torch"
    assert ft.route(cuda_stand_in(torch.float16)) == "torch"


def test_cuda_without_a_usable_backend_raises_clearly(monkeypatch):
    a = cuda_stand_in()
    numba_cuda = pytest.importorskip("numba.cuda")
    monkeypatch.setattr(numba_cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="numba sees no usable CUDA device"):
        ft.conv2d(a, a)
    monkeypatch.setitem(sys.modules, "fastconv.cuda", None)  # numba-cuda not installed
    with pytest.raises(RuntimeError, match=r"needs numba-cuda.*fastconv\[cuda\]"):
        ft.max_pool2d(a, 2)


# =========================================================================== threads


def test_threads_follow_torch_and_are_restored(calls):
    x, w, b, _ = conv_inputs({})
    torch_before, fastconv_before = torch.get_num_threads(), fastconv.get_num_threads()
    try:
        torch.set_num_threads(1)
        fastconv.set_num_threads(3)
        ft.conv2d(x, w, b).sum().backward()
        assert calls.threads
        assert set(calls.threads) == {1}
        assert fastconv.get_num_threads() == 3
        ft.set_num_threads(2)
        calls.threads.clear()
        ft.conv2d(x, w, b)
        assert calls.threads == [2]
        assert ft.get_num_threads() == 2
        with pytest.raises(ValueError, match="positive int"):
            ft.set_num_threads(0)
    finally:
        ft.set_num_threads(None)
        torch.set_num_threads(torch_before)
        fastconv.set_num_threads(fastconv_before)
    assert ft.get_num_threads() == torch.get_num_threads()


# =========================================================================== models


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetStyle(nn.Module):
    """torchvision's ResNet layout, narrow: 7x7/2 stem, max pool, basic blocks."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def vgg_style(classes=10, dropout=0.5):
    """torchvision's VGG layout, narrow, with an average pool and a ceil-mode pool."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(16, 16, 3, padding="same"),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d((2, 2)),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(32, classes),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand):
        super().__init__()
        hidden = inp * expand
        self.use_residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Style(nn.Module):
    """torchvision's MobileNetV2 layout, narrow; its forward pools functionally."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(inplace=True),
            InvertedResidual(8, 8, 1, 2),
            InvertedResidual(8, 16, 2, 3),
            nn.Conv2d(16, 32, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU6(inplace=True),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


MODELS = {"resnet": ResNetStyle, "vgg": vgg_style, "mobilenet_v2": MobileNetV2Style}
DTYPES = {"float64": (F64, FLOAT64_TOLERANCE), "float32": (torch.float32, FLOAT32_TOLERANCE)}


def batch(dtype, n=4, seed=0, size=16):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, dtype=dtype, generator=generator)
    return x, torch.randint(0, 10, (n,), generator=generator)


def train_step(model, x, y, optimizer=None):
    """One forward and backward (and optimizer step) on the same dropout masks."""
    torch.manual_seed(1)
    x = x.clone().requires_grad_()
    out = model(x)
    F.cross_entropy(out, y).backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad()
    return out, x.grad


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("model_name", MODELS)
def test_converted_model_matches_native(model_name, dtype_name, calls):
    dtype, tolerance = DTYPES[dtype_name]
    torch.manual_seed(0)
    native = MODELS[model_name]().to(dtype).train()
    converted = ft.convert(native)
    x, y = batch(dtype)
    with fastconv.float32_conv_precision("highest"):
        out, grad_x = train_step(converted, x, y)
    expected_out, expected_grad_x = train_step(native, x, y)
    assert relative_error(out, expected_out) <= tolerance
    assert relative_error(grad_x, expected_grad_x) <= tolerance
    converted_params = dict(converted.named_parameters())
    # A gradient that cancels to almost nothing (a batch-norm bias followed by another
    # batch norm has none) holds only rounding noise: it is judged against 1% of the
    # model's largest gradient instead of its own size.
    floor = 1e-2 * max(p.grad.abs().max().item() for p in native.parameters())
    for name, param in native.named_parameters():
        error = relative_error(converted_params[name].grad, param.grad, floor)
        assert error <= tolerance, name
    statistics = [b for b in native.buffers() if b.is_floating_point()]
    floor = 1e-2 * max((b.abs().max().item() for b in statistics), default=0.0)  # mean ~0
    for name, buffer in native.named_buffers():  # batch-norm statistics
        assert relative_error(converted.get_buffer(name), buffer, floor) <= tolerance, name
    assert calls["conv2d"]
    assert calls["conv2d_input"]
    assert calls["conv2d_weight"]
    assert calls["linear"]
    converted.eval()
    native.eval()
    with torch.inference_mode():
        assert relative_error(converted(x), native(x)) <= tolerance


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_sgd_steps_match(dtype_name):
    dtype, tolerance = DTYPES[dtype_name]
    torch.manual_seed(0)
    native = ResNetStyle().to(dtype).train()
    converted = ft.convert(native)
    optimizers = [
        torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        for m in (native, converted)
    ]
    for step in range(3):
        x, y = batch(dtype, seed=step)
        for model, optimizer in zip((native, converted), optimizers):
            train_step(model, x, y, optimizer)
    state = converted.state_dict()
    for name, value in native.state_dict().items():
        if value.is_floating_point():
            assert relative_error(state[name], value) <= tolerance, name
        else:
            assert torch.equal(state[name], value), name


def test_save_and_load_a_converted_model(tmp_path):
    torch.manual_seed(0)
    native = vgg_style().eval()
    converted = ft.convert(native, autotune=True)
    x, _ = batch(torch.float32)
    with torch.no_grad():
        expected = converted(x)
    path = tmp_path / "model.pt"
    torch.save(converted, path)
    loaded = torch.load(path, weights_only=False)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in converted.modules()]
    assert type(loaded[0]) is ft.Conv2d
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    # the state dict is the native one's: it loads either way
    buffer = io.BytesIO()
    torch.save(converted.state_dict(), buffer)
    buffer.seek(0)
    fresh = vgg_style().eval()
    fresh.load_state_dict(torch.load(buffer))
    with torch.no_grad():
        assert relative_error(fresh(x), expected) <= FLOAT32_TOLERANCE


# =========================================================================== convert / revert


def test_convert_swaps_exactly_the_layer_classes_and_revert_undoes_it():
    torch.manual_seed(0)
    native = ResNetStyle()
    converted = ft.convert(native)
    assert type(native.conv1) is nn.Conv2d  # a deep copy was converted
    assert type(converted.conv1) is ft.Conv2d
    assert isinstance(converted.conv1, nn.Conv2d)
    assert type(converted.maxpool) is ft.MaxPool2d
    assert type(converted.avgpool) is ft.AdaptiveAvgPool2d
    assert type(converted.fc) is ft.Linear
    assert type(converted.bn1) is nn.BatchNorm2d
    assert repr(converted) == repr(native)
    assert list(converted.state_dict()) == list(native.state_dict())
    reverted = ft.revert(converted)
    assert [type(m) for m in reverted.modules()] == [type(m) for m in native.modules()]
    assert type(converted.conv1) is ft.Conv2d  # revert copied too
    assert ft.revert(converted, inplace=True) is converted
    assert type(converted.conv1) is nn.Conv2d
    assert "_fastconv_autotune" not in vars(converted.conv1)


def test_convert_inplace_keeps_parameters_and_optimizer():
    model = vgg_style()
    params = list(model.parameters())
    assert ft.convert(model, inplace=True) is model
    # the same objects: an optimizer made before keeps working
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert type(model[0]) is ft.Conv2d


def test_convert_layers_selection():
    def kinds(model):  # e.g. {"fastconv.Conv2d", "torch.Linear", "torch.MaxPool2d"}
        return {
            f"{type(m).__module__.split('.')[0]}.{type(m).__name__}"
            for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d))
        }

    native = ResNetStyle()
    assert kinds(ft.convert(native, layers=["Conv2d"])) == {
        "fastconv.Conv2d",
        "torch.Linear",
        "torch.MaxPool2d",
    }
    assert kinds(ft.convert(native, layers={nn.Linear, "MaxPool2d"})) == {
        "torch.Conv2d",
        "fastconv.Linear",
        "fastconv.MaxPool2d",
    }
    only_stem = ft.convert(native, layers=lambda name, module: name == "conv1")
    assert type(only_stem.conv1) is ft.Conv2d
    assert type(only_stem.layer1.conv1) is nn.Conv2d
    with pytest.raises(ValueError, match="BatchNorm2d.*not a convertible layer"):
        ft.convert(native, layers=[nn.BatchNorm2d])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ft.convert(lambda x: x)


def test_subclasses_and_lazy_modules_are_left_alone():
    class Custom(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(Custom(3, 4, 3), nn.LazyConv2d(4, 3), nn.Conv2d(4, 4, 1))
    converted = ft.convert(model)
    assert type(converted[0]) is Custom
    assert type(converted[1]) is nn.LazyConv2d
    assert type(converted[2]) is ft.Conv2d


def test_padding_modes():
    x = leaf(1, 2, 6, 5)
    for mode in ("zeros", "reflect", "replicate", "circular"):
        torch.manual_seed(0)
        native = nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode=mode).double()
        converted = ft.convert(native)
        torch.testing.assert_close(converted(x), native(x), rtol=0, atol=1e-12, msg=mode)


def test_max_pool_module_with_indices():
    x = leaf(1, 2, 6, 6)
    native = nn.MaxPool2d(2, return_indices=True)
    out, indices = ft.convert(native)(x)
    expected, expected_indices = native(x)
    assert torch.equal(out, expected)
    assert torch.equal(indices, expected_indices)


# =========================================================================== autotune


def test_autotune_keeps_the_faster_op_per_shape_and_mode(monkeypatch, calls):
    """Timed on a virtual clock that only fastconv's conv2d advances: the convolutions
    must choose torch, the other layers (equal times) keep fastconv."""
    clock = [0.0]
    monkeypatch.setattr(ft._modules, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    real_conv2d = _functional.conv2d

    def slow_conv2d(*args, **kwargs):
        clock[0] += 1.0
        return real_conv2d(*args, **kwargs)

    monkeypatch.setattr(_functional, "conv2d", slow_conv2d)
    torch.manual_seed(0)
    native = vgg_style(dropout=0.0)
    model = ft.convert(native, autotune=True)
    x, y = batch(torch.float32, n=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), native(x), rtol=1e-5, atol=1e-6)
    choices = {name: c[0]["choice"] for name, c in ft.autotune_choices(model).items()}
    convolutions = ("0", "3", "6")
    assert choices == {name: "torch" if name in convolutions else "fastconv" for name in choices}
    assert set(choices) == {"0", "2", "3", "5", "6", "8", "10", "13"}  # every converted layer
    assert all(len(c) == 1 and not c[0]["training"] for c in ft.autotune_choices(model).values())
    conv_calls = calls["conv2d"]
    with torch.no_grad():
        model(x)  # decided: the convolutions run torch's op now
    assert calls["conv2d"] == conv_calls
    out = model(x.requires_grad_())  # training is timed separately (forward and backward)
    assert all(p.grad is None for p in model.parameters())  # timing leaves .grad alone
    F.cross_entropy(out, y).backward()
    assert all(len(c) == 2 for c in ft.autotune_choices(model).values())
    model(batch(torch.float32, n=3)[0])  # a new shape: timed again
    assert len(ft.autotune_choices(model)["0"]) == 3


def test_autotune_stops_timing_after_enough_shapes(monkeypatch):
    monkeypatch.setattr(ft._modules, "AUTOTUNE_MAX_SHAPES", 2)
    model = ft.convert(nn.Conv2d(1, 1, 1), autotune=True)
    with torch.no_grad():
        for n in (1, 2, 3, 4):
            model(torch.ones(n, 1, 2, 2))
    assert [c["shape"][0] for c in ft.autotune_choices(model)[""]] == [1, 2]


# =========================================================================== distributed


def _ddp_model():
    torch.manual_seed(0)
    return vgg_style(dropout=0.0).to(F64)  # no batch norm: two halves keep one batch's sums


def _ddp_batches(steps=3, n=8):
    return [batch(F64, n=n, seed=100 + s) for s in range(steps)]


def _train(model, batches, world=1, rank=0):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in batches:
        part = len(x) // world
        rows = slice(rank * part, (rank + 1) * part)
        F.cross_entropy(model(x[rows]), y[rows]).backward()
        optimizer.step()
        optimizer.zero_grad()


def ddp_worker(rank: int, world: int, out: str) -> None:
    """One rank of the DDP test (run in a fresh process with MASTER_ADDR/PORT set)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = ft.convert(_ddp_model())
        _train(DistributedDataParallel(model), _ddp_batches(), world, rank)
        torch.save(model.state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _package_parent() -> Path:
    """The folder holding the fastconv this process imported."""
    return Path(fastconv.__file__).resolve().parent.parent


def test_ddp_two_processes_match_one_process_at_twice_the_batch(tmp_path):
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
        # The fastconv this process imported (an installed copy in CI, whose source
        # checkout has no compiled kernels), then the tests folder.
        PYTHONPATH=os.pathsep.join([str(_package_parent()), str(Path(__file__).parent)]),
    )
    out = tmp_path / "state"
    code = textwrap.dedent(
        f"""
        import sys
        from test_torch_interop import ddp_worker
        ddp_worker(int(sys.argv[1]), 2, {str(out)!r})
        """
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(rank)],
            env=env,
            cwd=str(Path(__file__).parent),  # not the checkout: -c puts the cwd first
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    logs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(logs)
    single = ft.convert(_ddp_model())
    _train(single, _ddp_batches())
    states = [torch.load(f"{out}.{rank}") for rank in range(2)]
    for name, value in single.state_dict().items():
        for state in states:
            assert relative_error(state[name], value) <= FLOAT64_TOLERANCE, name
    assert relative_error(states[0]["0.weight"], _ddp_model().state_dict()["0.weight"]) > 1e-3


# =========================================================================== import


def test_import_fastconv_never_imports_torch_and_a_missing_torch_is_named():
    code = textwrap.dedent(
        """
        import sys
        import fastconv
        assert "torch" not in sys.modules, "import fastconv imported torch"
        sys.modules["torch"] = None  # as if torch were not installed
        try:
            import fastconv.torch
        except ImportError as exc:
            print(exc)
        else:
            raise AssertionError("no ImportError")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(_package_parent())),
        cwd=str(Path(__file__).parent),  # not the checkout: -c puts the cwd first
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "fastconv.torch needs PyTorch" in result.stdout
    assert "pip install 'fastconv[torch]'" in result.stdout


def test_readme_conversion_runs():
    readme = Path(__file__).parents[1] / "README.md"
    if not readme.exists():
        pytest.skip("no README beside the tests (an installed copy of the suite)")
    match = re.search(r"## Inside PyTorch\n.*?```python\n(.*?)```", readme.read_text(), re.S)
    assert match, "the README lost its conversion example"
    native = vgg_style().eval()
    scope = {"model": native}
    exec(compile(match.group(1), "README.md Inside PyTorch", "exec"), scope)
    assert type(scope["fast"][0]) is ft.Conv2d
    assert type(scope["model"][0]) is nn.Conv2d
    x, _ = batch(torch.float32)
    with torch.no_grad():
        assert relative_error(scope["fast"](x), native(x)) <= FLOAT32_TOLERANCE
